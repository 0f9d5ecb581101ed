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
    ``vision``, ``dynamic_mask``, ``router_constant``, ``palrp`` — position-aware AttnLRP, :mod:`.palrp` —, as
    ``lxt_fx.composites`` exports them and the CLI's ``--composite`` takes them) and by their ``name``, then each
    registered composite by its ``name``."""
    from .cp_lrp import cp_lrp
    from .dynamic_mask import dynamic_mask
    from .palrp import palrp
    from .router_constant import router_constant
    from .vision import vision

    builtins = {"attnlrp": attnlrp, "cp_lrp": cp_lrp, "vision": vision, "dynamic_mask": dynamic_mask,
                "router_constant": router_constant, "palrp": palrp}
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
    """The built-in per-model-type composites: ``doge`` → AttnLRP with its dynamic attention mask held
    constant (:mod:`.dynamic_mask`); ``mixtral`` → AttnLRP with the MoE router's softmax held constant
    (:mod:`.router_constant`: on the trained ``recall-mixtral`` ground truth it keeps more of the evidence,
    also on data held out while choosing it; ``composite="attnlrp"`` selects the generic rules). Called at
    import; call it again to restore them after ``unregister``.

    ViT (``model_type == "vit"``) gets the generic ``attnlrp``, like DINOv2, CLIP and SigLIP, and not the
    LXT-style CP-LRP + γ recipe (:mod:`.vision`: frozen attention, the signed γ-rule with γ = 0.05 on Linear,
    the signed z⁺-rule on the patch embedding). The choice is made by ground truth: on the trained
    ``shapes-vit`` task (:mod:`lxt_fx.evaluate.groundtruth.vision`; the class is the shape of the one red
    object, the mask its patches) the relevance mass accuracy ``Σ_{i∈mask} R_i⁺ / Σ_i R_i⁺`` over 200
    held-out rows is 0.962 ± 0.001 for ``attnlrp`` against 0.893 ± 0.003 for ``vision`` (paired
    +0.069 ± 0.003), and on a ViT trained from seed 1, held out while the rules were compared,
    0.982 against 0.932 (paired +0.050 ± 0.003). The mass ``vision`` loses goes to background patches
    (7.3 % of the positive relevance against 2.3 %): its z⁺-rule hands each patch's embedding bias to that
    patch's pixels (0.03–0.04 of the mass), CP-LRP's frozen attention costs 0.02–0.03, γ = 0.05 on Linear
    0.003–0.009 (``benchmarks/results/groundtruth_vision.md``). The LXT-style recipe stays selectable:
    ``composite=lxt_fx.composites.vision`` or ``composite="vision"``, or ``register("vit", vision)`` to make
    it the default again.

    DINOv2 keeps the generic ``attnlrp`` on the same evidence: on ``shapes-dinov2`` Integrated Gradients is
    ahead by 0.017 (384 rows), the lost mass is far background entering through the classifier's mean over
    the patch tokens, and no rule tried — γ on the Linear layers, z⁺ / flat / zB on the patch embedding,
    queries held constant in ``QKᵀ``, CP-LRP — raised the mass on a DINOv2 trained from another seed, held
    out while choosing (``docs/groundtruth.md``, ``benchmarks/groundtruth_dinov2_rules.py``)."""
    from .dynamic_mask import dynamic_mask
    from .router_constant import router_constant

    register("doge", dynamic_mask)
    register("mixtral", router_constant)


register_defaults()
