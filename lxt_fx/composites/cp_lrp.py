"""The CP-LRP composite (Ali et al., 2022): relevance does not flow through attention weights or gates."""

from __future__ import annotations

import operator

from torch import fx
from torch._ops import ops as _ops

from ..ops import ACTIVATIONS, PRODUCTS, SOFTMAX, packet
from ..rules import Attention, GatedUnit, Identity, IdentityRegion, L2Normalize, NormIdentity, Stop, Uniform
from .attnlrp import ACTIVATION_MODULE, DECAY, INVERSE_L2_NORM, L2_NORMALIZATION, NORM_SCALE
from .composite import Composite
from .patterns import AnyOf, NodeInfo

aten = _ops.aten


def gate_activation(node: fx.Node, info: NodeInfo) -> bool:
    """An activation whose output multiplies another relevance-carrying tensor (a gated MLP's gate)."""
    if packet(node.target) not in ACTIVATIONS:
        return False
    for user in node.users:
        if packet(user.target) is aten.mul or user.target is operator.mul:
            others = [a for a in user.args if isinstance(a, fx.Node) and a is not node]
            if any(a.name in info.reachable for a in others):
                return True
    return False


cp_lrp = Composite([
    (aten.scaled_dot_product_attention, Attention(through_weights=False)),
    (AnyOf(*SOFTMAX), Stop()),           # attention (and router) weights are constants
    (gate_activation, Stop()),           # the gate branch of a gated MLP is a constant
    (aten.glu, GatedUnit(gate="stop")),  # so is GLU's gate σ(b)
    (ACTIVATION_MODULE, IdentityRegion()),
    (L2_NORMALIZATION, L2Normalize()),
    (INVERSE_L2_NORM, Stop()),
    (NORM_SCALE, Stop()),
    (AnyOf(aten.layer_norm, aten.rms_norm, aten.group_norm), NormIdentity()),
    (DECAY, Stop()),
    (AnyOf(*ACTIVATIONS), Identity()),
    (AnyOf(*PRODUCTS), Uniform()),
], name="cp_lrp")
