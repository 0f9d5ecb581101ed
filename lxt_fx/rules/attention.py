"""Attention as a whole (``scaled_dot_product_attention``: eager math, SDPA, flash — the kernel stays fused).

AttnLRP composes three rules: bilinear ``QKᵀ`` (uniform, Prop. 3.3), softmax (deep Taylor, Prop. 3.1) and
bilinear ``A·V`` (uniform). In GxI form that is the plain gradient scaled by ¼ on q, ¼ on k and ½ on v at
the kernel's inputs. CP-LRP (``through_weights=False``) treats the attention weights as constants:
q and k get no gradient and ``A·V`` is linear in ``V``.

Explicit form: the kernel is decomposed (scores, mask, softmax, ``A·V``) and each part gets its explicit
rule — used as the reference for the fused GxI form.

A captured graph passes SDPA an explicit boolean mask even when it is plain causal (the exporter traces the
general masking path, while the eager model would call the kernel with ``is_causal=True``). The GxI form
checks that at run time and then calls the kernel causally: the same values without turning an L×L mask
into an additive float mask in forward and backward.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor
from torch._ops import ops as _ops

from .base import Relevances, Rule, epsilon_explicit, safe_divide
from .softmax import softmax_explicit
from .uniform import uniform

aten = _ops.aten

_SDPA_NAMES = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal")


def attention_scales(carrying: Sequence[int], through_weights: bool) -> tuple[float, float, float]:
    """Gradient factors for (q, k, v) given which of them carry relevance."""
    q, k, v = (i in carrying for i in range(3))
    if not through_weights:
        return 0.0, 0.0, 1.0
    weights_carry = q or k
    v_scale = 0.5 if (weights_carry and v) else 1.0
    a_scale = 0.5 if (weights_carry and v) else 1.0
    qk = 0.5 if (q and k) else 1.0
    return a_scale * qk, a_scale * qk, v_scale


# The mask checked last and the answer: one mask tensor is shared by every layer of a forward pass, so it is
# compared with the causal mask once per pass, not once per layer. [weakref to it, its version, answer]
# An inference tensor (made under torch.inference_mode) has no version counter and cannot be written
# outside inference mode; inside it, it can, unseen: it is checked every time and never memoized.
_LAST_CHECK: list[Any] = [None, -1, False]


def _equals_causal(mask: Tensor, n: int) -> bool:
    return torch.equal(mask, torch.ones(n, n, dtype=torch.bool, device=mask.device).tril().expand_as(mask))


def _is_causal_mask(mask: Any, q: Tensor, k: Tensor) -> bool:
    """Whether ``mask`` is a boolean mask equal to the lower-triangular causal mask for q and k."""
    n = q.size(-2)
    if (not isinstance(mask, Tensor) or mask.dtype != torch.bool or k.size(-2) != n or mask.dim() < 2
            or mask.shape[-2:] != (n, n)):
        return False
    if mask.is_inference():
        return _equals_causal(mask, n)
    ref, version, answer = _LAST_CHECK
    if ref is not None and ref() is mask and version == mask._version:
        return answer
    answer = _equals_causal(mask, n)
    _LAST_CHECK[:] = [weakref.ref(mask), mask._version, answer]
    return answer


def attention(op: Callable[..., Any], *args: Any, scales: Sequence[float] = (), **kwargs: Any) -> Tensor:
    """GxI form: the fused kernel with the gradient of q, k, v scaled by ``scales``; a boolean mask that
    is exactly causal is replaced by ``is_causal=True``."""
    named = _sdpa_args(args, kwargs)
    if (not named.get("is_causal") and not named.get("dropout_p")
            and _is_causal_mask(named.get("attn_mask"), named["query"], named["key"])):
        rest = {k: v for k, v in named.items() if k not in ("query", "key", "value", "attn_mask", "is_causal")}
        return uniform(op, named["query"], named["key"], named["value"], scales=scales, is_causal=True, **rest)
    return uniform(op, *args, scales=scales, **kwargs)


def _sdpa_args(args: Sequence[Any], kwargs: dict[str, Any]) -> dict[str, Any]:
    named = dict(zip(_SDPA_NAMES, args, strict=False))
    named.update(kwargs)
    return named


def attention_explicit(args: Sequence[Any], kwargs: dict[str, Any], out: Tensor, relevance: Tensor,
                       carrying: Sequence[int], through_weights: bool, epsilon: float = 1e-12) -> Relevances:
    """Explicit AttnLRP (or CP-LRP) relevance of q, k, v for one SDPA call, by decomposition."""
    a = _sdpa_args(args, kwargs)
    q, k, v = a["query"], a["key"], a["value"]
    scale = a.get("scale") or 1.0 / math.sqrt(q.size(-1))
    groups = q.size(-3) // k.size(-3)

    def rep(t: Tensor) -> Tensor:
        return t.repeat_interleave(groups, dim=-3) if groups > 1 else t

    def scores_fn(q_: Tensor, k_: Tensor) -> Tensor:
        return (q_ @ rep(k_).transpose(-2, -1)) * scale

    scores = scores_fn(q, k)
    bias = torch.zeros_like(scores)
    if a.get("is_causal"):
        causal = torch.ones(scores.shape[-2:], dtype=torch.bool, device=q.device).tril()
        bias = bias.masked_fill(~causal, float("-inf"))
    mask = a.get("attn_mask")
    if mask is not None:
        bias = bias.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else bias + mask
    z = scores + bias
    weights = torch.softmax(z.to(torch.promote_types(z.dtype, torch.float32)), dim=-1).to(q.dtype)
    weights = torch.nan_to_num(weights, nan=0.0)  # rows with every key masked attend to nothing

    qk_carry = [i for i in (0, 1) if i in carrying] if through_weights else []
    av_carry = ([0] if qk_carry else []) + ([1] if 2 in carrying else [])
    r_av = epsilon_explicit(lambda w, v_: w @ rep(v_), [weights, v], {}, out, relevance, av_carry,
                            epsilon, share=len(av_carry))
    result: Relevances = [None] * len(args)
    if 2 in carrying:
        result[2] = r_av[1]
    if qk_carry:
        r_z = softmax_explicit(z, weights, r_av[0], -1)
        r_scores = torch.where(torch.isinf(z), 0.0, scores * safe_divide(r_z, z, epsilon))
        r_qk = epsilon_explicit(scores_fn, [q, k], {}, scores, r_scores, qk_carry, epsilon, share=len(qk_carry))
        for i in qk_carry:
            result[i] = r_qk[i]
    return result


class Attention(Rule):
    """AttnLRP (``through_weights=True``) or CP-LRP (``False``) for a fused attention kernel."""

    name = "attention"
    ops = frozenset({aten.scaled_dot_product_attention})

    def __init__(self, through_weights: bool = True) -> None:
        self.through_weights = through_weights

    def gxi(self, op: Any, carrying: Sequence[int]) -> tuple[Callable[..., Any], dict[str, Any]]:
        return attention, {"scales": attention_scales(carrying, self.through_weights)}

    def explicit(self, op: Any, args: Sequence[Any], kwargs: dict[str, Any], out: Any, relevance: Any,
                 carrying: Sequence[int]) -> Relevances:
        return attention_explicit(args, kwargs, out, relevance, carrying, self.through_weights)
