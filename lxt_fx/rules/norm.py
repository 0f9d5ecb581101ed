"""Identity rule through normalization layers (paper Prop. 3.4).

For ``y = (x − μ(x)) · r(x) · w + b`` (LayerNorm, ``r = 1/std``) or ``y = x · r(x) · w`` (RMSNorm,
``r = 1/rms``) the normalizing scale ``r`` is treated as a constant: the map becomes linear and the ε-rule
(ε → 0) applies to the centring and to ``w``.

Explicit form: ``R_x = x ⊙ C(r · w · R_y / y)`` with ``C(v) = v − mean(v)`` over the normalized dims for
LayerNorm and ``C = id`` for RMSNorm (so ``R_x = R_y`` there).
GxI form: the forward is the exact fused op; the backward is ``g_x = C(g · w · r)`` (``r`` detached).
Norms that the exporter decomposes (LLaMA's RMSNorm, T5LayerNorm) get the :class:`~.stop.Stop` rule on
their ``rsqrt`` node instead, which is the same rule.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor
from torch._ops import ops as _ops

from .base import Relevances, Rule, safe_divide

aten = _ops.aten


def _norm_parts(op: Any, x: Tensor, args: Sequence[Any]) -> tuple[tuple[int, ...], Tensor | None, Tensor, bool]:
    """(normalized dims, weight, detached scale r, centred?) for a layer_norm / rms_norm call."""
    packet = getattr(op, "overloadpacket", op)
    shape = args[0]
    dims = tuple(range(x.dim() - len(shape), x.dim()))
    xf = x.detach().to(torch.promote_types(x.dtype, torch.float32))
    if packet is aten.layer_norm:
        weight = args[1] if len(args) > 1 else None
        eps = args[3] if len(args) > 3 else 1e-5
        var = xf.var(dim=dims, unbiased=False, keepdim=True)
        return dims, weight, torch.rsqrt(var + eps), True
    weight = args[1] if len(args) > 1 else None
    eps = args[2] if len(args) > 2 and args[2] is not None else torch.finfo(x.dtype).eps
    return dims, weight, torch.rsqrt(xf.pow(2).mean(dim=dims, keepdim=True) + eps), False


# The op's arguments after ``x`` with their defaults, so keyword arguments can be folded in by position.
_SIGNATURES: dict[Any, tuple[tuple[str, Any], ...]] = {
    aten.layer_norm: (("normalized_shape", None), ("weight", None), ("bias", None), ("eps", 1e-5),
                      ("cudnn_enable", True)),
    aten.rms_norm: (("normalized_shape", None), ("weight", None), ("eps", None)),
}


def _fold_kwargs(op: Any, args: Sequence[Any], kwargs: dict[str, Any]) -> tuple[tuple, dict[str, Any]]:
    """(positional args after ``x`` with the known keyword arguments folded in, the remaining kwargs)."""
    signature = _SIGNATURES.get(getattr(op, "overloadpacket", op))
    if signature is None or not kwargs:
        return tuple(args), dict(kwargs)
    rest = dict(kwargs)
    return tuple(args) + tuple(rest.pop(name, default) for name, default in signature[len(args):]), rest


def _centre(v: Tensor, dims: tuple[int, ...]) -> Tensor:
    return v - v.mean(dim=dims, keepdim=True)


class _NormIdentity(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor, op: Any, args: tuple, kwargs: dict) -> Tensor:
        ctx.save_for_backward(x)
        ctx.op, ctx.args = op, args
        return op(x, *args, **kwargs)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        (x,) = ctx.saved_tensors
        dims, weight, r, centred = _norm_parts(ctx.op, x, ctx.args)
        g = grad.to(r.dtype) * r
        if weight is not None:
            g = g * weight.to(r.dtype)
        if centred:
            g = _centre(g, dims)
        return g.to(grad.dtype), None, None, None


def norm_identity(op: Callable[..., Any], x: Tensor, *args: Any, **kwargs: Any) -> Tensor:
    """GxI form: the exact ``layer_norm`` / ``rms_norm`` forward, backward with the scale detached."""
    args, kwargs = _fold_kwargs(op, args, kwargs)
    if not x.requires_grad:
        return op(x, *args, **kwargs)
    return _NormIdentity.apply(x, op, args, kwargs)


class NormIdentity(Rule):
    """Identity through the normalizing scale of ``aten.layer_norm`` and ``aten.rms_norm``."""

    name = "norm_identity"
    ops = frozenset({aten.layer_norm, aten.rms_norm})

    def gxi(self, op: Any, carrying: Sequence[int]) -> tuple[Callable[..., Any], dict[str, Any]]:
        return norm_identity, {}

    def explicit(self, op: Any, args: Sequence[Any], kwargs: dict[str, Any], out: Any, relevance: Any,
                 carrying: Sequence[int]) -> Relevances:
        x = args[0]
        dims, weight, r, centred = _norm_parts(op, x, _fold_kwargs(op, args[1:], kwargs)[0])
        v = safe_divide(relevance.to(r.dtype), out.to(r.dtype), 1e-12) * r
        if weight is not None:
            v = v * weight.to(r.dtype)
        if centred:
            v = _centre(v, dims)
        return [(x.to(r.dtype) * v).to(x.dtype)] + [None] * (len(args) - 1)
