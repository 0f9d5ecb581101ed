"""``explain`` itself: eval semantics for a model in training mode, text pairs, forward inputs passed through,
masked-LM positions, classifier labels."""

from __future__ import annotations

import pytest
import torch

import lxt_fx
from lxt_fx.tracing.modes import TrainingModeWarning


def tiny_gpt2(dropout: float = 0.5):
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(vocab_size=96, n_positions=64, n_embd=32, n_layer=2, n_head=4, resid_pdrop=dropout,
                     embd_pdrop=dropout, attn_pdrop=dropout)
    torch.manual_seed(0)
    return GPT2LMHeadModel(cfg)  # built from a config: in training mode


def modes(model: torch.nn.Module) -> list[bool]:
    return [m.training for m in model.modules()]


def test_a_model_in_training_mode_is_explained_in_eval_mode_and_left_as_it_came():
    model = tiny_gpt2()
    model.transformer.h[1].eval()  # a mixed tree: every flag must come back as it was
    before = modes(model)
    assert any(before) and not all(before)
    ids = torch.tensor([[5, 6, 7, 8, 9, 10]])
    with pytest.warns(TrainingModeWarning, match="GPT2LMHeadModel is in training mode"):
        first = lxt_fx.explain(model, ids)
    assert modes(model) == before
    with pytest.warns(TrainingModeWarning):
        second = lxt_fx.explain(model, ids)
    assert modes(model) == before
    with pytest.warns(TrainingModeWarning), pytest.raises(lxt_fx.TargetError):
        lxt_fx.explain(model, ids, target=10 ** 6)  # an error inside the call: the modes still come back
    assert modes(model) == before
    model.eval()
    reference = lxt_fx.explain(model, ids)  # the same model in eval mode: the reference
    torch.testing.assert_close(first.relevance, second.relevance, rtol=0, atol=0)
    torch.testing.assert_close(first.relevance, reference.relevance)
    with torch.no_grad():
        logits = model(ids).logits[0, -1]
    torch.testing.assert_close(first.target_scores[0], logits.max())


def test_check_of_a_model_in_training_mode_runs_in_eval_mode():
    model = tiny_gpt2()
    ids = torch.tensor([[5, 6, 7, 8, 9, 10]])
    before = modes(model)
    with pytest.warns(TrainingModeWarning):
        first = lxt_fx.check(model, ids, zero_bias=False)
    with pytest.warns(TrainingModeWarning):
        second = lxt_fx.check(model, ids, zero_bias=False)
    assert modes(model) == before
    model.eval()
    reference = lxt_fx.check(model, ids, zero_bias=False)
    assert first.score == second.score == pytest.approx(reference.score, rel=1e-6)
    assert first.target == second.target == reference.target
