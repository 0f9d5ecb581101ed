"""Relevance per attention head: the input of each attention output projection, split by head, from one
backward pass (``explain`` with those inputs captured)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from .. import modalities
from ..explain import explain
from ..tracing.modes import in_eval_mode
from .places import PlaceError, attention_places, graph_for

__all__ = ["head_relevance", "heads"]


def head_relevance(relevance: Tensor, heads: int, batch: int) -> Tensor:
    """``[batch, heads]``: ``R`` (``[batch, seq, heads·d]`` or ``[batch·seq, heads·d]``) summed over tokens and
    over each head's ``d`` channels (head ``h`` owns channels ``h·d … (h+1)·d − 1``)."""
    r = relevance.reshape(batch, -1, relevance.shape[-1])
    return r.reshape(batch, r.shape[1], heads, -1).sum((1, 3))


@in_eval_mode
def heads(model: nn.Module, inputs: Any = None, *, tokenizer: Any = None, target: Any = None,
          composite: Any = None, attention_mask: Tensor | None = None, images: Any = None,
          processor: Any = None) -> Tensor:
    """Relevance of every attention head, ``[layers, heads]`` (``[batch, layers, heads]`` for several rows):
    ``Σ x ⊙ grad`` over the tokens and the head's channels at the input of each attention output projection
    (``o_proj``, ``c_proj``, ``attention.output.dense``, …), found in the captured graph of any family, from
    one backward pass for ``target`` (as in :func:`lxt_fx.explain`, which takes the inputs the same way)."""
    if images is not None:  # capture= reads latents of a graph fed pixel values as the positional input
        if inputs is not None:
            raise PlaceError("heads takes text or images, not both yet: explain them one at a time")
        inputs = modalities.pixels(images, processor)
    graph = graph_for(model, inputs, tokenizer, composite, attention_mask=attention_mask, processor=processor)
    places = attention_places(graph)
    if not places:
        raise PlaceError(f"no attention layer with an output projection found in the captured graph of "
                         f"{type(model).__name__}: capture the projection inputs by path instead "
                         "(explain(..., capture=['<path>.o_proj:input']))")
    att = explain(model, inputs, tokenizer=tokenizer, target=target, composite=composite,
                  attention_mask=attention_mask, processor=processor, capture=[p.node for p in places])
    batch = att.relevance.shape[0]
    per = [head_relevance(att.latent(p.node), p.heads, batch) for p in places]
    if len({t.shape[1] for t in per}) != 1:
        raise PlaceError(f"layers have different head counts {[p.heads for p in places]}: read them one by one")
    out = torch.stack(per, 1)
    return out[0] if batch == 1 else out
