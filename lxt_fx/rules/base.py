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

Relevances = list[Tensor | None]


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


def vjp(op: Callable[..., Any], args: Sequence[Any], kwargs: dict[str, Any], wrt: Sequence[int],
        grad_out: Tensor | Sequence[Tensor | None]) -> list[Tensor]:
    """Vector-Jacobian product of ``op`` w.r.t. the positional args ``wrt`` (fresh leaves, no side effects)."""
    leaves = [a.detach().requires_grad_(True) if i in wrt else a for i, a in enumerate(args)]
    with torch.enable_grad():
        # in-place ops (``div_``) may not write into a leaf: hand them a non-leaf copy
        out = op(*[a.clone() if i in wrt else a for i, a in enumerate(leaves)], **kwargs)
        outs = list(out) if isinstance(out, (tuple, list)) else [out]
        grads = list(grad_out) if isinstance(grad_out, (tuple, list)) else [grad_out]
        pairs = [(o, g) for o, g in zip(outs, grads, strict=False)
                 if g is not None and isinstance(o, Tensor) and o.requires_grad]
        inputs = [leaves[i] for i in wrt]
        if not pairs:
            return [torch.zeros_like(x) for x in inputs]
        got = torch.autograd.grad([o for o, _ in pairs], inputs, [g for _, g in pairs], allow_unused=True)
    return [torch.zeros_like(x) if g is None else g for x, g in zip(inputs, got, strict=True)]


def epsilon_explicit(op: Callable[..., Any], args: Sequence[Any], kwargs: dict[str, Any], out: Any,
                     relevance: Any, carrying: Sequence[int], epsilon: float, share: int = 1) -> Relevances:
    """Explicit ε-LRP through any op that is linear in each carrying input:
    ``R_i = x_i ⊙ J_iᵀ (R_y / (share·y + ε·sign(y)))`` (paper Eq. 8; ``share = k`` gives the uniform rule
    for a product of ``k`` relevance-carrying factors, Prop. 3.2 / 3.3)."""
    outs = list(out) if isinstance(out, (tuple, list)) else [out]
    rels = list(relevance) if isinstance(relevance, (tuple, list)) else [relevance]
    normalized = [None if r is None or not isinstance(o, Tensor) or not o.is_floating_point()
                  else safe_divide(r, share * o, epsilon) for o, r in zip(outs, rels, strict=False)]
    grads = vjp(op, args, kwargs, carrying, normalized if isinstance(out, (tuple, list)) else normalized[0])
    result: Relevances = [None] * len(args)
    for i, g in zip(carrying, grads, strict=True):
        result[i] = args[i] * g
    return result


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

    def applies(self, carrying: Sequence[int], op: Any = None) -> bool:
        """Whether the rule is meant for a node of ``op`` with these relevance-carrying inputs (default:
        any)."""
        return len(carrying) > 0

    def gxi(self, op: Any, carrying: Sequence[int]) -> tuple[Callable[..., Any], dict[str, Any]]:
        """Replacement for ``op(*args, **kwargs)``: call as ``fn(op, *args, **kwargs, **extra)``."""
        raise NotImplementedError

    def explicit(self, op: Any, args: Sequence[Any], kwargs: dict[str, Any], out: Any, relevance: Any,
                 carrying: Sequence[int]) -> Relevances:
        """Relevance of each positional argument (``None`` where none flows), given ``R_y``."""
        raise NotImplementedError

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({params})"

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and vars(self) == vars(other)

    def __hash__(self) -> int:
        return hash((type(self), tuple(sorted(vars(self).items()))))
