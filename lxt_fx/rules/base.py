"""The small base every rule builds on.

A rule decides how relevance flows through one graph op. It has two forms that must agree:

* the **GxI form** (production): a drop-in replacement for the op whose *backward* returns a modified
  gradient, so that relevance ``R = activation ⊙ gradient`` holds at every tensor of the graph after one
  ordinary backward pass seeded with 1 on the explained output (Arras et al. 2025, arXiv 2502.15886);
* the **explicit form** (reference): a function that receives the output relevance ``R_y`` and returns the
  relevance of each input, written as the paper writes it. It is slow and used to check the GxI form.

Rules import nothing of lxt-fx but this module.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

# Per positional argument: its relevance, ``None`` where none flows, or a list for a list argument.
Relevances = list[Tensor | list[Tensor | None] | None]


def stabilize(z: Tensor, epsilon: float) -> Tensor:
    """Sign-aware stabilizer ``z + ε·sign(z)`` with ``sign(0) = 1``, so it never crosses zero."""
    return z + epsilon * torch.where(z >= 0, 1.0, -1.0).to(z.dtype)


def safe_divide(numerator: Tensor, denominator: Tensor, epsilon: float) -> Tensor:
    """``numerator / stabilize(denominator)``, computed in at least float32."""
    dtype = torch.promote_types(denominator.dtype, torch.float32)
    return (numerator.to(dtype) / stabilize(denominator.to(dtype), epsilon)).to(numerator.dtype)


class ScaleGradient(torch.autograd.Function):
    """Identity in the forward pass; multiplies the gradient by a constant in the backward pass."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, factor: float) -> Tensor:
        ctx.factor = factor
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        return grad * ctx.factor, None


class StabilizeGradient(torch.autograd.Function):
    """Identity forward; backward ``g ⊙ y / (y + ε·sign(y))`` — turns a plain linear gradient into ε-LRP."""

    @staticmethod
    def forward(ctx: Any, y: Tensor, epsilon: float) -> Tensor:
        ctx.epsilon = epsilon
        ctx.save_for_backward(y)
        return y.view_as(y)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        (y,) = ctx.saved_tensors
        return grad * safe_divide(y, y, ctx.epsilon), None


def scale_gradient(x: Tensor, factor: float) -> Tensor:
    """Return ``x`` whose gradient is multiplied by ``factor`` (no-op for ``factor == 1``)."""
    if factor == 1.0 or not isinstance(x, Tensor) or not x.requires_grad:
        return x
    return ScaleGradient.apply(x, factor)


def stabilize_gradient(y: Tensor, epsilon: float) -> Tensor:
    """Return ``y`` whose gradient is ``g ⊙ y / (y + ε·sign(y))`` (no-op for ``ε == 0``)."""
    if epsilon == 0.0 or not y.requires_grad:
        return y
    return StabilizeGradient.apply(y, epsilon)


def tensor_positions(args: Sequence[Any]) -> list[int]:
    """Indices of the positional arguments that are floating-point tensors."""
    return [i for i, a in enumerate(args) if isinstance(a, Tensor) and a.is_floating_point()]


# Where a tensor sits among an op's positional arguments: ``i`` is ``args[i]`` itself, ``(i, j)`` is
# element ``j`` of a list or tuple argument ``args[i]`` (``einsum(equation, [a, b])``, ``cat([a, b])``).
Position = int | tuple[int, int]


def arg_at(args: Sequence[Any], position: Position) -> Any:
    """The argument at ``position`` (see :data:`Position`)."""
    if isinstance(position, tuple):
        i, j = position
        return args[i][j]
    return args[position]


def replace_at(args: Sequence[Any], values: dict[Position, Any]) -> list[Any]:
    """A copy of ``args`` (list arguments copied too) with the arguments at the given positions replaced."""
    out = list(args)
    for position, value in values.items():
        if isinstance(position, tuple):
            i, j = position
            inner = list(out[i])
            inner[j] = value
            out[i] = inner
        else:
            out[position] = value
    return out


def relevances_like(args: Sequence[Any], values: dict[Position, Tensor | None]) -> Relevances:
    """Relevances shaped like ``args``: ``None`` where nothing flows, a list for a list argument that holds
    a relevance-carrying element (read one back with :func:`arg_at`)."""
    result: list[Any] = [None] * len(args)
    for position, value in values.items():
        if isinstance(position, tuple):
            i, j = position
            if result[i] is None:
                result[i] = [None] * len(args[i])
            result[i][j] = value
        else:
            result[position] = value
    return result


def vjp(op: Callable[..., Any], args: Sequence[Any], kwargs: dict[str, Any], wrt: Sequence[Position],
        grad_out: Tensor | Sequence[Tensor | None]) -> list[Tensor]:
    """Vector-Jacobian product of ``op`` w.r.t. the arguments at positions ``wrt`` (an index, or
    ``(index, element)`` inside a list argument; fresh leaves, no side effects)."""
    leaves = {p: arg_at(args, p).detach().requires_grad_(True) for p in wrt}
    with torch.enable_grad():
        # in-place ops (``div_``, ``mul_``) may not write into a leaf: hand them a non-leaf copy
        out = op(*replace_at(args, {p: leaf.clone() for p, leaf in leaves.items()}), **kwargs)
        outs = list(out) if isinstance(out, (tuple, list)) else [out]
        grads = list(grad_out) if isinstance(grad_out, (tuple, list)) else [grad_out]
        pairs = [(o, g) for o, g in zip(outs, grads, strict=False)
                 if g is not None and isinstance(o, Tensor) and o.requires_grad]
        inputs = [leaves[p] for p in wrt]
        if not pairs:
            return [torch.zeros_like(x) for x in inputs]
        got = torch.autograd.grad([o for o, _ in pairs], inputs, [g for _, g in pairs], allow_unused=True)
    return [torch.zeros_like(x) if g is None else g for x, g in zip(inputs, got, strict=True)]


def epsilon_explicit(op: Callable[..., Any], args: Sequence[Any], kwargs: dict[str, Any], out: Any,
                     relevance: Any, carrying: Sequence[Position], epsilon: float, share: int = 1) -> Relevances:
    """Explicit ε-LRP through any op that is linear in each carrying input:
    ``R_i = x_i ⊙ J_iᵀ (R_y / (share·y + ε·sign(y)))`` (paper Eq. 8; ``share = k`` gives the uniform rule
    for a product of ``k`` relevance-carrying factors, Prop. 3.2 / 3.3). ``carrying`` may name elements of
    list arguments (``(i, j)``); the result is then shaped like ``args`` (see :func:`relevances_like`)."""
    outs = list(out) if isinstance(out, (tuple, list)) else [out]
    rels = list(relevance) if isinstance(relevance, (tuple, list)) else [relevance]
    normalized = [None if r is None or not isinstance(o, Tensor) or not o.is_floating_point()
                  else safe_divide(r, share * o, epsilon) for o, r in zip(outs, rels, strict=False)]
    grads = vjp(op, args, kwargs, carrying, normalized if isinstance(out, (tuple, list)) else normalized[0])
    return relevances_like(args, {p: arg_at(args, p) * g for p, g in zip(carrying, grads, strict=True)})


class Rule:
    """Base class of every rule.

    Subclasses set ``name`` and ``ops`` (the ATen overload packets the rule knows) and implement
    :meth:`gxi` (returns the replacement callable and extra keyword arguments for one graph node) and
    :meth:`explicit`. ``stops`` is true for rules whose output carries no relevance; ``region`` for rules
    that replace a whole module region (see :mod:`.region`).
    """

    name: str = "rule"
    ops: frozenset[Any] = frozenset()
    stops: bool = False
    region: bool = False  # applies to a whole module region (one input, one output), not to one node

    def supports(self, op: Any) -> bool:
        """Whether this rule knows ``op`` (an ATen overload or overload packet)."""
        return not self.ops or getattr(op, "overloadpacket", op) in self.ops

    def applies(self, carrying: Sequence[Position], op: Any = None) -> bool:
        """Whether the rule is meant for a node of ``op`` with these relevance-carrying inputs (default:
        any). A position is an argument index, or ``(index, element)`` inside a list argument."""
        return len(carrying) > 0

    def flows(self, carrying: Sequence[Position], op: Any = None) -> tuple[Position, ...]:
        """The carrying positions relevance flows back into (default: all of them). A rule that holds an
        input constant (the divisor of :class:`~.l2norm.L2Normalize`) leaves it out, so what computes that
        input is off the relevance path."""
        return tuple(carrying)

    def gxi(self, op: Any, carrying: Sequence[Position]) -> tuple[Callable[..., Any], dict[str, Any]]:
        """Replacement for ``op(*args, **kwargs)``: call as ``fn(op, *args, **kwargs, **extra)``."""
        raise NotImplementedError

    def explicit(self, op: Any, args: Sequence[Any], kwargs: dict[str, Any], out: Any, relevance: Any,
                 carrying: Sequence[Position]) -> Relevances:
        """Relevance of each positional argument (``None`` where none flows; a list for a list argument),
        given ``R_y``."""
        raise NotImplementedError

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({params})"

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and vars(self) == vars(other)

    def __hash__(self) -> int:
        return hash((type(self), tuple(sorted(vars(self).items()))))
