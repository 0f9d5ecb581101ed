"""Bad input gets a named error with a hint."""

from __future__ import annotations

import pytest
import torch
from conftest import VOCAB, make_model
from helpers import word_tokenizer

import lxt_fx

WORDS = ["the", "capital", "of", "france", "is", "paris", "hello", "world"]


@pytest.fixture(scope="module")
def model():
    return make_model("llama")


@pytest.fixture(scope="module")
def tokenizer():
    return word_tokenizer(WORDS)


def test_not_a_module() -> None:
    with pytest.raises(lxt_fx.NotAModuleError, match="torch.nn.Module"):
        lxt_fx.explain("gpt2", torch.tensor([[1, 2]]))
    with pytest.raises(lxt_fx.NotAModuleError):
        with lxt_fx.attnlrp.context(object()):
            pass


def test_model_without_input_embeddings() -> None:
    with pytest.raises(lxt_fx.NoInputEmbeddingsError, match="inputs_embeds"):
        lxt_fx.explain(torch.nn.Linear(4, 4), torch.tensor([[1, 2]]))


def test_empty_string(model, tokenizer) -> None:
    with pytest.raises(lxt_fx.InputError, match="empty"):
        lxt_fx.explain(model, "", tokenizer=tokenizer)
    with pytest.raises(lxt_fx.InputError, match="empty"):
        lxt_fx.explain(model, ["the capital", "  "], tokenizer=tokenizer)


def test_text_without_tokenizer(model) -> None:
    with pytest.raises(lxt_fx.InputError, match="tokenizer"):
        lxt_fx.explain(model, "the capital")


def test_token_id_outside_vocabulary(model) -> None:
    with pytest.raises(lxt_fx.InputError, match=f"outside the vocabulary of {VOCAB}"):
        lxt_fx.explain(model, torch.tensor([[1, VOCAB]]))


def test_multi_piece_string_target(model, tokenizer) -> None:
    with pytest.raises(lxt_fx.TargetError, match=r"2 tokens \['hello', 'world'\]"):
        lxt_fx.explain(model, "the capital of", tokenizer=tokenizer, target="hello world")


def test_single_piece_string_target_is_that_logit(model, tokenizer) -> None:
    att = lxt_fx.explain(model, "the capital of", tokenizer=tokenizer, target="paris")
    paris = tokenizer.convert_tokens_to_ids("paris")
    assert att.target_ids.tolist() == [paris]
    with torch.no_grad():
        logits = model(input_ids=att.input_ids).logits[0, -1]
    assert att.target_scores[0].item() == pytest.approx(logits[paris].item(), abs=1e-5)
    assert att.tokens == [["the", "capital", "of"]]


def test_target_id_outside_outputs(model) -> None:
    with pytest.raises(lxt_fx.TargetError, match="outside"):
        lxt_fx.explain(model, torch.tensor([[1, 2]]), target=VOCAB + 3)


def test_float16_model_is_refused_with_a_hint() -> None:
    model = make_model("llama").to(torch.float16)
    with pytest.raises(lxt_fx.DtypeError, match="bfloat16"):
        lxt_fx.explain(model, torch.tensor([[1, 2]]))


def test_targets_logprob_and_contrastive(model) -> None:
    ids = torch.tensor([[3, 4, 5, 6]])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, -1]
    lp = lxt_fx.explain(model, ids, target=lxt_fx.LogProb(7))
    assert lp.target_scores[0].item() == pytest.approx(torch.log_softmax(logits, -1)[7].item(), abs=1e-5)
    con = lxt_fx.explain(model, ids, target=lxt_fx.Contrastive(7, 9))
    assert con.target_scores[0].item() == pytest.approx((logits[7] - logits[9]).item(), abs=1e-5)
    # linear in the seed: contrastive relevance = relevance(7) − relevance(9)
    r7 = lxt_fx.explain(model, ids, target=7).relevance
    r9 = lxt_fx.explain(model, ids, target=9).relevance
    torch.testing.assert_close(con.relevance, r7 - r9, atol=1e-6, rtol=1e-5)
