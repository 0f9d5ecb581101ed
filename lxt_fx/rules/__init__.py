"""LRP rules: each a formula (docstring), a GxI form (production) and an explicit form (reference)."""

from .attention import Attention
from .base import Rule, safe_divide, scale_gradient, stabilize, stabilize_gradient
from .epsilon import Epsilon
from .gamma import Gamma
from .glu import GatedUnit
from .gradient import Gradient
from .identity import Identity
from .l2norm import L2Normalize
from .norm import NormIdentity
from .position import AdditivePosition, RotaryPosition
from .region import IdentityRegion
from .renormalize import Renormalize
from .softmax import SoftmaxDT
from .stop import Stop
from .uniform import Uniform

__all__ = ["AdditivePosition", "Attention", "Epsilon", "Gamma", "GatedUnit", "Gradient", "Identity", "IdentityRegion", "L2Normalize", "NormIdentity",
           "Renormalize", "RotaryPosition", "Rule", "SoftmaxDT", "Stop", "Uniform",
           "safe_divide", "scale_gradient", "stabilize", "stabilize_gradient"]
