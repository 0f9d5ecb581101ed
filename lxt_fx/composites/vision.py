"""The vision composite: CP-LRP (Ali et al. 2022) plus the γ-rule on Linear and the z⁺-rule on Conv.

The LXT-style recipe for Vision Transformers (as in LXT's ViT example), selectable by object
(``composite=lxt_fx.composites.vision``) or by name (``composite="vision"``): relevance does not flow
through the attention weights (CP-LRP), and every Linear / Conv layer redistributes with the
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

It is not the ViT default: ViTs get the generic ``attnlrp``, chosen by ground truth. On the trained
``shapes-vit`` task (the class is the shape of the one red object among coloured shapes on textured noise;
the mask is its patches) the relevance mass accuracy ``Σ_{i∈mask} R_i⁺ / Σ_i R_i⁺`` on 200 held-out rows is
0.893 ± 0.003 for this composite against 0.962 ± 0.001 for ``attnlrp`` (paired −0.069 ± 0.003), and on a
ViT trained from seed 1, held out while the rules were compared, 0.932 against 0.982 (−0.050 ± 0.003).
The lost mass lies on background patches (7.3 % of the positive relevance against 2.3 %). Taken apart:
the z⁺-rule on the patch embedding costs 0.03–0.04 — its denominator is the positive contributions only, so
each patch's embedding bias ``b_j`` goes to that patch's pixels instead of being absorbed, and every
background patch carries it —, CP-LRP's frozen attention 0.02–0.03 against AttnLRP's softmax and product
rules, γ = 0.05 on Linear 0.003–0.009 (``benchmarks/results/groundtruth_vision.md``). The vision composite
remains the LXT-style choice; ``register("vit", vision)`` makes it the default again.
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
