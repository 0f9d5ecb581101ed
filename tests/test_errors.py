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


# ---- wrong shapes, models without parameters, unknown capture names, lxt_fx.check as a function ----------


def test_attention_mask_of_the_wrong_shape_in_explain(model) -> None:
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    with pytest.raises(lxt_fx.InputError, match=r"attention_mask of shape \(1, 4\).*\(1, 5\)"):
        lxt_fx.explain(model, ids, attention_mask=torch.ones(1, 4, dtype=torch.long))
    # same number of entries, other shape: was silently reshaped into [1, 5]
    with pytest.raises(lxt_fx.InputError, match=r"attention_mask of shape \(5, 1\)"):
        lxt_fx.explain(model, ids, attention_mask=torch.ones(5, 1, dtype=torch.long))
    # a one-row [seq] mask with one-row [seq] ids is the same as [1, seq]
    one = lxt_fx.explain(model, ids[0], attention_mask=torch.ones(5, dtype=torch.long))
    two = lxt_fx.explain(model, ids, attention_mask=torch.ones(1, 5, dtype=torch.long))
    torch.testing.assert_close(one.relevance, two.relevance, rtol=0, atol=0)


def test_attention_mask_of_the_wrong_shape_in_context() -> None:
    model = make_model("llama")  # fresh: nothing captured yet for this model
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    with lxt_fx.attnlrp.context(model):
        with pytest.raises(lxt_fx.InputError, match=r"attention_mask of shape \(1, 4\).*\(1, 5\)"):
            model(input_ids=ids, attention_mask=torch.ones(1, 4, dtype=torch.long))
        model(input_ids=ids, attention_mask=torch.ones(1, 5, dtype=torch.long))  # captures this signature
        with pytest.raises(lxt_fx.InputError, match="attention_mask"):  # was a raw 'Guard failed'
            model(input_ids=ids, attention_mask=torch.ones(1, 6, dtype=torch.long))


def test_three_dimensional_ids_are_refused_not_flattened(model) -> None:
    ids = torch.tensor([[[1, 2, 3], [4, 5, 6]]])  # [1, 2, 3]: was flattened into one row of 6 tokens
    with pytest.raises(lxt_fx.InputError, match=r"\[batch, seq\].*\(1, 2, 3\)"):
        lxt_fx.explain(model, ids)
    with pytest.raises(lxt_fx.InputError, match=r"\[batch, seq\]"):
        lxt_fx.check(model, ids)


class _Doubler(torch.nn.Module):
    """A module without parameters: only a function."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 2 * x


def test_model_without_parameters() -> None:
    with pytest.raises(lxt_fx.NoParametersError, match="no parameters"):  # was a bare StopIteration
        lxt_fx.explain(_Doubler(), torch.tensor([[1, 2]]))
    with pytest.raises(lxt_fx.NoParametersError, match="_Doubler"):
        lxt_fx.check(_Doubler(), torch.tensor([[1, 2]]))


def test_unknown_capture_name_lists_close_matches(model) -> None:
    ids = torch.tensor([[1, 2, 3, 4]])
    with pytest.raises(lxt_fx.CaptureNameError, match=r"did you mean.*'model\.layers\.0'") as info:
        lxt_fx.explain(model, ids, capture=["model.layerz.0"])
    assert isinstance(info.value, KeyError)  # still a KeyError for code that caught that
    with pytest.raises(lxt_fx.CaptureNameError, match="no.such.module"):
        lxt_fx.explain(model, ids, capture=["no.such.module"])
    att = lxt_fx.explain(model, ids, capture=["model.layers.0"])
    with pytest.raises(lxt_fx.CaptureNameError, match=r"capture=\['model.layers.1'\]"):
        att.latent("model.layers.1")


def test_check_is_callable_and_still_the_package(model) -> None:
    from lxt_fx.check import CheckReport, check, conservation, coverage

    assert callable(lxt_fx.check) and lxt_fx.check.coverage is coverage
    assert lxt_fx.check.conservation is conservation and check.__module__ == "lxt_fx.check.run"
    report = lxt_fx.check(model, torch.tensor([[1, 2, 3, 4]]), zero_bias=False)
    assert isinstance(report, CheckReport) and report.ok
    direct = check(model, torch.tensor([[1, 2, 3, 4]]), zero_bias=False)
    assert report.score == direct.score


def test_calls_the_graph_cannot_represent_are_named_errors(model) -> None:
    from lxt_fx.session import RelevanceInputError, UnsupportedCallError

    ids = torch.tensor([[1, 2, 3, 4]])
    with pytest.raises(UnsupportedCallError, match=r"use_cache=True.*\n  what to do: .*use_cache=False") as info:
        lxt_fx.attnlrp.rewrite(model, {"input_ids": ids, "use_cache": True})
    assert isinstance(info.value, lxt_fx.LXTError)
    with pytest.raises(RelevanceInputError, match=r"not floating point.*inputs_embeds"):
        lxt_fx.attnlrp.rewrite(model, {"input_ids": ids, "attention_mask": torch.ones_like(ids)},
                               relevance_inputs=["attention_mask"])
    _, report = lxt_fx.attnlrp.rewrite(model, {"input_ids": ids}, relevance_inputs=["input_ids"])
    assert report.path_nodes > 0  # input_ids stand for the embeddings looked up from them


class _TupleEmbedding(torch.nn.Embedding):
    """Like I-BERT's quantized embedding: the values come back with a scaling factor."""

    def forward(self, ids: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        return super().forward(ids), None


class _PerCodebook(torch.nn.Module):
    """Like MusicGen: one embedding per codebook, or a tuple-returning embedding."""

    def __init__(self, embedding: torch.nn.Module) -> None:
        super().__init__()
        self.emb, self.out = embedding, torch.nn.Linear(4, 10)

    def get_input_embeddings(self) -> torch.nn.Module:
        return self.emb

    def forward(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor | None = None) -> dict:
        return {"logits": self.out(inputs_embeds)}


def test_embeddings_that_are_not_one_module_to_a_tensor_are_named() -> None:
    ids = torch.tensor([[1, 2]])
    with pytest.raises(lxt_fx.NoInputEmbeddingsError, match="one embedding per codebook"):
        lxt_fx.explain(_PerCodebook(torch.nn.ModuleList([torch.nn.Embedding(10, 4)] * 2)), ids)
    with pytest.raises(lxt_fx.NoInputEmbeddingsError, match="returns a tuple"):
        lxt_fx.explain(_PerCodebook(_TupleEmbedding(10, 4)), ids)
    assert lxt_fx.explain(_PerCodebook(torch.nn.Embedding(10, 4)), ids).relevance.shape == (1, 2)
