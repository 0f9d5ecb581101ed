"""Targets per row: a list of one-token strings (or strings and ids) names one target per row."""

from __future__ import annotations

import pytest
import torch
from conftest import make_model
from helpers import word_tokenizer

import lxt_fx
from lxt_fx.targets import Contrastive, LogProb, TargetError

WORDS = ["the", "cat", "sat", "blue", "on", "mat"]
TEXTS = ["the cat", "the mat sat on"]  # different lengths: the batch is padded


@pytest.fixture(scope="module")
def model():
    return make_model("llama")


@pytest.fixture(scope="module")
def tokenizer():
    return word_tokenizer(WORDS)


ROWS = [("blue", "on"), ("sat", 3)]  # (target, rival) per row: words and ids mixed


@pytest.mark.parametrize("make", [lambda t, r: t, lambda t, r: LogProb(t), lambda t, r: Contrastive(t, rival=r)],
                         ids=["plain", "logprob", "contrastive"])
def test_a_list_of_words_is_one_target_per_row(model, tokenizer, make) -> None:
    targets, rivals = [list(x) for x in zip(*ROWS, strict=True)]
    batch = lxt_fx.explain(model, TEXTS, tokenizer=tokenizer, target=make(targets, rivals))
    assert batch.target_ids.tolist() == tokenizer.convert_tokens_to_ids(targets)
    for row, (text, (word, rival)) in enumerate(zip(TEXTS, ROWS, strict=True)):
        alone = lxt_fx.explain(model, text, tokenizer=tokenizer, target=make(word, rival))
        width = alone.relevance.shape[1]
        torch.testing.assert_close(batch.relevance[row, :width], alone.relevance[0], atol=1e-6, rtol=1e-4)
        torch.testing.assert_close(batch.target_scores[row], alone.target_scores[0], atol=1e-6, rtol=1e-5)


def test_a_list_of_words_must_match_the_batch(model, tokenizer) -> None:
    with pytest.raises(TargetError, match="3 targets .* batch of 2"):
        lxt_fx.explain(model, TEXTS, tokenizer=tokenizer, target=["blue", "sat", "on"])
    with pytest.raises(TargetError, match="pass tokenizer"):
        lxt_fx.explain(model, torch.tensor([[3, 4], [5, 6]]), target=["blue", "sat"])
