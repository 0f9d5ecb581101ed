"""The AttnLRP composite (Achtibat et al., ICML 2024) for any transformer graph."""

from __future__ import annotations

from torch._ops import ops as _ops

from ..ops import ACTIVATIONS, PRODUCTS, SOFTMAX
from ..rules import Attention, Gradient, Identity, IdentityRegion, NormIdentity, SoftmaxDT, Stop, Uniform
from .composite import Composite
from .patterns import AnyOf

aten = _ops.aten

# The normalizing scale of a norm layer, wherever the exporter decomposed it (RMSNorm, T5LayerNorm, …).
NORM_SCALE = (AnyOf(aten.rsqrt, aten.sqrt, aten.reciprocal), "Norm")
# Renormalization of top-k routing weights inside an MoE router: the rule is the plain gradient.
ROUTER_RENORM = (AnyOf(aten.div, aten.div_), "Router")
# Activation modules that the exporter decomposed into several ops (GPT-2's NewGELUActivation):
# one identity region each. Single-op activations keep the per-op rule with its analytic ratio.
ACTIVATION_MODULE = "Activation"

attnlrp = Composite([
    (aten.scaled_dot_product_attention, Attention()),        # ¼ q, ¼ k, ½ v; kernel stays fused
    (NORM_SCALE, Stop()),                                     # identity through the norm (Prop. 3.4)
    (AnyOf(aten.layer_norm, aten.rms_norm), NormIdentity()),  # fused norms, same rule
    (AnyOf(*SOFTMAX), SoftmaxDT()),                           # deep Taylor (Prop. 3.1); plain gradient
    (ACTIVATION_MODULE, IdentityRegion()),                    # decomposed activations: one region
    (ROUTER_RENORM, Gradient()),                              # MoE routing renormalization
    (AnyOf(*ACTIVATIONS), Identity()),                        # identity (Eq. 9), analytic ratios
    (AnyOf(*PRODUCTS), Uniform()),                            # two carrying factors: ½ each (Prop. 3.2/3.3)
], name="attnlrp")
