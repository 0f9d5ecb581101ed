"""γ-rule for linear maps and convolutions, in two forms: the *generalized* γ-rule for signed inputs (the
default; Andéol, Kawakami, Wada, Kanamori, Müller, Montavon 2021, "Learning Domain Invariant
Representations by Joint Wasserstein Distance Minimization", arXiv 2106.04923 — the form zennit 1.0 ships
as ``Gamma``) and the *classic* one (Montavon, Binder, Lapuschkin, Samek, Müller 2019, "Layer-Wise Relevance
Propagation: An Overview", LNCS 11700, pp. 193–209), which is only right for ``x ≥ 0``.

For one output ``z_j = Σ_i x_i w_ij + b_j`` and the relevance ``R_j`` it receives, with ``p⁺ = max(0, p)``,
``p⁻ = min(0, p)``, ``W↑ = W + γW⁺``, ``W↓ = W + γW⁻`` and ``stab(d) = d + ε·sign(d)``, ``sign(0) = 1``:

* **generalized** (signed inputs: after a LayerNorm, normalized pixels): favour the contributions that
  have the sign of the output,

  - ``z_j ≥ 0``: ``c_ij = x_i⁺ w↑_ij + x_i⁻ w↓_ij``, ``d_j = Σ_i c_ij + b_j + γb_j⁺``;
  - ``z_j < 0``: ``c_ij = x_i⁺ w↓_ij + x_i⁻ w↑_ij``, ``d_j = Σ_i c_ij + b_j + γb_j⁻``;
  - ``R_i = Σ_j c_ij / stab(d_j) · R_j``.

  ``d_j = z_j + γ·(the contributions of z_j's sign, bias included)``, so ``d_j`` has the sign of ``z_j`` and
  ``|d_j| ≥ |z_j|``: the denominator never crosses zero, whatever the signs of ``x``. With zero biases and
  ``ε = 0`` the rule conserves exactly (``Σ_i R_i = Σ_j R_j``); a bias keeps the share
  ``(b_j + γb_j^±) / d_j``. ``γ = 0`` is the ε-rule; ``γ → ∞`` is the z⁺-rule for signed inputs
  (``c_ij = x_i⁺w_ij⁺ + x_i⁻w_ij⁻`` for ``z_j ≥ 0``, ``x_i⁺w_ij⁻ + x_i⁻w_ij⁺`` for ``z_j < 0``, bias
  ``b_j⁺`` / ``b_j⁻``), which ``γ = math.inf`` (or :class:`ZPlus`) computes as that limit.

* **classic** (``signed=False``): ``c_ij = x_i (w_ij + γw_ij⁺)``, ``d_j = Σ_i c_ij + b_j + γb_j⁺`` for every
  ``j``. For signed ``x`` its ``d_j`` can have the opposite sign of ``z_j`` or pass through zero (relevance
  flips sign or blows up): keep it for inputs known to be ``≥ 0`` (after a ReLU).

GxI form: the forward output is exact, ``y = op(x, W, b)``. The backward receives ``g_y`` (so
``R_y = y ⊙ g_y``) and returns ``g_x`` with ``x ⊙ g_x = R_x``: with ``s = g_y ⊙ y / stab(d)`` split by the mask
``m = [y ≥ 0]`` into ``s↑ = m ⊙ s`` and ``s↓ = (1 − m) ⊙ s``, ``g_x = W↑ᵀs↑ + W↓ᵀs↓`` where ``x > 0`` and
``W↓ᵀs↑ + W↑ᵀs↓`` where ``x < 0``. Three linear passes give it (:func:`_signed_gradient`): ``z₀ = op(x, W, 0)``
and the positive part ``P = op(x⁺, W⁺, 0) + op(x⁻, W⁻, 0)`` (so ``N = z₀ − P``, ``d↑ = y + γ(P + b⁺)``,
``d↓ = y + γ(N + b⁻)``), and one backward through them. The explicit form builds the four products
``x^± W↑/↓`` instead, an independent check. The classic
form is one pass: ``g_x = W_γᵀ (g_y ⊙ y / stab(z_γ))`` with ``W_γ = W↑``. The transpose is the vector-Jacobian
product of the same op with modified parameters, so one code path covers ``aten.linear``, GPT-2's
``aten.addmm`` (``bias, x, W``) and ``aten.conv1d/2d/3d`` / ``aten.convolution`` with every stride, padding,
dilation and groups. The rule gives no gradient to the weights (an explanation pass).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor
from torch._ops import ops as _ops

from .base import Relevances, Rule, vjp

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


def up(p: Tensor, gamma: float) -> Tensor:
    """``p + γ·p⁺``; for ``γ = ∞`` the limit direction ``p⁺`` (the common factor γ cancels in ``c / d``)."""
    return p.clamp(min=0) if math.isinf(gamma) else p + gamma * p.clamp(min=0)


def down(p: Tensor, gamma: float) -> Tensor:
    """``p + γ·p⁻``; for ``γ = ∞`` the limit direction ``p⁻``."""
    return p.clamp(max=0) if math.isinf(gamma) else p + gamma * p.clamp(max=0)


def plus(p: Tensor, gamma: float) -> Tensor:
    """``p + γ·max(0, p)`` (the classic rule's parameters; :func:`up`)."""
    return up(p, gamma)


def with_params(op: Any, args: Sequence[Any], modify: Callable[[Tensor], Tensor], x: Any = None,
                bias: bool = True) -> list[Any]:
    """``args`` with the weight (and the bias, when there is one) replaced by ``modify(p)``; the input by
    ``x`` when given; the bias by zeros when ``bias`` is false (a pass whose bias is counted elsewhere)."""
    index, w, b = layout(op)
    out = list(args)
    if x is not None:
        out[index] = x
    for i in (w, b):
        if i < len(out) and isinstance(out[i], Tensor):
            p = out[i].detach()
            out[i] = modify(p) if (i == w or bias) else torch.zeros_like(p)
    return out


def gamma_args(op: Any, args: Sequence[Any], gamma: float) -> list[Any]:
    """``args`` with the weight (and the bias, when there is one) replaced by ``p + γ·p⁺`` (classic form)."""
    return with_params(op, args, lambda p: up(p, gamma))


def signed_denominators(op: Any, args: Sequence[Any], kwargs: dict[str, Any], x: Tensor,
                        gamma: float) -> tuple[Tensor, Tensor]:
    """``(d↑, d↓)``: the generalized rule's denominators for outputs ``z ≥ 0`` and ``z < 0``,
    ``d↑ = op(x⁺, W↑, b↑) + op(x⁻, W↓, 0)`` and ``d↓ = op(x⁺, W↓, b↓) + op(x⁻, W↑, 0)`` (differentiable in
    ``x``)."""
    xp, xn = x.clamp(min=0), x.clamp(max=0)
    u, d = (lambda p: up(p, gamma)), (lambda p: down(p, gamma))
    d_up = op(*with_params(op, args, u, xp), **kwargs) + op(*with_params(op, args, d, xn, bias=False), **kwargs)
    d_down = op(*with_params(op, args, d, xp), **kwargs) + op(*with_params(op, args, u, xn, bias=False), **kwargs)
    return d_up, d_down


def divide(numerator: Tensor, denominator: Tensor, positive: Tensor, epsilon: float) -> Tensor:
    """``numerator / (d + ε·(+1 where positive, −1 elsewhere))`` in at least float32, and 0 where that
    denominator is exactly 0 (then the numerator is 0 too: ``|d| ≥ |z|``)."""
    wide = torch.promote_types(denominator.dtype, torch.float32)
    den = denominator.to(wide) + epsilon * torch.where(positive, 1.0, -1.0).to(wide)
    return torch.where(den == 0, 0.0, numerator.to(wide) / torch.where(den == 0, 1.0, den))


def bias_term(op: Any, args: Sequence[Any], out: Tensor, modify: Callable[[Tensor], Tensor]) -> Tensor | float:
    """``modify(b)`` broadcast against the output ``out`` (channel dim of a convolution, last dim of a linear
    map); ``0.0`` when the op has no bias."""
    _, w, b = layout(op)
    if b >= len(args) or not isinstance(args[b], Tensor):
        return 0.0
    p = modify(args[b].detach())
    if getattr(op, "overloadpacket", op) in (aten.linear, aten.addmm):
        return p
    channel = out.dim() - (args[w].dim() - 2) - 1  # convolutions: [N,] C, *spatial
    return p.reshape(p.shape + (1,) * (out.dim() - channel - 1))


def _signed_gradient(op: Any, full: list[Any], kwargs: dict[str, Any], leaf: Tensor, y: Tensor, grad: Tensor,
                     gamma: float, epsilon: float) -> Tensor:
    """The generalized rule's ``g_x`` in three linear passes: ``z₀ = op(x, W, 0)``, the same-sign-positive
    part ``P = op(x⁺, W⁺, 0) + op(x⁻, W⁻, 0)`` and ``N = z₀ − P``. Then ``d↑ = y + γ(P + b⁺)``,
    ``d↓ = y + γ(N + b⁻)`` (γ = ∞: ``P + b⁺``, ``N + b⁻``), ``s = g_y ⊙ y / stab(d)``, ``s↑ = m ⊙ s``,
    ``s↓ = (1 − m) ⊙ s``, and ``∂/∂x Σ(s↑ d↑ + s↓ d↓) = ∂z₀ᵀ(s↑ + (1 + γ)s↓) + γ ∂Pᵀ(s↑ − s↓)``
    (γ = ∞: ``∂z₀ᵀ s↓ + ∂Pᵀ(s↑ − s↓)``) — which is ``W↑ᵀs↑ + W↓ᵀs↓`` where ``x > 0`` and
    ``W↓ᵀs↑ + W↑ᵀs↓`` where ``x < 0``, the rule's ``g_x``."""
    infinite = math.isinf(gamma)
    z0 = op(*with_params(op, full, lambda p: p, leaf, bias=False), **kwargs)
    part = op(*with_params(op, full, lambda p: p.clamp(min=0), leaf.clamp(min=0), bias=False), **kwargs) \
        + op(*with_params(op, full, lambda p: p.clamp(max=0), leaf.clamp(max=0), bias=False), **kwargs)
    p_val, n_val = part.detach(), z0.detach() - part.detach()
    b_up = bias_term(op, full, y, lambda p: p.clamp(min=0))
    b_down = bias_term(op, full, y, lambda p: p.clamp(max=0))
    if infinite:
        d_up, d_down = p_val + b_up, n_val + b_down
    else:
        d_up, d_down = y + gamma * (p_val + b_up), y + gamma * (n_val + b_down)
    positive = y >= 0
    s = (grad.to(torch.promote_types(y.dtype, torch.float32))
         * divide(y, torch.where(positive, d_up, d_down), positive, epsilon)).to(y.dtype)
    s_up = torch.where(positive, s, torch.zeros_like(s))
    s_down = s - s_up
    g_z = s_down if infinite else s_up + (1 + gamma) * s_down
    g_p = (s_up - s_down) if infinite else gamma * (s_up - s_down)
    (g,) = torch.autograd.grad([z0, part], leaf, [g_z, g_p])
    return g


class _GammaBackward(torch.autograd.Function):
    """Forward: the op unchanged. Backward: the γ-rule's modified input gradient (module docstring)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, op: Any, args: tuple, kwargs: dict, gamma: float, epsilon: float,
                signed: bool) -> Tensor:
        index = layout(op)[0]
        full = [*args[:index], x, *args[index:]]
        y = op(*full, **kwargs)
        ctx.save_for_backward(x, y)
        ctx.op, ctx.args, ctx.kwargs, ctx.index = op, args, kwargs, index
        ctx.gamma, ctx.epsilon, ctx.signed = gamma, epsilon, signed
        return y

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        x, y = ctx.saved_tensors
        op, kwargs, index = ctx.op, ctx.kwargs, ctx.index
        with torch.enable_grad():
            leaf = x.detach().requires_grad_(True)
            full = [*ctx.args[:index], leaf, *ctx.args[index:]]
            if ctx.signed:
                g = _signed_gradient(op, full, kwargs, leaf, y, grad, ctx.gamma, ctx.epsilon)
            else:
                z = op(*gamma_args(op, full, ctx.gamma), **kwargs)
                ratio = divide(y, z.detach(), z.detach() >= 0, ctx.epsilon)
                (g,) = torch.autograd.grad(z, leaf, (grad.to(ratio.dtype) * ratio).to(z.dtype))
        return g, None, None, None, None, None, None


def gamma(op: Callable[..., Any], *args: Any, gamma: float = 0.25, epsilon: float = 1e-6, signed: bool = True,
          **kwargs: Any) -> Tensor:
    """GxI form of the γ-rule around the linear/conv ``op`` (exact forward, modified input gradient);
    ``signed``: the generalized form (default) or the classic one."""
    index = layout(op)[0]
    x = args[index]
    if not isinstance(x, Tensor) or not x.requires_grad:
        return op(*args, **kwargs)
    rest = tuple(args[:index]) + tuple(args[index + 1:])
    return _GammaBackward.apply(x, op, rest, kwargs, gamma, epsilon, signed)


class Gamma(Rule):
    """γ-rule: redistribute with ``W↑ = W + γW⁺`` / ``W↓ = W + γW⁻`` (and the bias alike), stabilized by ε.

    ``signed=True`` (default): the generalized γ-rule for signed inputs — contributions with the sign of
    the output are favoured, the denominator keeps the output's sign. ``signed=False``: the classic
    ``W + γW⁺`` form, right only for inputs ``≥ 0``. ``gamma=math.inf``: the z⁺ limit (see :class:`ZPlus`).
    Formulas: the module docstring. Applies where the op's input (the activation) is its only
    relevance-carrying argument; the weight and bias are constants of the layer."""

    name = "gamma"
    ops = frozenset(LAYOUT)

    def __init__(self, gamma: float = 0.25, epsilon: float = 1e-6, signed: bool = True) -> None:
        if not gamma >= 0:
            raise ValueError(f"gamma={gamma}: the γ-rule needs γ ≥ 0 (γ = 0 is the ε-rule, γ = math.inf "
                             f"the z⁺-rule)")
        self.gamma = gamma
        self.epsilon = epsilon
        self.signed = signed

    def applies(self, carrying: Sequence[int], op: Any = None) -> bool:
        return len(carrying) == 1

    def gxi(self, op: Any, carrying: Sequence[int]) -> tuple[Callable[..., Any], dict[str, Any]]:
        if tuple(carrying) != (layout(op)[0],):
            raise ValueError(f"the γ-rule needs {op}'s input to be its only relevance-carrying argument; "
                             f"got carrying positions {tuple(carrying)}")
        return gamma, {"gamma": self.gamma, "epsilon": self.epsilon, "signed": self.signed}

    def explicit(self, op: Any, args: Sequence[Any], kwargs: dict[str, Any], out: Any, relevance: Any,
                 carrying: Sequence[int]) -> Relevances:
        """Classic: ``R_x = x ⊙ W↑ᵀ (R_y / stab(z_γ))``, ``z_γ = op(x, W↑, b↑)``. Generalized: with ``d`` the
        sign-selected denominator and ``m = [y ≥ 0]``,
        ``R_x = x⁺ ⊙ (W↑ᵀ(m R_y / stab(d)) + W↓ᵀ((1−m) R_y / stab(d))) + x⁻ ⊙ (W↓ᵀ(m R_y / stab(d)) + W↑ᵀ((1−m) R_y / stab(d)))``."""
        index = layout(op)[0]
        x = args[index]
        if not self.signed:
            modified = gamma_args(op, args, self.gamma)
            with torch.no_grad():
                z = op(*modified, **kwargs)
            normalized = divide(relevance, z, z >= 0, self.epsilon).to(relevance.dtype)
            (back,) = vjp(op, modified, kwargs, [index], normalized)
            result: Relevances = [None] * len(args)
            result[index] = x * back
            return result
        with torch.no_grad():
            d_up, d_down = signed_denominators(op, args, kwargs, x, self.gamma)
        positive = out >= 0
        normalized = divide(relevance, torch.where(positive, d_up, d_down), positive, self.epsilon)
        normalized = normalized.to(relevance.dtype)
        n_pos = torch.where(positive, normalized, torch.zeros_like(normalized))
        n_neg = normalized - n_pos
        u, d = (lambda p: up(p, self.gamma)), (lambda p: down(p, self.gamma))
        total = torch.zeros_like(x)
        for part, modify, n in ((x.clamp(min=0), u, n_pos), (x.clamp(max=0), d, n_pos),
                                (x.clamp(min=0), d, n_neg), (x.clamp(max=0), u, n_neg)):
            (back,) = vjp(op, with_params(op, args, modify, part), kwargs, [index], n)
            total = total + part * back
        result = [None] * len(args)
        result[index] = total
        return result


class ZPlus(Gamma):
    """z⁺-rule for signed inputs — the generalized γ-rule's limit ``γ → ∞``: an output ``z_j ≥ 0`` is
    redistributed over its positive contributions only, ``R_i = (x_i⁺w_ij⁺ + x_i⁻w_ij⁻) /
    stab(Σ_i' (x_i'⁺w_i'j⁺ + x_i'⁻w_i'j⁻) + b_j⁺) · R_j``; an output ``z_j < 0`` over its negative ones
    (``x⁺w⁻ + x⁻w⁺``, bias ``b_j⁻``). For ``x ≥ 0`` this is the textbook z⁺-rule. It is the rule RULES.md
    names for the patch embedding: on signed (normalized) pixels the textbook ``x w⁺ / Σ x w⁺`` would
    divide by a sum of either sign, while this form's denominator has the output's sign and is at least
    ``|z_j|`` in magnitude, and it conserves exactly with zero biases."""

    name = "zplus"

    def __init__(self, epsilon: float = 1e-6) -> None:
        super().__init__(math.inf, epsilon, signed=True)
