"""CaptureError hints that name the cause and the remedy (or say there is none) for the capture failures of
real families: token ids read beside embeddings (CPM-Ant, ESM-C, DeepSeek-V4, BLT, DiffusionGemma), the
eager experts loop (OpenAI-Privacy-Filter), experts loops without a switch (DBRX, LongCat-Flash),
Longformer-style windowed attention (Longformer, LED), ids built beside embeddings (Florence-2)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

import lxt_fx
from lxt_fx.tracing import CaptureError
from lxt_fx.tracing.errors import capture_hint

IDS = torch.tensor([[1, 2, 3], [4, 5, 6]])


class _Toy(torch.nn.Module):
    def __init__(self, **config: object) -> None:
        super().__init__()
        self.config = SimpleNamespace(**config)
        self.emb = torch.nn.Embedding(10, 4)
        self.lin = torch.nn.Linear(4, 10)

    def get_input_embeddings(self) -> torch.nn.Module:
        return self.emb


class ReadsIds(_Toy):
    """Embeds its ids itself whatever it is given (an id-only embedding path)."""

    def forward(self, input_ids: torch.Tensor | None = None, inputs_embeds: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return {"logits": self.lin(self.emb(input_ids))}


class EagerExperts(_Toy):
    """Loops over the 'experts' that got tokens unless switched to the grouped (here: dense) form."""

    def __init__(self) -> None:
        super().__init__(_experts_implementation="eager")

    def set_experts_implementation(self, name: str) -> None:
        self.config._experts_implementation = name

    def forward(self, inputs_embeds: torch.Tensor,
                attention_mask: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        if self.config._experts_implementation == "eager":
            out = torch.zeros_like(inputs_embeds)
            for expert in torch.nonzero(inputs_embeds.sum(-1) > 0):  # data-dependent number of experts hit
                out = out + inputs_embeds * expert.sum()
            return {"logits": self.lin(out)}
        return {"logits": self.lin(inputs_embeds * (inputs_embeds.sum(-1, keepdim=True) > 0))}


class ExpertLoop(_Toy):
    """An experts loop with no implementation switch."""

    def forward(self, inputs_embeds: torch.Tensor,
                attention_mask: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        expert_hit = torch.nonzero(inputs_embeds.sum(-1) > 0)
        for expert_idx in expert_hit: inputs_embeds = inputs_embeds + expert_idx.sum()  # noqa: E701
        return {"logits": self.lin(inputs_embeds)}


class Windowed(_Toy):
    """Longformer-like: decides from the mask's values whether any token attends globally."""

    def forward(self, inputs_embeds: torch.Tensor,
                attention_mask: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        if (attention_mask > 1).any().item():
            inputs_embeds = inputs_embeds * 2
        return {"logits": self.lin(inputs_embeds)}


def _hint(model: torch.nn.Module) -> str:
    with pytest.raises(CaptureError) as info:
        lxt_fx.explain(model, IDS)
    return str(info.value)


def test_token_ids_read_beside_embeddings_has_no_input_remedy() -> None:
    hint = _hint(ReadsIds())
    assert "reads `input_ids`" in hint and "no input or config change" in hint
    assert "torch.where" not in hint  # not the generic data-dependent advice


def test_eager_experts_loop_names_the_switch_and_the_switch_captures() -> None:
    model = EagerExperts()
    assert "set_experts_implementation('grouped_mm')" in _hint(model)
    model.set_experts_implementation("grouped_mm")
    att = lxt_fx.explain(model, IDS)  # the remedy the hint names captures
    assert att.relevance.shape == IDS.shape and torch.isfinite(att.relevance).all()


def test_experts_loop_without_switch_says_so() -> None:
    hint = _hint(ExpertLoop())
    assert "no `experts_implementation` switch" in hint and "set_experts_implementation" not in hint


def test_windowed_attention_names_onnx_export_only_while_it_is_off() -> None:
    off = _hint(Windowed(attention_window=4))
    assert "onnx_export = True" in off and "is_global_attn" in off
    on = _hint(Windowed(attention_window=4, onnx_export=True))
    assert "onnx_export" not in on and "is_global_attn" in on
    plain = _hint(Windowed())  # no attention_window: the generic data-dependent advice
    assert "torch.where" in plain and "is_global_attn" not in plain


def test_ids_built_beside_embeddings() -> None:
    exc = ValueError("You must specify exactly one of decoder_input_ids or decoder_inputs_embeds")
    assert "builds token ids itself" in capture_hint(exc)
    assert "reads `input_ids`" in capture_hint(ValueError("input_ids is required for entropy-based patching"))
    assert "reads `input_ids`" not in capture_hint(ValueError("pixel_values is required"))
