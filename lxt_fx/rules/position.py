"""Position-aware LRP (PA-LRP): relevance for positional encodings, so that the input space is the set of
position–token pairs (Bakish, Zimerman, Chefer & Wolf, "Revisiting LRP: Positional Attribution as the
Missing Ingredient for Transformer Explainability", arXiv 2506.02138, NeurIPS 2025).

Plain AttnLRP treats a positional encoding as a constant: an added position embedding absorbs its share of
the relevance like a bias, and a rotary table (RoPE) is a constant factor of a linear map, so all relevance
of a rotated query or key goes to the token. PA-LRP makes the encoding an input of its own:

* **additive encodings** (learned, sinusoidal / absolute: GPT-2, BERT, ViT, DINOv2, CLIP, Whisper), the
  paper's Eq. 5 — the ε-rule on the sum ``z_i = E_i + P_i`` of token (or patch) embedding and position
  embedding, :class:`AdditivePosition`;
* **rotary encodings** (LLaMA, Mixtral, Qwen2-VL's M-RoPE), the paper's Eq. 7–10 — the rotation
  ``q̃_i = R_{Θ,i} q_i = q_i ⊙ cos_i + rot(q_i) ⊙ sin_i`` is bilinear in the token's query (key) and the
  position's table, so the uniform rule for a product of two relevance-carrying factors (AttnLRP Prop. 3.2,
  the paper's Lemma 3.2) gives half of ``R(q̃_i)`` to the position and half to the token:
  ``R(R_{Θ,i}) = ½ R(q̃_i) + ½ R(k̃_i)`` (Eq. 10), :class:`RotaryPosition`;
* the **aggregation** per position (Eq. 11): the relevance of position ``i`` is the sum of its table's
  relevance over features (and over heads, layers, queries and keys for RoPE),
  :func:`position_relevance`.

Which parts are written from the paper and which are derived here: the paper's text available to us (its
abstract, and equation numbers and formulas quoted by a third-party reimplementation — no PDF) gives Eq. 5
(the ε split of an additive encoding), Eq. 10 (½ of the rotated query's and key's relevance to the rotary
table, by Lemma 3.2's uniform split), and Eq. 11 (the map per token: its embedding's relevance plus its
position's, over features and layers, quoted with positive parts, ``R_i = Σ_d E_i[d]⁺ + Σ_k Σ_d P_{i,k}[d]⁺``).
The authors' code splits RoPE's ``q ⊙ cos + rot(q) ⊙ sin`` with the ε-rule over the two summands and the
uniform rule in each product, which is the rule below. Derived here, not from the paper: (1) Eq. 11's sum is
kept signed, so that the books close (positive parts, or the ``|·|`` of each layer's map that the authors'
demo adds after normalizing it, do not conserve; a user can clamp the signed maps); (2) a sinusoidal table
(Whisper) takes Eq. 5 like a learned one — both are tensors added to the token embeddings; (3) M-RoPE is
RoPE with a position id per section, so Eq. 10 applies to its tables unchanged; (4) BERT's token-type table
is read like a position table (Eq. 5) but reported apart, as ``token_types``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from torch import Tensor
from torch._ops import ops as _ops

from .base import Position, Relevances, Rule, epsilon_explicit, stabilize_gradient
from .uniform import Uniform

aten = _ops.aten

# The axis of a positional table that indexes positions: the one before the feature axis, for an added
# embedding ``[batch, seq, d]`` as for a rotary table broadcast to ``[batch, heads, seq, head_dim]``.
POSITION_AXIS = -2


def additive_position(op: Callable[..., Any], *args: Any, epsilon: float = 0.0, **kwargs: Any) -> Tensor:
    """GxI form of Eq. 5: the sum itself; its gradient reaches token and position embedding alike, so
    ``R(E) = E ⊙ g`` and ``R(P) = P ⊙ g`` (ε → 0); ``epsilon > 0`` stabilizes as the ε-rule."""
    return stabilize_gradient(op(*args, **kwargs), epsilon) if epsilon else op(*args, **kwargs)


class AdditivePosition(Rule):
    """PA-LRP for an additive positional encoding (Bakish et al. 2025, Eq. 5).

    For ``z_i = E_i + P_i`` (token / patch embedding ``E``, learned or sinusoidal position embedding ``P``)::

        R(E_i) = E_i ⊙ R(z_i) / (z_i + ε·sign(z_i)),    R(P_i) = P_i ⊙ R(z_i) / (z_i + ε·sign(z_i))

    the ε-rule for a sum (AttnLRP Eq. 8 with the identity as weight), so ``R(E_i) + R(P_i) = R(z_i)`` as
    ε → 0. What changes against plain AttnLRP is not the formula but that ``P`` is an input whose relevance
    is read (:func:`position_relevance`) instead of a constant that absorbs it."""

    name = "pa_additive"
    ops = frozenset({aten.add, aten.add_})

    def __init__(self, epsilon: float = 0.0) -> None:
        self.epsilon = epsilon

    def applies(self, carrying: Sequence[Position], op: Any = None) -> bool:
        return len(carrying) == 2

    def gxi(self, op: Any, carrying: Sequence[Position]) -> tuple[Callable[..., Any], dict[str, Any]]:
        return additive_position, ({"epsilon": self.epsilon} if self.epsilon else {})

    def explicit(self, op: Any, args: Sequence[Any], kwargs: dict[str, Any], out: Any, relevance: Any,
                 carrying: Sequence[Position]) -> Relevances:
        return epsilon_explicit(op, args, kwargs, out, relevance, carrying, max(self.epsilon, 1e-12))


class RotaryPosition(Uniform):
    """PA-LRP for a rotary positional encoding (Bakish et al. 2025, Eq. 7–10; AttnLRP Prop. 3.2).

    RoPE rotates each query and key by its position, ``q̃_i = q_i ⊙ cos_i + rot(q_i) ⊙ sin_i`` (``rot``
    swaps and negates the two halves of the head dimension: a linear map). Each product of a token factor
    and a positional table gets the uniform rule::

        R(q_i ⊙ cos_i) → ½ to q_i,  ½ to cos_i;      R(rot(q_i) ⊙ sin_i) → ½ to rot(q_i),  ½ to sin_i

    after the ε-rule split the sum over its two products (plain gradient, ε → 0). The table of position
    ``i`` so receives ``½ R(q̃_i)`` from the query and ``½ R(k̃_i)`` from the key (Eq. 10), and the token
    the other half. GxI: the gradient of each factor halved."""

    name = "pa_rotary"
    ops = frozenset({aten.mul, aten.mul_, aten.multiply})


def position_relevance(table: Tensor, grad: Tensor | None) -> Tensor:
    """Eq. 11's positional term for one table: ``R_i = Σ (P ⊙ ∂f/∂P)`` over every axis but the batch (0) and
    the position axis (:data:`POSITION_AXIS`): ``[batch, positions]``, signed (so that, added to the token
    relevance, the books close)."""
    if grad is None:
        return table.new_zeros(table.shape[0], table.shape[POSITION_AXIS]).float()
    return per_position(table.detach().float() * grad.float())


def per_position(relevance: Tensor) -> Tensor:
    """A table's relevance ``[batch, …, positions, features]`` summed to ``[batch, positions]``."""
    axes = [a for a in range(relevance.dim()) if a not in (0, relevance.dim() + POSITION_AXIS)]
    return relevance.sum(axes) if axes else relevance
