"""``import lxt_fx.inseq`` registers "attnlrp" with Inseq: each step's map is ``explain`` of that step's
attributed function on the prefix (tiny LLaMA and the real SmolLM2)."""

from __future__ import annotations

import pytest
import torch
from conftest import make_model
from helpers import word_tokenizer

import lxt_fx

inseq = pytest.importorskip("inseq")
pytest.importorskip("lxt_fx.inseq")


def _check_steps(model, tokenizer, prompt: str, rel: float, new: int = 2, answer: str | None = None) -> None:
    im = inseq.load_model(model, "attnlrp", tokenizer=tokenizer)
    out = im.attribute(prompt, generated_texts=None if answer is None else f"{prompt} {answer}",
                       generation_args={"max_new_tokens": new, "do_sample": False}, attributed_fn="logit",
                       step_scores=["logit"], show_progress=False)
    seq = out.sequence_attributions[0]
    ids = [t.id for t in seq.target]
    p = len(ids) - seq.target_attributions.shape[1]
    assert seq.target_attributions.shape[1] == (3 if answer else new)
    for k in range(seq.target_attributions.shape[1]):
        ref = lxt_fx.explain(model, torch.tensor([ids[: p + k]]), target=ids[p + k])
        got = seq.target_attributions[: p + k, k].sum(-1)
        assert (got - ref.relevance[0]).abs().max() <= rel * ref.relevance[0].abs().max(), k
        # the step score is the logit explained, as explain reports it
        assert float(seq.step_scores["logit"][k]) == pytest.approx(float(ref.target_scores[0]), rel=1e-5)


def test_inseq_attnlrp_on_a_tiny_llama() -> None:
    tok = word_tokenizer([f"w{i}" for i in range(94)])
    tok.eos_token, tok.bos_token = "w93", "w0"
    # the continuation is given (Inseq's generated_texts): a random model may otherwise generate [PAD]
    _check_steps(make_model("llama"), tok, "w3 w17 w40 w5", 1e-6, answer="w9 w61 w2")


@pytest.mark.slow
def test_inseq_attnlrp_on_smollm2(smollm2) -> None:
    model, tok = smollm2
    _check_steps(model, tok, "The capital of France is", 1e-5, new=2)
