"""``import lxt_fx.inseq`` registers AttnLRP with Inseq as the method ``"attnlrp"`` (``pip install
lxt-fx[inseq]``; inseq 0.7.1's metadata pulls CUDA-11 wheels on Linux, so install it with ``--no-deps`` plus
jaxtyping, typeguard ≤ 2.13.3, treescope and captum).

Then ``inseq.load_model(model, "attnlrp", tokenizer=tokenizer)`` and ``.attribute(...)`` work as for any
Inseq method: at every generation step Inseq builds the batch, calls the method with the step's attributed
function (``attributed_fn``, default the probability of the generated token; ``"logit"``, ``"logprob"``
and every other step function too) and collects ``step_scores``. The method is
:class:`lxt_fx.captum.LayerAttnLRP` at the input embeddings: one forward through the rewritten graph, one
backward, relevance = embedding ⊙ modified gradient, per hidden unit (Inseq sums it per token).
"""

from __future__ import annotations

from typing import Any

from .captum import LayerAttnLRP
from .composites.composite import Composite
from .tracing.errors import LXTError


class InseqUnavailableError(LXTError, ImportError):
    """``inseq`` is not installed (or cannot be imported beside this transformers)."""


try:
    from inseq.attr.feat.gradient_attribution import GradientAttributionRegistry
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise InseqUnavailableError(
        f"lxt_fx.inseq needs inseq ({exc}): pip install --no-deps inseq==0.7.1 jaxtyping typeguard==2.13.3 "
        "treescope captum (its own metadata would pull CUDA-11 wheels)") from exc


class AttnLRPAttribution(GradientAttributionRegistry):
    """Inseq's ``"attnlrp"`` method: :class:`~lxt_fx.captum.LayerAttnLRP` on the model Inseq wraps, read at
    its input embeddings (``target_layer=`` as for Inseq's layer methods; ``composite=`` an lxt-fx
    composite, default the one registered for the model's type)."""

    method_name = "attnlrp"

    def __init__(self, attribution_model: Any, composite: Composite | str | None = None, **kwargs: Any) -> None:
        super().__init__(attribution_model, hook_to_model=False)
        self.attribute_batch_ids = True  # ids in, relevance read where the embedding layer puts them out
        self.forward_batch_embeds = False
        self.use_baselines = False
        self.hook(**kwargs)
        self.method = LayerAttnLRP(attribution_model.model, layer=self.target_layer,
                                   forward_func=self.attribution_model, composite=composite)


__all__ = ["AttnLRPAttribution", "InseqUnavailableError"]
