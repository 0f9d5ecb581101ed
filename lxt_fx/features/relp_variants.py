"""A RelP variant for MLP outputs: AttnLRP with the plain gradient through attention.

AttnLRP's attention rule (Achtibat et al. 2024, arXiv 2402.05602) splits the relevance of
``softmax(q kᵀ) v`` over its factors — ``½`` to ``v`` and ``½`` to the pattern, which passes it on
to ``q`` and ``k`` — so the coefficient of every path through a later head is ``¼`` or ``½`` of the derivative
that a patching effect follows to first order. RelP (arXiv 2508.21258) takes AttnLRP's coefficients as they
are; :func:`attention_gradient` drops the attention rule only (the gradient through the heads), keeping the
rules of the norms, the gated products and the rest. The rule it drops is the one for the fused attention kernel
(``scaled_dot_product_attention``, the SDPA implementation); an eager attention's softmax and matmul rules stay.

Measured with ``benchmarks/circuits.py`` on SmolLM2-135M, 50 prompt pairs per task, noising direction (Pearson
with activation patching over the MLP outputs of all 30 layers; ``benchmarks/results/circuits_ablation.md``):
on IOI, where the variant was chosen, 0.835 → 0.967; on the held-out tasks capitals 0.829 → 0.939,
greater-than 0.684 → 0.848, subject–verb agreement 0.601 → 0.670. Heads move by at most 0.025 (IOI 0.982 →
0.957), the residual stream by at most 0.032 (IOI 0.964 → 0.996). On MLP outputs it passes AtP on IOI and
agreement and stays below it on capitals and greater-than (AtP: 0.917, 0.983, 0.973, 0.597). On Gemma-3-270M
(20 pairs) MLP outputs go 0.871 → 0.888 (IOI) and 0.770 → 0.916 (greater-than), heads 0.894 → 0.939 and
0.842 → 0.750. It is a patching estimate, not LRP: the relevance it implies is not conserved through attention,
so the default of every entry point stays AttnLRP.
"""

from __future__ import annotations

from typing import Any

from torch import nn
from torch._ops import ops as _ops

from ..composites.composite import Composite
from ..composites.registry import resolve_composite
from ..rules import Attention, Gradient

__all__ = ["attention_gradient"]


def attention_gradient(composite: Composite | str | None = None, model: nn.Module | None = None) -> Composite:
    """``composite`` (a :class:`Composite`, a name, or None: the one registered for ``model``, else AttnLRP)
    without its attention rule: the plain gradient through ``softmax(q kᵀ) v``, every other rule kept. Pass it
    as ``patching(..., composite=attention_gradient(model=model))`` for RelP scores of MLP outputs that follow
    activation patching more closely (see the module docstring for the measurements); ``composite`` itself is
    left as it is."""
    base = resolve_composite(composite, model)
    # the fused kernel gets the Gradient rule by name, so the rewrite reports a decision, not an unhandled op
    entries: list[tuple[Any, Any]] = [(_ops.aten.scaled_dot_product_attention, Gradient())]
    entries += [(p, r) for p, r in base.entries if not isinstance(r, Attention)]
    return Composite(entries, name=f"{base.name}, plain gradient through attention")
