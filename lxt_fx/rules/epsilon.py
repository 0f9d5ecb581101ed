"""ε-LRP for linear maps (paper Eq. 8).

Explicit form: ``R_x = x ⊙ Wᵀ (R_y / (y + ε·sign(y)))``.
GxI form: plain autograd is ε-LRP with ε → 0 (the bias absorbs its share), so no rule is needed for
linear ops at all; for ε > 0 the output gradient is rescaled, ``g ← g ⊙ y / (y + ε·sign(y))``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from torch import Tensor
from torch._ops import ops as _ops

from .base import Relevances, Rule, epsilon_explicit, stabilize_gradient

aten = _ops.aten


def epsilon(op: Callable[..., Any], *args: Any, epsilon: float = 1e-6, **kwargs: Any) -> Tensor:
    """GxI form of the ε-rule around any linear ``op``."""
    return stabilize_gradient(op(*args, **kwargs), epsilon)


class Epsilon(Rule):
    """ε-LRP (Eq. 8) with the sign-aware stabilizer ``y + ε·sign(y)``, sign(0) = 1."""

    name = "epsilon"
    ops = frozenset({aten.linear, aten.addmm, aten.mm, aten.bmm, aten.matmul, aten.conv1d, aten.conv2d,
                     aten.convolution, aten.add, aten.sub, aten.einsum})

    def __init__(self, epsilon: float = 1e-6) -> None:
        self.epsilon = epsilon

    def gxi(self, op: Any, carrying: Sequence[int]) -> tuple[Callable[..., Any], dict[str, Any]]:
        return epsilon, {"epsilon": self.epsilon}

    def explicit(self, op: Any, args: Sequence[Any], kwargs: dict[str, Any], out: Any, relevance: Any,
                 carrying: Sequence[int]) -> Relevances:
        return epsilon_explicit(op, args, kwargs, out, relevance, carrying, self.epsilon)
