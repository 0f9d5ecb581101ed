"""γ-rule for linear maps and convolutions (Montavon, Binder, Lapuschkin, Samek, Müller 2019, "Layer-Wise
Relevance Propagation: An Overview", in *Explainable AI: Interpreting, Explaining and Visualizing Deep
Learning*, LNCS 11700, pp. 193–209: the rule LRP-γ).

The γ-rule favours positive contributions: every weight (and bias) is replaced by ``w + γ·w⁺`` with
``w⁺ = max(0, w)`` in the *backward* redistribution only. With ``W_γ = W + γW⁺``, ``b_γ = b + γb⁺`` and the
modified pre-activation ``z_γ = W_γ x + b_γ``:

* explicit form: ``R_x = x ⊙ W_γᵀ (R_y / stab(z_γ))``;
* GxI form: the forward output is exact, ``y = W x + b``; the backward returns
  ``g_x = W_γᵀ (g_y ⊙ y / stab(z_γ))``, so that ``x ⊙ g_x`` is the explicit form with ``R_y = y ⊙ g_y``.

``stab(z) = z + ε·sign(z)`` with ``sign(0) = 1`` (never crosses zero). ``γ = 0`` is exactly the ε-rule
(Eq. 8 of the AttnLRP paper); ``γ → ∞`` approaches the z⁺-rule. The transpose ``W_γᵀ(·)`` is the
vector-Jacobian product of the same op run with the modified parameters, so one code path covers
``aten.linear``, GPT-2's ``aten.addmm`` (``bias, x, W``) and ``aten.conv1d/2d/3d``/``aten.convolution`` with
every stride, padding, dilation and groups. The rule gives no gradient to the weights (an explanation pass).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor
from torch._ops import ops as _ops

from .base import Relevances, Rule, epsilon_explicit, safe_divide

aten = _ops.aten

# (input, weight, bias) positions of each supported op's positional arguments.
LAYOUT: dict[Any, tuple[int, int, int]] = {
    aten.linear: (0, 1, 2), aten.conv1d: (0, 1, 2), aten.conv2d: (0, 1, 2), aten.conv3d: (0, 1, 2),
    aten.convolution: (0, 1, 2), aten.addmm: (1, 2, 0),
}


def layout(op: Any) -> tuple[int, int, int]:
    """(input, weight, bias) argument positions of ``op``; ``KeyError`` naming the op if it is unknown."""
    key = getattr(op, "overloadpacket", op)
    if key not in LAYOUT:
        raise KeyError(f"the γ-rule knows linear, addmm and convolution ops, not {op}")
    return LAYOUT[key]


def plus(p: Tensor, gamma: float) -> Tensor:
    """``p + γ·max(0, p)``."""
    return p + gamma * p.clamp(min=0)


def gamma_args(op: Any, args: Sequence[Any], gamma: float) -> list[Any]:
    """``args`` with the weight (and the bias, when there is one) replaced by ``p + γ·p⁺``."""
    _, w, b = layout(op)
    out = list(args)
    for i in (w, b):
        if i < len(out) and isinstance(out[i], Tensor):
            out[i] = plus(out[i].detach(), gamma)
    return out


class _GammaBackward(torch.autograd.Function):
    """Forward: the op unchanged. Backward: ``g_x = W_γᵀ (g_y ⊙ y / stab(z_γ))`` for the input only."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, op: Any, args: tuple, kwargs: dict, gamma: float, epsilon: float) -> Tensor:
        index = layout(op)[0]
        full = [*args[:index], x, *args[index:]]
        y = op(*full, **kwargs)
        ctx.save_for_backward(x, y)
        ctx.op, ctx.args, ctx.kwargs, ctx.gamma, ctx.epsilon, ctx.index = op, args, kwargs, gamma, epsilon, index
        return y

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        x, y = ctx.saved_tensors
        with torch.enable_grad():
            leaf = x.detach().requires_grad_(True)
            full = gamma_args(ctx.op, [*ctx.args[:ctx.index], leaf, *ctx.args[ctx.index:]], ctx.gamma)
            z = ctx.op(*full, **ctx.kwargs)
            wide = torch.promote_types(z.dtype, torch.float32)  # divide in at least float32
            ratio = safe_divide(y.to(wide), z.detach().to(wide), ctx.epsilon)
            (g,) = torch.autograd.grad(z, leaf, (grad.to(wide) * ratio).to(z.dtype))
        return g, None, None, None, None, None


def gamma(op: Callable[..., Any], *args: Any, gamma: float = 0.25, epsilon: float = 1e-6, **kwargs: Any) -> Tensor:
    """GxI form of the γ-rule around the linear/conv ``op`` (exact forward, modified input gradient)."""
    index = layout(op)[0]
    x = args[index]
    if not isinstance(x, Tensor) or not x.requires_grad:
        return op(*args, **kwargs)
    rest = tuple(args[:index]) + tuple(args[index + 1:])
    return _GammaBackward.apply(x, op, rest, kwargs, gamma, epsilon)


class Gamma(Rule):
    """γ-rule (Montavon et al. 2019): redistribute with ``W + γW⁺`` (and ``b + γb⁺``), stabilized by ε.

    Applies where the op's input (the activation) is its only relevance-carrying argument; the weight and
    bias are constants of the layer."""

    name = "gamma"
    ops = frozenset(LAYOUT)

    def __init__(self, gamma: float = 0.25, epsilon: float = 1e-6) -> None:
        if gamma < 0:
            raise ValueError(f"gamma={gamma}: the γ-rule needs γ ≥ 0 (γ = 0 is the ε-rule)")
        self.gamma = gamma
        self.epsilon = epsilon

    def applies(self, carrying: Sequence[int], op: Any = None) -> bool:
        return len(carrying) == 1

    def gxi(self, op: Any, carrying: Sequence[int]) -> tuple[Callable[..., Any], dict[str, Any]]:
        if tuple(carrying) != (layout(op)[0],):
            raise ValueError(f"the γ-rule needs {op}'s input to be its only relevance-carrying argument; "
                             f"got carrying positions {tuple(carrying)}")
        return gamma, {"gamma": self.gamma, "epsilon": self.epsilon}

    def explicit(self, op: Any, args: Sequence[Any], kwargs: dict[str, Any], out: Any, relevance: Any,
                 carrying: Sequence[int]) -> Relevances:
        """``R_x = x ⊙ W_γᵀ (R_y / stab(z_γ))`` with ``z_γ = op(x, W_γ, b_γ)``."""
        modified = gamma_args(op, args, self.gamma)
        z = op(*modified, **kwargs)
        return epsilon_explicit(op, modified, kwargs, z, relevance, carrying, self.epsilon)
