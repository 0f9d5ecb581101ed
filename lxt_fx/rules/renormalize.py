"""Renormalization rule: identity through ``y = x / s(x)`` where ``s`` is a sum (or norm) of ``x`` itself —
the top-k routing weights of an MoE router, ``ŵ = w / Σ_top-k w`` (Mixtral; Qwen3-MoE with
``norm_topk_prob=True``).

Formula. The divisor is a normalizing constant, as the normalizing scale of a norm layer is (paper Prop.
3.4): explicit form ``R_x = x ⊙ (1/s) ⊙ R_y / y = R_y`` and ``R_s = 0``; GxI form: run the op with ``s``
detached, so ``g_x = g_y / s`` and ``x ⊙ g_x = y ⊙ g_y`` element-wise.

Why this choice, and not the plain gradient. ``w / Σw`` is homogeneous of degree 0 in ``w``, so
Gradient×Input through it sums to zero for every output (Euler: ``Σ_i w_i ∂ŵ_j/∂w_i = 0``): the relevance
that the uniform rule sends into the routing weight (half of each ``ŵ_j · expert_j(x)`` product, paper
Prop. 3.2; RULES.md: "routing weight × expert output is a two-tensor product → ÷2") would vanish there, and
the books of a Mixtral layer would not close. LXT's own MoE code keeps the plain gradient through the router
(its Qwen3-MoE patch only halves the gradient at the weight × expert product; its explicit Mixtral model puts
the ε-rule — the same Jacobian — on the renormalization) and so loses that half. Of the two choices that
conserve, stopping relevance into the routing weights (CP-LRP's choice: the expert output takes it all)
would drop the paper's uniform split; the identity through the renormalization keeps the split, passes the
routing weights' relevance on through top-k (a selection) to the router's softmax (deep Taylor, whose bias
term the bookkeeping books as ``softmax``) and conserves otherwise.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from torch import Tensor

from .base import Position, Relevances, Rule, epsilon_explicit, relevances_like


def renormalize(op: Callable[..., Any], x: Tensor, *args: Any, **kwargs: Any) -> Tensor:
    """GxI form of ``op(x, s, …)`` (``div`` / ``div_``) with every tensor besides ``x`` detached."""
    rest = [a.detach() if isinstance(a, Tensor) else a for a in args]
    return op(x, *rest, **kwargs)


class Renormalize(Rule):
    """Identity through a renormalization ``x / s(x)``: the divisor is a constant (see module docstring)."""

    name = "renormalize"

    def applies(self, carrying: Sequence[Position], op: Any = None) -> bool:
        return 0 in carrying

    def gxi(self, op: Any, carrying: Sequence[Position]) -> tuple[Callable[..., Any], dict[str, Any]]:
        return renormalize, {}

    def explicit(self, op: Any, args: Sequence[Any], kwargs: dict[str, Any], out: Any, relevance: Any,
                 carrying: Sequence[Position]) -> Relevances:
        # ε-rule with the divisor a constant: R_x = x ⊙ Jᵀ(R_y / y) with J = diag(1/s) (summed over any
        # broadcast dims); nothing flows into s
        r_x = epsilon_explicit(op, args, kwargs, out, relevance, (0,), 1e-12)[0]
        return relevances_like(args, {0: r_x})
