"""Softmax: deep-Taylor decomposition with the bias at the input (paper Prop. 3.1).

Explicit form, for ``s = softmax(x)`` along ``dim``: ``R_x = x ⊙ (R_y − s · Σ_dim R_y)``; masked entries
(``x = −inf`` or ``finfo.min``, where ``s = 0``) get exactly 0.
GxI form: nothing — the plain gradient times the input *is* this rule, since
``x ⊙ ∂s/∂xᵀ g = x ⊙ s ⊙ (g − Σ s g) = x ⊙ (R_y − s Σ R_y)`` with ``R_y = s ⊙ g``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor
from torch._ops import ops as _ops

from .base import Relevances, Rule

aten = _ops.aten


def softmax_dt(op: Callable[..., Any], *args: Any, **kwargs: Any) -> Tensor:
    """GxI form of the softmax rule: the op itself (kept as a named node so the decision is visible)."""
    return op(*args, **kwargs)


def softmax_explicit(x: Tensor, s: Tensor, relevance: Tensor, dim: int) -> Tensor:
    """``x ⊙ (R_y − s Σ_dim R_y)``, 0 wherever ``s == 0`` (masked logits)."""
    dtype = torch.promote_types(relevance.dtype, torch.float32)
    r, sf, xf = relevance.to(dtype), s.to(dtype), x.to(dtype)
    out = xf * (r - sf * r.sum(dim, keepdim=True))
    return torch.where(sf == 0, torch.zeros((), dtype=dtype, device=out.device), out).to(relevance.dtype)


class SoftmaxDT(Rule):
    """Deep-Taylor softmax rule (Prop. 3.1)."""

    name = "softmax"
    ops = frozenset({aten.softmax, aten._softmax, aten._safe_softmax})

    def gxi(self, op: Any, carrying: Sequence[int]) -> tuple[Callable[..., Any], dict[str, Any]]:
        return softmax_dt, {}

    def explicit(self, op: Any, args: Sequence[Any], kwargs: dict[str, Any], out: Any, relevance: Any,
                 carrying: Sequence[int]) -> Relevances:
        dim = args[1] if len(args) > 1 else kwargs.get("dim", -1)
        return [softmax_explicit(args[0], out, relevance, dim)] + [None] * (len(args) - 1)
