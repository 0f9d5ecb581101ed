"""The vision composite: CP-LRP (Ali et al. 2022) plus the γ-rule (Montavon et al. 2019) on Linear and Conv.

The documented default for Vision Transformers (registered for ``model_type == "vit"``): relevance does not
flow through the attention weights (CP-LRP), and every Linear / Conv layer redistributes with
``W + γW⁺`` so that positive evidence dominates the pixel map. γ is set per layer type, since the patch
embedding (Conv) and the MLP/attention projections (Linear) call for different amounts; tune it per model
(LXT's ViT example searched Conv γ ∈ {0.1, 0.25, 100} × Linear γ ∈ {0, 0.01, 0.05, 0.1, 1}).
``cp_lrp_gamma(linear_gamma=0, conv_gamma=0)`` is CP-LRP with the ε-rule on those layers.
"""

from __future__ import annotations

from torch import fx
from torch._ops import ops as _ops

from ..rules import Gamma
from ..rules.gamma import layout
from .composite import Composite
from .cp_lrp import cp_lrp
from .patterns import AnyOf, NodeInfo

aten = _ops.aten

LINEAR_OPS = AnyOf(aten.linear, aten.addmm)
CONV_OPS = AnyOf(aten.conv1d, aten.conv2d, aten.conv3d, aten.convolution)

LINEAR_GAMMA = 0.05
CONV_GAMMA = 0.25


def input_carries_only(node: fx.Node, info: NodeInfo) -> bool:
    """The layer's input is its only relevance-carrying argument (weight and bias are constants)."""
    return tuple(info.carrying) == (layout(node.target)[0],)


def cp_lrp_gamma(linear_gamma: float = LINEAR_GAMMA, conv_gamma: float = CONV_GAMMA,
                 epsilon: float = 1e-6) -> Composite:
    """CP-LRP with the γ-rule: ``linear_gamma`` on ``aten.linear``/``aten.addmm`` (GPT-2 ``Conv1D``),
    ``conv_gamma`` on convolutions, ``epsilon`` the stabilizer of both."""
    gamma_entries = [
        ((CONV_OPS, input_carries_only), Gamma(conv_gamma, epsilon)),
        ((LINEAR_OPS, input_carries_only), Gamma(linear_gamma, epsilon)),
    ]
    return Composite(gamma_entries).extend(
        cp_lrp, name=f"cp_lrp_gamma(linear={linear_gamma:g}, conv={conv_gamma:g})")


vision = cp_lrp_gamma()
