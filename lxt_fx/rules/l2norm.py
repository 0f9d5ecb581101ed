"""Identity through L2 normalisation ``y = x / ‖x‖₂`` (CLIP-style embeddings, ``F.normalize``).

Formula. The norm is a normalizing scale like the ``1/rms`` of an RMSNorm, so AttnLRP's identity rule for
normalisation applies (paper Prop. 3.4; RULES.md, rows "RMSNorm / LayerNorm" and "``F.normalize``"): the
divisor ``n = ‖x‖₂`` (however it is spelled: ``(Σx²)^0.5``, ``sqrt(Σx²)``, ``linalg.vector_norm``, clamped
or not) is held constant, so ``y = x ⊙ (1/n)`` is linear in ``x`` and the ε-rule (ε → 0, Eq. 8) gives

* explicit form: ``R_x = x ⊙ (1/n) ⊙ R_y / y = R_y`` element-wise, and ``R_n = 0``;
* GxI form: run ``x / n.detach()``, so ``g_x = g_y / n`` and ``x ⊙ g_x = y ⊙ g_y``.

Relevance flows through ``x`` only (:meth:`L2Normalize.flows`): the ops that compute the norm from ``x``
(``pow``, ``sum``, ``sqrt``) are off the relevance path and need no rule. Without this rule the plain
gradient of ``x / ‖x‖`` — homogeneous of degree 0 in ``x`` — sums to zero per row (Euler), and the books
of a similarity head lose the whole score.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from torch import Tensor

from .base import Position, Relevances, Rule, relevances_like, safe_divide


def l2_normalize(op: Callable[..., Any], x: Tensor, norm: Any, *args: Any, **kwargs: Any) -> Tensor:
    """GxI form of ``op(x, norm, …)`` (``div`` / ``div_``): the exact forward with ``norm`` detached."""
    return op(x, norm.detach() if isinstance(norm, Tensor) else norm, *args, **kwargs)


def _sum_to(t: Tensor, shape: Sequence[int]) -> Tensor:
    """Sum a broadcast result back to ``shape`` (the carrier's own shape)."""
    extra = t.dim() - len(shape)
    if extra > 0:
        t = t.sum(tuple(range(extra)))
    dims = tuple(i for i, s in enumerate(shape) if s == 1 and t.shape[i] != 1)
    return t.sum(dims, keepdim=True) if dims else t


class L2Normalize(Rule):
    """Identity through ``x / ‖x‖₂``: the norm is a constant (see module docstring). Applied to the
    ``div`` node whose divisor the composite's pattern recognised as the L2 norm of its numerator."""

    name = "l2_normalize"

    def supports(self, op: Any) -> bool:
        return getattr(getattr(op, "overloadpacket", op), "__name__", "") in ("div", "div_")

    def applies(self, carrying: Sequence[Position], op: Any = None) -> bool:
        return 0 in carrying

    def flows(self, carrying: Sequence[Position], op: Any = None) -> tuple[Position, ...]:
        return (0,)

    def gxi(self, op: Any, carrying: Sequence[Position]) -> tuple[Callable[..., Any], dict[str, Any]]:
        return l2_normalize, {}

    def explicit(self, op: Any, args: Sequence[Any], kwargs: dict[str, Any], out: Any, relevance: Any,
                 carrying: Sequence[Position]) -> Relevances:
        # ε-rule with n constant: R_x = x ⊙ ∂y/∂xᵀ (R_y / y), ∂y/∂x = diag(1/n) (n broadcast over x)
        x, norm = args[0], args[1]
        share = safe_divide(relevance, out, 1e-12)
        r_x = _sum_to(x * (share / norm), x.shape)
        return relevances_like(args, {0: r_x})
