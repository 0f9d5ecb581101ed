"""The AttnLRP composite (Achtibat et al., ICML 2024) for any transformer graph."""

from __future__ import annotations

from torch._ops import ops as _ops

from ..ops import ACTIVATIONS, DECAYS, NORM_SCALES, PRODUCTS, SOFTMAX
from ..rules import Attention, Gradient, Identity, IdentityRegion, NormIdentity, SoftmaxDT, Stop, Uniform
from .composite import Composite
from .patterns import AnyOf

aten = _ops.aten

# The normalizing scale of a norm, wherever the exporter decomposed it (RMSNorm, T5LayerNorm, gated norms
# of linear-attention layers, L2-normalized queries and keys): identity through the norm (Prop. 3.4).
NORM_SCALE = AnyOf(*NORM_SCALES)
# exp-made multiplicative factors (SSM decays, sink scales): constants, as MambaLRP treats Ā.
DECAY = AnyOf(*DECAYS)
# Renormalization of top-k routing weights inside an MoE router: the rule is the plain gradient.
ROUTER_RENORM = (AnyOf(aten.div, aten.div_), "Router")
# Activation modules that the exporter decomposed into several ops (GPT-2's NewGELUActivation):
# one identity region each. Single-op activations keep the per-op rule with its analytic ratio.
ACTIVATION_MODULE = "Activation"

attnlrp = Composite([
    (aten.scaled_dot_product_attention, Attention()),        # ¼ q, ¼ k, ½ v; kernel stays fused
    (NORM_SCALE, Stop()),                                     # identity through the norm (Prop. 3.4)
    (AnyOf(aten.layer_norm, aten.rms_norm, aten.group_norm), NormIdentity()),  # fused norms, same rule
    (AnyOf(*SOFTMAX), SoftmaxDT()),                           # deep Taylor (Prop. 3.1); plain gradient
    (ACTIVATION_MODULE, IdentityRegion()),                    # decomposed activations: one region
    (ROUTER_RENORM, Gradient()),                              # MoE routing renormalization
    (DECAY, Stop()),                                          # decays and gates made with exp
    (AnyOf(*ACTIVATIONS), Identity()),                        # identity (Eq. 9), analytic ratios
    (AnyOf(*PRODUCTS), Uniform()),                            # two carrying factors: ½ each (Prop. 3.2/3.3)
], name="attnlrp")
