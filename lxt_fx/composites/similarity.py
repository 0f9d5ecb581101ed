"""CLIP-style similarity heads: a hand-written L2 norm ``(Σ x²) ** 0.5`` is a normalizing scale.

CLIP normalizes its image and text embeddings with ``x / torch.pow(torch.sum(x ** 2), 0.5)`` before the
cosine similarity. The ``pow(·, ±0.5)`` is the norm's scale: identity through the norm (Prop. 3.4), i.e.
the scale is held constant (detached) as for ``rsqrt`` / ``linalg.vector_norm`` in :mod:`.attnlrp`.
"""

from __future__ import annotations

from torch import fx
from torch._ops import ops as _ops

from ..rules import Stop
from .attnlrp import attnlrp, scales_another
from .composite import Composite
from .patterns import NodeInfo

aten = _ops.aten


def square_root_power(node: fx.Node, info: NodeInfo) -> bool:
    """``pow(x, e)`` with ``e`` = ±0.5: a square root (or its reciprocal), as a hand-written norm has."""
    exponent = node.args[1] if len(node.args) > 1 else node.kwargs.get("exponent")
    return isinstance(exponent, (int, float)) and abs(abs(float(exponent)) - 0.5) < 1e-12


# ``pow(Σx², 0.5)`` that divides another relevance-carrying tensor: stop (the scale is a constant).
POW_NORM_SCALE = (aten.pow, square_root_power, scales_another)

similarity = Composite([(POW_NORM_SCALE, Stop()), *attnlrp.entries], name="similarity")
