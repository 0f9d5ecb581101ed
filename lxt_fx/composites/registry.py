"""Composites registered per HF ``model_type``; ``for_model`` picks one for a model."""

from __future__ import annotations

from torch import nn

from ..tracing.errors import LXTError
from .attnlrp import attnlrp
from .composite import Composite

_REGISTRY: dict[str, Composite] = {}


class UnknownCompositeError(LXTError, ValueError):
    """A composite given by a name that no built-in or registered composite has, or an object that is not a
    :class:`~lxt_fx.composites.composite.Composite`."""


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


def named() -> dict[str, Composite]:
    """Every composite a name stands for: the built-ins by their import name (``attnlrp``, ``cp_lrp``,
    ``vision``, ``dynamic_mask``, as ``lxt_fx.composites`` exports them and the CLI's ``--composite`` takes
    them) and by their ``name``, then each registered composite by its ``name``."""
    from .cp_lrp import cp_lrp
    from .dynamic_mask import dynamic_mask
    from .vision import vision

    builtins = {"attnlrp": attnlrp, "cp_lrp": cp_lrp, "vision": vision, "dynamic_mask": dynamic_mask}
    found = dict(builtins)
    for composite in [*builtins.values(), *_REGISTRY.values()]:
        found.setdefault(composite.name, composite)
    return found


def resolve_composite(composite: Composite | str | None, model: nn.Module | None = None) -> Composite:
    """The composite an entry point uses: a :class:`Composite` as it is, a name (see :func:`named`) looked up,
    ``None`` the one registered for ``model`` (:func:`for_model`; ``attnlrp`` without a model). Anything else
    is an :class:`UnknownCompositeError` listing the valid names."""
    if isinstance(composite, Composite):
        return composite
    if composite is None:
        return for_model(model) if model is not None else attnlrp
    choices = named()
    if isinstance(composite, str) and composite in choices:
        return choices[composite]
    what = f"{composite!r}" if isinstance(composite, str) else f"a {type(composite).__name__}"
    raise UnknownCompositeError(f"composite={what} is not a composite: give one of the names "
                                f"{sorted(choices)} or a Composite (e.g. lxt_fx.attnlrp, "
                                "lxt_fx.composites.cp_lrp_gamma(...))")


def register_defaults() -> None:
    """The built-in per-model-type composites: ``vit`` → CP-LRP + γ (:mod:`.vision`), the documented
    default for vision; ``doge`` → AttnLRP with its dynamic attention mask held constant
    (:mod:`.dynamic_mask`). Called at import; call it again to restore them after ``unregister``."""
    from .dynamic_mask import dynamic_mask
    from .vision import vision

    register("vit", vision)
    register("doge", dynamic_mask)


register_defaults()
