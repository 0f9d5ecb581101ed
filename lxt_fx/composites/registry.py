"""Composites registered per HF ``model_type``; ``for_model`` picks one for a model."""

from __future__ import annotations

from torch import nn

from .attnlrp import attnlrp
from .composite import Composite

_REGISTRY: dict[str, Composite] = {}


def register(model_type: str, composite: Composite) -> Composite:
    """Use ``composite`` for every model whose ``config.model_type`` is ``model_type``; returns it."""
    if not isinstance(composite, Composite):
        raise TypeError(f"register({model_type!r}, ...) needs a Composite, got {type(composite).__name__}")
    _REGISTRY[model_type] = composite
    return composite


def unregister(model_type: str) -> None:
    """Forget the composite registered for ``model_type`` (no error if none was)."""
    _REGISTRY.pop(model_type, None)


def registered() -> dict[str, Composite]:
    """A copy of the registry."""
    return dict(_REGISTRY)


def for_model(model: nn.Module) -> Composite:
    """The composite registered for ``model.config.model_type``, else the generic ``attnlrp``."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    return _REGISTRY.get(model_type, attnlrp) if model_type else attnlrp


def register_defaults() -> None:
    """The built-in per-model-type composites: ``vit`` → CP-LRP + γ (:mod:`.vision`), the documented
    default for vision; ``doge`` → AttnLRP with its dynamic attention mask held constant
    (:mod:`.dynamic_mask`). Called at import; call it again to restore them after ``unregister``."""
    from .dynamic_mask import dynamic_mask
    from .vision import vision

    register("vit", vision)
    register("doge", dynamic_mask)


register_defaults()
