"""Drop-in AttnLRP functions for people who edit their own model source.

Each function computes exactly the forward of the torch function it replaces; only its backward differs,
so that after one ordinary backward pass (seeded with 1, or any ``g``, on the explained output) the
relevance of every tensor ``x`` of the graph is ``x ⊙ x.grad`` (the Gradient×Input form of LRP, Arras et
al. 2025). Every function is a thin call of a rule's GxI form in :mod:`lxt_fx.rules`; the formulas below
are the rules' explicit forms, with ``R_y`` the relevance of the output.

Linear maps with constant weights (``F.linear`` with ε → 0, ``+`` of a tensor and a constant, reshapes,
indexing, scaling by a constant, embedding lookup) need no replacement: their plain gradient already is
ε-LRP with ε → 0.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor
from torch._ops import ops as _ops
from torch.nn import functional as F

from .rules.attention import attention_scales
from .rules.epsilon import epsilon as _epsilon
from .rules.identity import identity as _identity
from .rules.norm import norm_identity as _norm_identity
from .rules.softmax import softmax_dt as _softmax_dt
from .rules.stop import stop as _stop
from .rules.uniform import uniform as _uniform

aten = _ops.aten

__all__ = ["activation_identity", "add2", "gelu", "layer_norm_identity", "linear_epsilon", "matmul", "mul2",
           "relu", "rms_norm_identity", "scaled_dot_product_attention", "silu", "softmax", "stop", "tanh"]


def softmax(x: Tensor, dim: int = -1, dtype: torch.dtype | None = None) -> Tensor:
    """Softmax with the deep-Taylor rule (AttnLRP Prop. 3.1), ``s = softmax(x)`` along ``dim``:

    ``R_x = x ⊙ (R_y − s · Σ_dim R_y)``; masked logits (``−inf``, ``finfo.min``, where ``s = 0``) get 0.

    The plain gradient already is this rule, so this is ``torch.softmax`` kept as a named rule call.
    """
    return _softmax_dt(aten.softmax.int, x, dim, dtype)


def matmul(a: Tensor, b: Tensor, epsilon: float = 0.0) -> Tensor:
    """``a @ b`` of two relevance-carrying tensors (``QKᵀ``, ``softmax · V``): ε + uniform rule (Prop. 3.3).

    ``N = R_y / (2y + ε·sign(y))``, ``R_a = (N bᵀ) ⊙ a``, ``R_b = (aᵀ N) ⊙ b`` — each operand gets half.
    GxI form: the plain gradient of each operand, halved. For a constant operand use ``torch.matmul``.
    """
    return _uniform(aten.matmul.default, a, b, scales=(0.5, 0.5), epsilon=epsilon)


def mul2(a: Tensor, b: Tensor) -> Tensor:
    """``a * b`` of two relevance-carrying tensors (gate · up, routing weight × expert output):
    uniform rule (Prop. 3.2), ``R_a = R_b = R_y / 2`` (summed over broadcast dimensions).

    GxI form: ``g_a = g_y ⊙ b / 2``, ``g_b = g_y ⊙ a / 2``. For a constant factor use ``*``.
    """
    return _uniform(aten.mul.Tensor, a, b, scales=(0.5, 0.5))


def add2(a: Tensor, b: Tensor, epsilon: float = 1e-6) -> Tensor:
    """``a + b`` of two relevance-carrying tensors (a residual connection) with the ε-rule (Eq. 8):

    ``R_a = a ⊙ R_y / (y + ε·sign(y))``, ``R_b = b ⊙ R_y / (y + ε·sign(y))``, ``sign(0) = 1``.
    """
    return _epsilon(aten.add.Tensor, a, b, epsilon=epsilon)


def linear_epsilon(x: Tensor, weight: Tensor, bias: Tensor | None = None, epsilon: float = 1e-6) -> Tensor:
    """``F.linear(x, weight, bias)`` with the ε-rule (Eq. 8):

    ``R_x = x ⊙ Wᵀ (R_y / (y + ε·sign(y)))``, ``sign(0) = 1``; the bias absorbs its share.
    """
    return _epsilon(aten.linear.default, x, weight, bias, epsilon=epsilon)


def rms_norm_identity(x: Tensor, weight: Tensor | None = None, eps: float | None = None,
                      normalized_shape: Sequence[int] | None = None) -> Tensor:
    """``F.rms_norm`` with the identity rule through the normalizing scale (Prop. 3.4): ``R_x = R_y``.

    ``y = x · r · w`` with ``r = 1/√(mean(x²) + eps)`` treated as a constant. ``normalized_shape``
    defaults to ``weight.shape``, or to the last dimension when there is no weight.
    """
    if normalized_shape is None:
        normalized_shape = weight.shape if weight is not None else (x.shape[-1],)
    return _norm_identity(aten.rms_norm.default, x, list(normalized_shape), weight, eps)


def layer_norm_identity(x: Tensor, normalized_shape: Sequence[int], weight: Tensor | None = None,
                        bias: Tensor | None = None, eps: float = 1e-5) -> Tensor:
    """``F.layer_norm`` with the identity rule through the normalizing scale (Prop. 3.4) and the ε-rule
    (ε → 0) on the centring: for ``y = (x − μ) · r · w + b`` with ``r = 1/std`` treated as a constant,

    ``R_x = x ⊙ C(r · w · R_y / y)`` with ``C(v) = v − mean(v)`` over the normalized dimensions.
    """
    return _norm_identity(aten.layer_norm.default, x, list(normalized_shape), weight, bias, eps)


def silu(x: Tensor) -> Tensor:
    """SiLU with the identity rule (Eq. 9): ``R_x = R_y``; GxI ``g_x = g_y ⊙ σ(x)``."""
    return _identity(aten.silu.default, x)


def gelu(x: Tensor, approximate: str = "none") -> Tensor:
    """GELU with the identity rule (Eq. 9): ``R_x = R_y``; GxI ``g_x = g_y ⊙ Φ(x)`` (exact GELU) or
    ``g_y ⊙ ½(1 + tanh(√(2/π)(x + 0.044715x³)))`` (``approximate='tanh'``)."""
    return _identity(aten.gelu.default, x, approximate=approximate)


def relu(x: Tensor) -> Tensor:
    """ReLU with the identity rule (Eq. 9): ``R_x = R_y``; GxI ``g_x = g_y ⊙ step(x)``."""
    return _identity(aten.relu.default, x)


def tanh(x: Tensor) -> Tensor:
    """tanh with the identity rule (Eq. 9): ``R_x = R_y``; GxI ``g_x = g_y ⊙ tanh(x)/x`` (→ 1 at 0)."""
    return _identity(aten.tanh.default, x)


# Python-level activations with an ATen op whose ratio f(x)/x the identity rule knows in closed form.
_ATEN_OF: dict[Callable[..., Any], Any] = {
    F.silu: aten.silu.default, F.gelu: aten.gelu.default, F.relu: aten.relu.default,
    torch.relu: aten.relu.default, torch.tanh: aten.tanh.default, F.tanh: aten.tanh.default,
    F.leaky_relu: aten.leaky_relu.default,
}


def activation_identity(fn: Callable[..., Tensor], x: Tensor, *args: Any, epsilon: float = 1e-6,
                        **kwargs: Any) -> Tensor:
    """Any element-wise ``fn(x, *args, **kwargs)`` with the identity rule (Eq. 9): ``R_x = R_y``.

    GxI ``g_x = g_y ⊙ f(x)/x``: in closed form for SiLU, GELU, ReLU, leaky ReLU and tanh; otherwise
    ``f(x) / (x + ε·sign(x))`` (the rule is singular at ``x = 0`` when ``f(0) ≠ 0``; ε bounds it).
    """
    return _identity(_ATEN_OF.get(fn, fn), x, *args, epsilon=epsilon, **kwargs)


def scaled_dot_product_attention(query: Tensor, key: Tensor, value: Tensor, attn_mask: Tensor | None = None,
                                 is_causal: bool = False, scale: float | None = None,
                                 enable_gqa: bool = False, through_weights: bool = True) -> Tensor:
    """``F.scaled_dot_product_attention`` (no dropout) with AttnLRP, the kernel left fused.

    AttnLRP (``through_weights=True``) composes uniform on ``QKᵀ``, deep-Taylor softmax and uniform on
    ``A·V``; in GxI form the plain gradient is scaled by ¼ on q, ¼ on k and ½ on v. CP-LRP
    (``through_weights=False``) treats the attention weights as constants: ``R_q = R_k = 0`` and
    ``R_v = v ⊙ Aᵀ (R_y / y)``.
    """
    scales = attention_scales((0, 1, 2), through_weights)
    return _uniform(aten.scaled_dot_product_attention.default, query, key, value, attn_mask, 0.0, is_causal,
                    scale=scale, enable_gqa=enable_gqa, scales=scales)


def stop(x: Tensor) -> Tensor:
    """Stop rule (CP-LRP): ``x`` unchanged, but no relevance (and no gradient) flows back through it."""
    return _stop(aten.alias.default, x)
