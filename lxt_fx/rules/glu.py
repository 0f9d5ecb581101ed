"""Gated linear unit ``GLU(x) = a ⊙ σ(b)``, ``(a, b)`` the two halves of ``x`` along ``dim`` (``aten.glu``).

GLU is a gate product: the value half ``a`` times the gate ``σ(b)``, both relevance-carrying. RULES.md gives
the rule for that composition: the uniform rule for the product of two relevance-carrying tensors (paper
Prop. 3.2: "gated MLP gate·up") and the identity rule for the element-wise sigmoid (Eq. 9). So

* explicit form: ``R_a = R_y / 2`` and ``R_σ(b) = R_y / 2``, then ``R_b = R_σ(b)``: ``R_x = cat(R_y/2, R_y/2)``
  along ``dim`` — each half gets half, element by element;
* GxI form: ``g_a = g_y ⊙ σ(b) / 2`` (the plain gradient of the product, halved) and
  ``g_b = g_y ⊙ a / 2 ⊙ σ(b) / b`` (halved, then the identity ratio ``σ(b)/b`` instead of ``σ'(b)``). Then
  ``a ⊙ g_a = b ⊙ g_b = y ⊙ g_y / 2``. ``σ(0) ≠ 0``, so ``σ(b)/b`` is singular at ``b = 0`` as the identity
  rule is for every such function: it is stabilized as ``σ(b) / (b + ε·sign(b))`` (ε = 1e-6 by default).

With ``gate="stop"`` the gate is a constant (CP-LRP, Ali et al. 2022: no relevance through gates):
``R_a = R_y``, ``R_b = 0``; GxI ``g_a = g_y ⊙ σ(b)``, ``g_b = 0``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from ..tracing.errors import LXTError
from .base import Position, Relevances, Rule, safe_divide

GATES = ("uniform", "stop")


class GateChoiceError(LXTError, ValueError):
    """``GatedUnit(gate=...)`` got a gate treatment it does not know."""


class _GLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor, dim: int, epsilon: float, gate: str) -> Tensor:
        ctx.save_for_backward(x)
        ctx.dim, ctx.epsilon, ctx.gate = dim, epsilon, gate
        return torch.nn.functional.glu(x, dim)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        (x,) = ctx.saved_tensors
        dtype = torch.promote_types(x.dtype, torch.float32)
        a, b = x.to(dtype).chunk(2, dim=ctx.dim)
        g = grad.to(dtype)
        s = torch.sigmoid(b)
        if ctx.gate == "stop":
            g_a, g_b = g * s, torch.zeros_like(b)
        else:
            g_a, g_b = g * s / 2, g * a / 2 * safe_divide(s, b, ctx.epsilon)
        return torch.cat([g_a, g_b], dim=ctx.dim).to(grad.dtype), None, None, None


def glu(op: Callable[..., Any], x: Tensor, dim: int = -1, *, epsilon: float = 1e-6, gate: str = "uniform") -> Tensor:
    """GxI form of ``op(x, dim)`` (``aten.glu``): the value is exactly ``a ⊙ σ(b)``; the backward is the rule
    of the module docstring."""
    if not x.requires_grad:
        return op(x, dim)
    return _GLU.apply(x, dim, epsilon, gate)


class GatedUnit(Rule):
    """GLU ``a ⊙ σ(b)``: uniform split of the gate product and identity through the sigmoid (``gate="uniform"``,
    AttnLRP), or the gate held constant (``gate="stop"``, CP-LRP). See the module docstring for the formulas."""

    name = "glu"

    def __init__(self, epsilon: float = 1e-6, gate: str = "uniform") -> None:
        if gate not in GATES:
            raise GateChoiceError(f"GatedUnit(gate={gate!r}): the gate is either split with the value "
                                  "('uniform', AttnLRP) or held constant ('stop', CP-LRP); pass one of these")
        self.epsilon = epsilon
        self.gate = gate

    def applies(self, carrying: Sequence[Position], op: Any = None) -> bool:
        return 0 in carrying

    def gxi(self, op: Any, carrying: Sequence[Position]) -> tuple[Callable[..., Any], dict[str, Any]]:
        return glu, {"epsilon": self.epsilon, "gate": self.gate}

    def explicit(self, op: Any, args: Sequence[Any], kwargs: dict[str, Any], out: Any, relevance: Any,
                 carrying: Sequence[Position]) -> Relevances:
        dim = args[1] if len(args) > 1 else kwargs.get("dim", -1)
        if self.gate == "stop":
            r_x = torch.cat([relevance, torch.zeros_like(relevance)], dim=dim)
        else:
            r_x = torch.cat([relevance / 2, relevance / 2], dim=dim)
        return [r_x, *([None] * (len(args) - 1))]
