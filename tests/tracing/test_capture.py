"""Capture: one export per (model, signature) across lengths and batch sizes; named errors."""

from __future__ import annotations

import os

import pytest
import torch
from conftest import VOCAB, make_model

import lxt_fx
from lxt_fx.tracing import CaptureError, capture_count


def test_one_capture_serves_every_length_and_batch_size() -> None:
    model = make_model("llama")
    assert capture_count(model) == 0
    for batch, length in [(1, 5), (3, 64), (1, 300), (3, 5), (1, 64), (3, 300)]:
        ids = torch.randint(0, VOCAB, (batch, length))
        att = lxt_fx.explain(model, ids)
        assert att.relevance.shape == (batch, length)
        assert torch.isfinite(att.relevance).all()
    assert capture_count(model) == 1
    with lxt_fx.attnlrp.context(model):
        model(input_ids=torch.randint(0, VOCAB, (2, 17)), attention_mask=torch.ones(2, 17, dtype=torch.long))
    assert capture_count(model) == 1  # the context reuses the same signature


def test_a_new_signature_captures_again() -> None:
    model = make_model("llama")
    with lxt_fx.attnlrp.context(model):
        model(input_ids=torch.randint(0, VOCAB, (1, 5)))
        model(input_ids=torch.randint(0, VOCAB, (1, 9)))
        assert capture_count(model) == 1
        model(input_ids=torch.randint(0, VOCAB, (1, 5)), output_hidden_states=True)
    assert capture_count(model) == 2


class DataDependent(torch.nn.Module):
    """A toy model that branches in Python on a tensor's value."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = torch.nn.Embedding(10, 4)
        self.lin = torch.nn.Linear(4, 10)

    def get_input_embeddings(self) -> torch.nn.Module:
        return self.emb

    def forward(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        if inputs_embeds.sum() > 0:  # data-dependent control flow: the line CaptureError must name
            inputs_embeds = inputs_embeds * 2
        return self.lin(inputs_embeds)


def test_data_dependent_control_flow_raises_capture_error_with_file_and_line() -> None:
    with pytest.raises(CaptureError) as info:
        lxt_fx.explain(DataDependent(), torch.tensor([[1, 2, 3]]))
    err = info.value
    assert err.model_class == "DataDependent"
    line = next(i for i, text in enumerate(open(__file__), 1) if "the line CaptureError must name" in text)
    assert err.location.startswith(f"{os.path.abspath(__file__)}:{line}")
    assert "DataDependent" in str(err) and "torch.where" in str(err)


def test_a_model_in_training_mode_is_captured_without_dropout() -> None:
    """The context calls the model itself: its capture is made in eval mode (dropout off), with a named warning,
    and the model's own mode comes back; the output equals the model's own in eval mode."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from lxt_fx.tracing.modes import TrainingModeWarning

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_positions=32, n_embd=32, n_layer=1, n_head=4,
                                       resid_pdrop=0.5, embd_pdrop=0.5, attn_pdrop=0.5))
    ids = torch.tensor([[3, 4, 5, 6]])
    with pytest.warns(TrainingModeWarning), lxt_fx.attnlrp.context(model):
        first = model(input_ids=ids).logits.detach()
        second = model(input_ids=ids).logits.detach()
    assert all(m.training for m in model.modules())
    with torch.no_grad():
        reference = model.eval()(input_ids=ids).logits
    torch.testing.assert_close(first, second, rtol=0, atol=0)
    torch.testing.assert_close(first, reference)
