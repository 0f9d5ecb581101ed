"""The vision composite: CP-LRP (Ali et al. 2022) plus the γ-rule on Linear and the z⁺-rule on Conv.

The documented default for Vision Transformers (registered for ``model_type == "vit"``): relevance does not
flow through the attention weights (CP-LRP), and every Linear / Conv layer redistributes with the
*generalized* γ-rule for signed inputs (:class:`~lxt_fx.rules.Gamma`; the inputs of a ViT's Linear layers
come out of LayerNorms and its pixels are normalized, so both are signed): for an output ``z_j`` the
contributions ``x_i w_ij`` with the sign of ``z_j`` get the weight ``1 + γ``, the others ``1``, and the
denominator keeps the sign of ``z_j``. γ is set per layer type; tune it per model (LXT's ViT example searched
Conv γ ∈ {0.1, 0.25, 100} × Linear γ ∈ {0, 0.01, 0.05, 0.1, 1}).

The patch embedding (ViT's only convolution) gets the z⁺-rule, as RULES.md names it, in its form for signed
inputs: the limit ``γ → ∞`` of the generalized rule (:class:`~lxt_fx.rules.gamma.ZPlus`), which gives an
output ``z_j ≥ 0`` to its positive contributions ``x_i⁺w_ij⁺ + x_i⁻w_ij⁻`` only (and ``z_j < 0`` to its
negative ones). The textbook ``x w⁺ / Σ x w⁺`` would divide by a sum of either sign on normalized pixels;
the signed form's denominator has the output's sign and ``|d_j| ≥ |z_j|``, and with zero biases it conserves
exactly. (zennit's usual first-layer rules — z^B, flat, w² — need pixel bounds or discard the input; the
signed z⁺ needs neither and is the rule the reference names.) ``conv_gamma`` sets a finite γ instead.
``cp_lrp_gamma(linear_gamma=0, conv_gamma=0)`` is CP-LRP with the ε-rule on those layers; ``signed=False``
selects the classic ``W + γW⁺`` form everywhere (right only for inputs ≥ 0).
"""

from __future__ import annotations

import math

from torch import fx
from torch._ops import ops as _ops

from ..rules import Gamma
from ..rules.gamma import ZPlus, layout
from .composite import Composite
from .cp_lrp import cp_lrp
from .patterns import AnyOf, NodeInfo

aten = _ops.aten

LINEAR_OPS = AnyOf(aten.linear, aten.addmm)
CONV_OPS = AnyOf(aten.conv1d, aten.conv2d, aten.conv3d, aten.convolution)

LINEAR_GAMMA = 0.05
CONV_GAMMA = math.inf  # the patch embedding: z⁺ for signed inputs


def input_carries_only(node: fx.Node, info: NodeInfo) -> bool:
    """The layer's input is its only relevance-carrying argument (weight and bias are constants)."""
    return tuple(info.carrying) == (layout(node.target)[0],)


def cp_lrp_gamma(linear_gamma: float = LINEAR_GAMMA, conv_gamma: float = CONV_GAMMA,
                 epsilon: float = 1e-6, signed: bool = True) -> Composite:
    """CP-LRP with the γ-rule: ``linear_gamma`` on ``aten.linear``/``aten.addmm`` (GPT-2 ``Conv1D``),
    ``conv_gamma`` on convolutions (``math.inf``, the default: the z⁺-rule), ``epsilon`` the stabilizer of
    both, ``signed`` the generalized form for signed inputs (default) or the classic one."""
    if signed and math.isinf(conv_gamma):
        conv_rule: Gamma = ZPlus(epsilon)
    else:
        conv_rule = Gamma(conv_gamma, epsilon, signed=signed)
    gamma_entries = [
        ((CONV_OPS, input_carries_only), conv_rule),
        ((LINEAR_OPS, input_carries_only), Gamma(linear_gamma, epsilon, signed=signed)),
    ]
    form = "" if signed else ", classic"
    return Composite(gamma_entries).extend(
        cp_lrp, name=f"cp_lrp_gamma(linear={linear_gamma:g}, conv={conv_gamma:g}{form})")


vision = cp_lrp_gamma()
