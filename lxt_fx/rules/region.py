"""Identity over a whole module region (paper Eq. 9 applied to a decomposed element-wise function).

Some activations reach the graph decomposed into several ops (GPT-2's ``NewGELUActivation`` is
``0.5·x·(1 + tanh(√(2/π)(x + 0.044715x³)))``). The region ``y = f(x)`` is treated as one element-wise
function: explicit form ``R_x = R_y``; GxI form ``g_x = g_y ⊙ y / x`` (stabilized ``x + ε·sign(x)`` with a
tiny ε, computed in float32: activations vanish at 0, so the ratio stays bounded). The region's own ops still compute the forward, so the output is bit-identical;
the rule node only reroutes the backward from ``y`` straight to ``x``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from .base import Relevances, Rule, safe_divide


class _RegionIdentity(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor, y: Tensor, epsilon: float) -> Tensor:
        ctx.save_for_backward(x, y)
        ctx.epsilon = epsilon
        return y.detach().clone()

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        x, y = ctx.saved_tensors
        ratio = safe_divide(y.float(), x.float(), ctx.epsilon)
        return (grad.float() * ratio).to(grad.dtype), None, None


def region_identity(x: Tensor, y: Tensor, epsilon: float = 1e-12) -> Tensor:
    """``y`` (value unchanged) whose gradient flows to ``x`` as ``g ⊙ y/x`` and not through the region."""
    return _RegionIdentity.apply(x, y, epsilon)


class IdentityRegion(Rule):
    """Identity rule over a module whose ops form one element-wise function of one input."""

    name = "identity_region"
    region = True

    def __init__(self, epsilon: float = 1e-12) -> None:
        self.epsilon = epsilon

    def gxi(self, op: Any, carrying: Sequence[int]) -> tuple[Callable[..., Any], dict[str, Any]]:
        return region_identity, {"epsilon": self.epsilon}

    def explicit(self, op: Any, args: Sequence[Any], kwargs: dict[str, Any], out: Any, relevance: Any,
                 carrying: Sequence[int]) -> Relevances:
        return [relevance]
