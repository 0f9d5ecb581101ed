"""Targets per row: a list of one-token strings (or strings and ids) names one target per row."""

from __future__ import annotations

import numpy as np
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


@pytest.mark.parametrize("bad", [3.5, 3.0, True, False, 2 + 0j, np.float64(3.0), np.float32(3.5), np.bool_(True),
                                 torch.tensor(3.0), torch.tensor([3.5, 2.0]), np.array([3.0, 2.0]),
                                 torch.tensor(True), [3, 2.5], ("cat", True)],
                         ids=lambda v: f"{type(v).__name__}:{v!r}"[:40])
def test_a_float_bool_or_complex_target_is_refused_by_name(model, tokenizer, bad) -> None:
    """``target=3.5`` used to explain token id 3 (and ``True`` id 1): a target is an id, a token or a Target."""
    with pytest.raises(TargetError, match="target="):
        lxt_fx.explain(model, "the cat", tokenizer=tokenizer, target=bad)
    for make in (LogProb, lambda t: Contrastive(t), lambda t: Contrastive(3, rival=t)):
        with pytest.raises(TargetError):
            make(bad)


@pytest.mark.parametrize("good", [3, np.int64(3), np.int32(3), np.uint8(3), torch.tensor(3), torch.tensor([3]),
                                  np.array([3])], ids=lambda v: f"{type(v).__name__}")
def test_integer_targets_of_every_kind_name_the_same_id(model, tokenizer, good) -> None:
    """Python, NumPy and torch integers (scalar or one per row) all explain id 3, as the plain int does."""
    want = lxt_fx.explain(model, "the cat", tokenizer=tokenizer, target=3)
    got = lxt_fx.explain(model, "the cat", tokenizer=tokenizer, target=good)
    assert got.target_ids.tolist() == [3]
    torch.testing.assert_close(got.relevance, want.relevance, rtol=0, atol=0)
