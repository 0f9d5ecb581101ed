"""Attention with a learned, input-dependent additive mask (Doge's dynamic mask attention).

Doge adds ``exp(A · softplus(dt_proj(v)))`` to the attention scores as a mask before the softmax. The exp
is on the relevance path (the scores' deep-Taylor rule hands relevance to everything added into them), but
it is neither an activation (``exp(0) = 1``, so the identity rule is singular) nor a scale of another
tensor. It is a mask, so it gets what every attention mask gets: it is a constant (``Stop``), and the
scores' relevance stays with ``QKᵀ``. Registered for ``model_type == "doge"``.
"""

from __future__ import annotations

from torch._ops import ops as _ops

from ..rules import Stop
from .attnlrp import attnlrp

aten = _ops.aten

dynamic_mask = attnlrp.extend([((aten.exp, "Attention"), Stop())], name="attnlrp+dynamic-mask")
