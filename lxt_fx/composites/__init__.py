"""Composites: ordered (pattern → rule) maps, the registry per model type, and the built-ins."""

from .attnlrp import attnlrp
from .composite import Composite
from .cp_lrp import cp_lrp
from .dynamic_mask import dynamic_mask
from .palrp import PositionAware, palrp
from .patterns import AnyOf, NodeInfo
from .registry import (
           UnknownCompositeError,
           for_model,
           named,
           register,
           registered,
           resolve_composite,
           unregister,
)
from .router_constant import router_constant
from .vision import cp_lrp_gamma, vision

__all__ = ["AnyOf", "Composite", "NodeInfo", "PositionAware", "UnknownCompositeError", "attnlrp", "cp_lrp",
           "cp_lrp_gamma", "dynamic_mask", "for_model", "named", "palrp", "register", "registered", "resolve_composite",
           "router_constant", "unregister", "vision"]
