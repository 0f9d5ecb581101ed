"""Uniform rule for products of relevance-carrying tensors (paper Prop. 3.2 and 3.3).

* element-wise product ``y = a ⊙ b`` (gated MLP gate·up, routing weight × expert output):
  explicit ``R_a = R_b = R_y / 2``; GxI: the plain gradient of each factor, halved.
* bilinear matmul ``y = A @ B`` (QKᵀ, softmax·V), ε + uniform: explicit ``N = R_y / (2y + ε·sign(y))``,
  ``R_A = (N Bᵀ) ⊙ A``, ``R_B = (Aᵀ N) ⊙ B``; GxI: the plain gradient of each operand, halved (ε → 0).

In general, for ``k`` relevance-carrying factors each factor gets ``1/k`` (Euler's theorem for functions
homogeneous of degree 1 in each factor). Operands that carry no relevance (RoPE tables, scales, masks)
are constants of a linear map and get the plain gradient. The added term of ``baddbmm`` / ``addmm``
(``β·input + α·b1 @ b2``, e.g. BLOOM's ALiBi scores) is not a factor: the ε-rule gives it its share
``input ⊙ R_y / y`` in full, and the two factors split the product's share.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from torch import Tensor
from torch._ops import ops as _ops

from ..ops import factors
from .base import Relevances, Rule, epsilon_explicit, scale_gradient, stabilize_gradient

aten = _ops.aten


def uniform(op: Callable[..., Any], *args: Any, scales: Sequence[float] = (), epsilon: float = 0.0,
            **kwargs: Any) -> Tensor:
    """GxI form: scale the gradient of positional argument ``i`` by ``scales[i]``, then run ``op``.

    ``epsilon > 0`` stabilizes the output as in the ε-rule, with the stabilizer split over the factors."""
    scaled = [scale_gradient(a, s) for a, s in zip(args, scales, strict=False)] + list(args[len(scales):])
    out = op(*scaled, **kwargs)
    if epsilon:
        share = sum(1 for s in scales if s != 1.0) or 1
        out = stabilize_gradient(out, epsilon / share)
    return out


class Uniform(Rule):
    """Uniform rule: a product of ``k`` relevance-carrying factors gives each ``1/k`` of the relevance."""

    name = "uniform"
    ops = frozenset({aten.mul, aten.mul_, aten.multiply, aten.matmul, aten.bmm, aten.mm, aten.einsum,
                     aten.baddbmm, aten.addmm, aten.addbmm})

    def __init__(self, epsilon: float = 0.0) -> None:
        self.epsilon = epsilon

    def applies(self, carrying: Sequence[int], op: Any = None) -> bool:
        return len(factors(op, carrying)) >= 2

    def gxi(self, op: Any, carrying: Sequence[int]) -> tuple[Callable[..., Any], dict[str, Any]]:
        carrying = factors(op, carrying)
        k = len(carrying)
        scales = tuple(1.0 / k if i in carrying else 1.0 for i in range(max(carrying) + 1))
        extra: dict[str, Any] = {"scales": scales}
        if self.epsilon:
            extra["epsilon"] = self.epsilon
        return uniform, extra

    def explicit(self, op: Any, args: Sequence[Any], kwargs: dict[str, Any], out: Any, relevance: Any,
                 carrying: Sequence[int]) -> Relevances:
        product = factors(op, carrying)
        if len(product) == len(carrying):
            return epsilon_explicit(op, args, kwargs, out, relevance, carrying,
                                    max(self.epsilon, 1e-12), share=len(carrying))
        # an added term: the ε-rule over the whole op, then the factors split the product's share
        result = epsilon_explicit(op, args, kwargs, out, relevance, carrying, max(self.epsilon, 1e-12))
        return [r / len(product) if i in product and r is not None else r for i, r in enumerate(result)]
