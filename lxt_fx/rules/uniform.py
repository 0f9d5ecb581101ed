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
from torch._ops import OpOverload
from torch._ops import ops as _ops

from ..ops import factors, writes_first_argument
from ..tracing.errors import LXTError
from .base import (
    Position,
    Relevances,
    Rule,
    arg_at,
    epsilon_explicit,
    relevances_like,
    scale_gradient,
    stabilize_gradient,
)

aten = _ops.aten

Scales = tuple[float | tuple[float, ...], ...]


class InPlaceProductError(LXTError):
    """An in-place product (``a.mul_(b)``) whose out-of-place twin does not exist."""


def out_of_place(op: OpOverload) -> OpOverload:
    """The out-of-place twin of an in-place ATen overload: ``aten.mul_.Tensor`` → ``aten.mul.Tensor``."""
    base = op._schema.name.split("::")[-1].removesuffix("_")
    twin = getattr(getattr(aten, base, None), op._overloadname, None)
    if twin is None:
        raise InPlaceProductError(f"{op} writes its first argument and has no out-of-place twin "
                                  f"aten.{base}.{op._overloadname}; the uniform rule cannot be applied to it. "
                                  "What to do: rewrite the model line as an out-of-place product, or give "
                                  "this op a composite entry of its own")
    return twin


def _scaled(arg: Any, scale: float | tuple[float, ...]) -> Any:
    if isinstance(scale, tuple):  # a list argument: one scale per element
        return [scale_gradient(a, s) for a, s in zip(arg, scale, strict=False)] + list(arg[len(scale):])
    return scale_gradient(arg, scale)


def _share(scales: Scales) -> int:
    flat = [s for entry in scales for s in (entry if isinstance(entry, tuple) else (entry,))]
    return sum(1 for s in flat if s != 1.0) or 1


def uniform(op: Callable[..., Any], *args: Any, scales: Scales = (), epsilon: float = 0.0,
            **kwargs: Any) -> Tensor:
    """GxI form: scale the gradient of positional argument ``i`` by ``scales[i]``, then run ``op``. A tuple
    ``scales[i]`` scales the elements of a list argument (``einsum(eq, [a, b])``: ``(1.0, (0.5, 0.5))``).

    ``epsilon > 0`` stabilizes the output as in the ε-rule, with the stabilizer split over the factors.
    An in-place product (``a.mul_(b)``: the op writes its first argument) runs out of place on the scaled
    operands and copies the result into ``a``, which it returns: the forward value and the aliasing the
    model expects stay exactly as they were, and the scaled views are never written."""
    in_place = writes_first_argument(op) and isinstance(args[0], Tensor)
    if in_place:
        # ``a`` is written below: every operand that shares its storage (``a`` itself, a view of it) is read
        # from a copy, so that nothing autograd saved for the backward is overwritten
        storage = args[0].untyped_storage().data_ptr()
        operands = [a.clone() if isinstance(a, Tensor) and a.untyped_storage().data_ptr() == storage else a
                    for a in args]
    else:
        operands = list(args)
    scaled = [_scaled(a, s) for a, s in zip(operands, scales, strict=False)] + operands[len(scales):]
    out = (out_of_place(op) if in_place else op)(*scaled, **kwargs)
    if epsilon:
        out = stabilize_gradient(out, epsilon / _share(scales))
    return args[0].copy_(out) if in_place else out


def _scales(carrying: Sequence[Position], product: Sequence[Position]) -> Scales:
    k = len(product)
    top = max((p[0] if isinstance(p, tuple) else p) for p in carrying)
    scales: list[float | tuple[float, ...]] = [1.0] * (top + 1)
    for p in product:
        if isinstance(p, tuple):
            i, j = p
            inner = list(scales[i]) if isinstance(scales[i], tuple) else []
            inner += [1.0] * (j + 1 - len(inner))
            inner[j] = 1.0 / k
            scales[i] = tuple(inner)
        else:
            scales[p] = 1.0 / k
    return tuple(scales)


class Uniform(Rule):
    """Uniform rule: a product of ``k`` relevance-carrying factors gives each ``1/k`` of the relevance.

    Factors may sit in a list argument (``einsum("bid,bjd->bij", q, k)`` takes ``[q, k]``;
    ``linalg_multi_dot([a, b, c])``): each of the ``k`` carrying operands gets ``1/k`` of ``R_y``
    (``einsum`` and ``multi_dot`` are linear in each operand, so Euler's theorem gives the split)."""

    name = "uniform"
    ops = frozenset({aten.mul, aten.mul_, aten.multiply, aten.matmul, aten.bmm, aten.mm, aten.einsum,
                     aten.baddbmm, aten.addmm, aten.addbmm, aten.linalg_multi_dot, aten.chain_matmul})

    def __init__(self, epsilon: float = 0.0) -> None:
        self.epsilon = epsilon

    def applies(self, carrying: Sequence[Position], op: Any = None) -> bool:
        return len(factors(op, carrying)) >= 2

    def gxi(self, op: Any, carrying: Sequence[Position]) -> tuple[Callable[..., Any], dict[str, Any]]:
        extra: dict[str, Any] = {"scales": _scales(carrying, factors(op, carrying))}
        if self.epsilon:
            extra["epsilon"] = self.epsilon
        return uniform, extra

    def explicit(self, op: Any, args: Sequence[Any], kwargs: dict[str, Any], out: Any, relevance: Any,
                 carrying: Sequence[Position]) -> Relevances:
        product = factors(op, carrying)
        if len(product) == len(carrying):
            return epsilon_explicit(op, args, kwargs, out, relevance, carrying,
                                    max(self.epsilon, 1e-12), share=len(carrying))
        # an added term: the ε-rule over the whole op, then the factors split the product's share
        result = epsilon_explicit(op, args, kwargs, out, relevance, carrying, max(self.epsilon, 1e-12))
        return relevances_like(args, {p: arg_at(result, p) / len(product) if p in product else arg_at(result, p)
                                      for p in carrying})
