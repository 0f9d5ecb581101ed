"""Identity rule for element-wise activations (paper Eq. 9).

Explicit form: ``R_x = R_y``.
GxI form: ``g_x = g_y ⊙ f(x)/x``. The ratio is analytic where it exists, so nothing divides by a number
near zero (no NaN in bf16): SiLU → σ(x); GELU → Φ(x); tanh-GELU → ½(1 + tanh(√(2/π)(x + 0.044715x³)));
ReLU → step(x); leaky ReLU → 1 or the slope; tanh → tanh(x)/x with its Taylor limit 1 − x²/3 near 0;
asinh (a monotone, odd compression of a signal, asinh(x) = ln(x + √(x² + 1))) → asinh(x)/x with its Taylor
limit 1 − x²/6 near 0.
acos (the collision probability of a random-hyperplane hash, ``1 − acos(cos θ)/π``, is a monotone
element-wise kernel of an attention score, as YOSO's attention weights are) and a constant power ``x^p``,
``p ≥ 1`` (``p`` copies of one factor: the uniform product rule, Prop. 3.2, gives each ``R/p`` and the shared
input sums them back to ``R``) take the same identity rule.
Other functions (σ, softplus, exp, acos, …, whose f(0) ≠ 0) use ``f(x) / (x + ε·sign(x))``: the identity rule
itself is singular at x = 0 for them, and the stabilizer bounds it. Where ``f(x) = 0`` the ratio is 0 (ReLU6 /
hardtanh at an exact zero input): that is ``0 / (0 + ε)`` for every ε > 0, so it stays 0 — not ``0/0`` = NaN —
when a zero-bias check sets ε = 0 (the explicit form agrees: ``R_x = R_y = 0`` sends nothing further).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor
from torch._ops import ops as _ops

from .base import Relevances, Rule, safe_divide

aten = _ops.aten

_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)


def _gelu_ratio(x: Tensor, approximate: str = "none") -> Tensor:
    # ½(1 + tanh(z)) = σ(2z) and ½(1 + erf(z)) = ½ erfc(−z): no cancellation in the negative tail.
    if approximate == "tanh":
        return torch.sigmoid(2.0 * _SQRT_2_OVER_PI * (x + 0.044715 * x * x * x))
    return 0.5 * torch.erfc(x * (-1.0 / math.sqrt(2.0)))


def _tanh_ratio(x: Tensor) -> Tensor:
    small = x.abs() < 1e-3
    return torch.where(small, 1.0 - x * x / 3.0, torch.tanh(x) / torch.where(small, 1.0, x))


def _asinh_ratio(x: Tensor) -> Tensor:
    small = x.abs() < 1e-3
    return torch.where(small, 1.0 - x * x / 6.0, torch.asinh(x) / torch.where(small, 1.0, x))


def _leaky_ratio(x: Tensor, negative_slope: float = 0.01) -> Tensor:
    return torch.where(x > 0, torch.ones_like(x), torch.full_like(x, negative_slope))


# f(x)/x in closed form, per ATen overload packet; arguments after x are the op's own.
RATIOS: dict[Any, Callable[..., Tensor]] = {
    aten.silu: lambda x: torch.sigmoid(x),
    aten.gelu: _gelu_ratio,
    aten.relu: lambda x: (x > 0).to(x.dtype),
    aten.leaky_relu: _leaky_ratio,
    aten.tanh: _tanh_ratio,
    aten.asinh: _asinh_ratio,
}


def activation_ratio(op: Any, x: Tensor, *args: Any, epsilon: float = 1e-6, **kwargs: Any) -> Tensor:
    """``f(x)/x`` for the activation ``op``, computed in at least float32."""
    xf = x.to(torch.promote_types(x.dtype, torch.float32))
    closed = RATIOS.get(getattr(op, "overloadpacket", op))
    if closed is not None:
        return closed(xf, *args, **kwargs)
    y = op(xf, *args, **kwargs)
    return torch.where(y == 0, torch.zeros((), dtype=y.dtype, device=y.device), safe_divide(y, xf, epsilon))


class _IdentityRatio(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor, op: Any, epsilon: float, args: tuple, kwargs: dict) -> Tensor:
        ctx.save_for_backward(x)
        ctx.op, ctx.epsilon, ctx.args, ctx.kwargs = op, epsilon, args, kwargs
        return op(x, *args, **kwargs)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        (x,) = ctx.saved_tensors
        ratio = activation_ratio(ctx.op, x, *ctx.args, epsilon=ctx.epsilon, **ctx.kwargs)
        return (grad * ratio).to(grad.dtype), None, None, None, None


def identity(op: Callable[..., Any], x: Tensor, *args: Any, epsilon: float = 1e-6, **kwargs: Any) -> Tensor:
    """GxI form of the identity rule around the element-wise activation ``op``."""
    if not x.requires_grad:
        return op(x, *args, **kwargs)
    return _IdentityRatio.apply(x, op, epsilon, args, kwargs)


class Identity(Rule):
    """Identity rule (Eq. 9): an element-wise activation passes its relevance on unchanged."""

    name = "identity"
    ops = frozenset()  # any element-wise unary op

    def __init__(self, epsilon: float = 1e-6) -> None:
        self.epsilon = epsilon

    def gxi(self, op: Any, carrying: Sequence[int]) -> tuple[Callable[..., Any], dict[str, Any]]:
        return identity, {"epsilon": self.epsilon}

    def explicit(self, op: Any, args: Sequence[Any], kwargs: dict[str, Any], out: Any, relevance: Any,
                 carrying: Sequence[int]) -> Relevances:
        return [relevance if i == 0 else None for i in range(len(args))]
