"""Gradient rule: an explicit decision to keep the plain gradient through a non-linear op.

Used where the rule wanted *is* the Jacobian: in GxI form the op runs unchanged; the explicit form is the
matching ``R_x = x ⊙ Jᵀ (R_y / y)`` (Gradient×Input, Arras et al. 2025, Eq. 3), which is what GxI computes.
Not for the renormalization of MoE routing weights (``w / Σw``): Gradient×Input through a map homogeneous of
degree 0 sums to zero, so relevance would vanish there; that op gets :class:`~.renormalize.Renormalize`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from torch import Tensor

from .base import Relevances, Rule, epsilon_explicit


def gradient(op: Callable[..., Any], *args: Any, **kwargs: Any) -> Tensor:
    """GxI form: the op itself (kept as a named node so the decision is visible)."""
    return op(*args, **kwargs)


class Gradient(Rule):
    """Plain gradient × input through the op."""

    name = "gradient"

    def gxi(self, op: Any, carrying: Sequence[int]) -> tuple[Callable[..., Any], dict[str, Any]]:
        return gradient, {}

    def explicit(self, op: Any, args: Sequence[Any], kwargs: dict[str, Any], out: Any, relevance: Any,
                 carrying: Sequence[int]) -> Relevances:
        return epsilon_explicit(op, args, kwargs, out, relevance, carrying, 1e-12)
