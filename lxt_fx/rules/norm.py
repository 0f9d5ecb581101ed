"""Identity rule through normalization layers (paper Prop. 3.4).

For ``y = (x − μ(x)) · r(x) · w + b`` (LayerNorm, ``r = 1/std``; GroupNorm, the same per group of
channels with a per-channel ``w``) or ``y = x · r(x) · w`` (RMSNorm, ``r = 1/rms``) the normalizing scale
``r`` is treated as a constant: the map becomes linear and the ε-rule (ε → 0) applies to the centring and
to ``w``.

Explicit form: ``R_x = x ⊙ C(r · w · R_y / y)`` with ``C(v) = v − mean(v)`` over each normalized set for
LayerNorm and GroupNorm and ``C = id`` for RMSNorm (so ``R_x = R_y`` there).
GxI form: the forward is the exact fused op; the backward is ``g_x = C(g · w · r)`` (``r`` detached).
Norms that the exporter decomposes (LLaMA's RMSNorm, T5LayerNorm) get the :class:`~.stop.Stop` rule on
their ``rsqrt`` node instead, which is the same rule.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch._ops import ops as _ops

from .base import Relevances, Rule, safe_divide

aten = _ops.aten


@dataclass
class _Parts:
    """How one norm call normalizes ``x``: ``group`` views an x-shaped tensor as ``[..., n]`` with each
    normalized set of ``n`` entries last (``ungroup`` undoes it); ``r`` is the detached scale per set,
    ``weight`` the affine scale broadcastable to ``x``."""

    group: Callable[[Tensor], Tensor]
    ungroup: Callable[[Tensor], Tensor]
    r: Tensor
    weight: Tensor | None
    centred: bool


def _norm_parts(op: Any, x: Tensor, args: Sequence[Any]) -> _Parts:
    """The normalization of a layer_norm / rms_norm / group_norm call, its scale detached."""
    packet = getattr(op, "overloadpacket", op)
    xf = x.detach().to(torch.promote_types(x.dtype, torch.float32))
    weight = args[1] if len(args) > 1 else None
    shape = x.shape
    if packet is aten.group_norm:
        groups = args[0]
        eps = args[3] if len(args) > 3 else 1e-5

        def group(t: Tensor) -> Tensor:
            return t.reshape(shape[0], groups, -1)

        if weight is not None:
            weight = weight.reshape(-1, *([1] * (x.dim() - 2)))
        centred = True
    else:
        n = len(args[0])

        def group(t: Tensor) -> Tensor:
            return t.flatten(start_dim=x.dim() - n) if n > 1 else t

        centred = packet is aten.layer_norm
        eps = (args[3] if len(args) > 3 else 1e-5) if centred else (
            args[2] if len(args) > 2 and args[2] is not None else torch.finfo(x.dtype).eps)
    grouped = group(xf)
    if centred:
        spread = grouped.var(dim=-1, unbiased=False, keepdim=True)
    else:
        spread = grouped.pow(2).mean(-1, keepdim=True)
    return _Parts(group, lambda t: t.reshape(shape), torch.rsqrt(spread + eps), weight, centred)


def _scale_back(parts: _Parts, v: Tensor) -> Tensor:
    """``C(r · w · v)``: the norm's linear map with its scale fixed, transposed (it is symmetric)."""
    if parts.weight is not None:
        v = v * parts.weight.to(parts.r.dtype)
    v = parts.group(v) * parts.r
    if parts.centred:
        v = v - v.mean(dim=-1, keepdim=True)
    return parts.ungroup(v)


# The op's arguments after ``x`` with their defaults, so keyword arguments can be folded in by position.
_SIGNATURES: dict[Any, tuple[tuple[str, Any], ...]] = {
    aten.layer_norm: (("normalized_shape", None), ("weight", None), ("bias", None), ("eps", 1e-5),
                      ("cudnn_enable", True)),
    aten.rms_norm: (("normalized_shape", None), ("weight", None), ("eps", None)),
    aten.group_norm: (("num_groups", None), ("weight", None), ("bias", None), ("eps", 1e-5),
                      ("cudnn_enabled", True)),
}


def _fold_kwargs(op: Any, args: Sequence[Any], kwargs: dict[str, Any]) -> tuple[tuple, dict[str, Any]]:
    """(positional args after ``x`` with the known keyword arguments folded in, the remaining kwargs)."""
    signature = _SIGNATURES.get(getattr(op, "overloadpacket", op))
    if signature is None or not kwargs:
        return tuple(args), dict(kwargs)
    rest = dict(kwargs)
    return tuple(args) + tuple(rest.pop(name, default) for name, default in signature[len(args):]), rest


class _NormIdentity(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor, op: Any, args: tuple, kwargs: dict) -> Tensor:
        ctx.save_for_backward(x)
        ctx.op, ctx.args = op, args
        return op(x, *args, **kwargs)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        (x,) = ctx.saved_tensors
        parts = _norm_parts(ctx.op, x, ctx.args)
        return _scale_back(parts, grad.to(parts.r.dtype)).to(grad.dtype), None, None, None


def norm_identity(op: Callable[..., Any], x: Tensor, *args: Any, **kwargs: Any) -> Tensor:
    """GxI form: the exact norm forward, backward with the scale detached."""
    args, kwargs = _fold_kwargs(op, args, kwargs)
    if not x.requires_grad:
        return op(x, *args, **kwargs)
    return _NormIdentity.apply(x, op, args, kwargs)


class NormIdentity(Rule):
    """Identity through the normalizing scale of ``aten.layer_norm``, ``aten.rms_norm`` and
    ``aten.group_norm``."""

    name = "norm_identity"
    ops = frozenset({aten.layer_norm, aten.rms_norm, aten.group_norm})

    def gxi(self, op: Any, carrying: Sequence[int]) -> tuple[Callable[..., Any], dict[str, Any]]:
        return norm_identity, {}

    def explicit(self, op: Any, args: Sequence[Any], kwargs: dict[str, Any], out: Any, relevance: Any,
                 carrying: Sequence[int]) -> Relevances:
        x = args[0]
        parts = _norm_parts(op, x, _fold_kwargs(op, args[1:], kwargs)[0])
        v = _scale_back(parts, safe_divide(relevance.to(parts.r.dtype), out.to(parts.r.dtype), 1e-12))
        return [(x.to(parts.r.dtype) * v).to(x.dtype)] + [None] * (len(args) - 1)
