"""Small models for the check tests: an MLP, a net whose gradient overflows, composites missing a rule."""

from __future__ import annotations

import torch
from torch import nn

import lxt_fx
from lxt_fx.composites import Composite


class MLP(nn.Module):
    """Linear → ReLU → Linear on ``inputs_embeds`` ``[batch, seq, 16]``, random (non-zero) biases."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.up = nn.Linear(16, 32)
        self.act = nn.ReLU()
        self.down = nn.Linear(32, 8)
        with torch.no_grad():
            self.up.bias.normal_(0, 0.5)
            self.down.bias.normal_(0, 0.5)

    def forward(self, inputs_embeds: torch.Tensor) -> torch.Tensor:
        return self.down(self.act(self.up(inputs_embeds)))


class Root(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sqrt(x)


class SqrtNet(nn.Module):
    """``head(sqrt(relu(lin(x))))``: a finite forward whose backward divides by sqrt(0) = 0."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.lin = nn.Linear(16, 16)
        self.act = nn.ReLU()
        self.root = Root()
        self.head = nn.Linear(16, 4)

    def forward(self, inputs_embeds: torch.Tensor) -> torch.Tensor:
        return self.head(self.root(self.act(self.lin(inputs_embeds))))


def without(*rule_classes: str, name: str) -> Composite:
    """``attnlrp`` without the entries whose rule class is one of ``rule_classes``."""
    entries = [(p, r) for p, r in lxt_fx.attnlrp.entries if type(r).__name__ not in rule_classes]
    assert len(entries) < len(lxt_fx.attnlrp.entries)
    return Composite(entries, name=name)


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_untouched(model: nn.Module, before: dict[str, torch.Tensor], training: bool) -> None:
    """Bit-identical state_dict, no gradients written, no instance forward, no hooks, same mode."""
    after = model.state_dict()
    assert after.keys() == before.keys()
    for key, value in before.items():
        assert after[key].dtype == value.dtype and torch.equal(after[key], value), key
    assert all(p.grad is None for p in model.parameters())
    assert "forward" not in model.__dict__
    assert model.training == training
    for module in model.modules():
        assert not module._forward_hooks and not module._forward_pre_hooks and not module._backward_hooks
