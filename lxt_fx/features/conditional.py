"""Conditional heatmaps (concept relevance): the input relevance that flows through chosen neurons only.

A copy of the rewritten graph gets a *grip* after the place's node (identity; every user of the node reads
it). The backward runs in two halves: from the explained score down to the grip (the modified gradient ``g``
at the place), then from the grip down to the input with ``g ⊙ m``, ``m`` a 0/1 mask over the place's
channels — so only paths through the chosen neurons reach the input, and nothing that bypasses the place.
Together the halves cost about one backward. The backward is linear in the gradient it starts from, so
conditional maps are linear in the chosen set: ``R(A ∪ B) = R(A) + R(B)`` for disjoint ``A``, ``B``; a
partition of all channels gives the map through the whole place, which is the unconditional map where every
path crosses the place (a block output: the residual stream).

Several concepts ride in one batched backward: each concept is a copy of the inputs in the batch with its own
mask row (rows ``c · B … c · B + B − 1`` hold concept ``c`` of the ``B`` input rows).
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, fx, nn

from ..attribution import Attribution
from ..composites.registry import resolve_composite
from ..explain import model_call, model_device, target_scores, token_relevance, token_strings
from ..render.common import named_tokens
from ..session import Rewritten, check_model, input_embeddings, rewritten_graph
from ..taps import fresh_rewritten, resolve
from ..targets import as_target
from ..tracing.modes import in_eval_mode
from .places import PlaceError

__all__ = ["Grip", "conditional", "masked_graph"]


class Grip(nn.Module):
    """Identity in value; keeps the tensor it returns (``last``), so a backward can stop at it and start
    again from it with a masked gradient."""

    def __init__(self) -> None:
        super().__init__()
        self.last: Tensor | None = None

    def forward(self, x: Any) -> Any:
        if not isinstance(x, Tensor) or not x.requires_grad:
            self.last = None
            return x
        self.last = x.view_as(x)
        return self.last


_MASKED: weakref.WeakKeyDictionary[fx.GraphModule, dict[str, tuple[fx.GraphModule, Grip]]] = (
    weakref.WeakKeyDictionary())


def masked_graph(graph: Rewritten, node_name: str) -> tuple[fx.GraphModule, Grip]:
    """A copy of ``graph``'s rewritten module with a :class:`Grip` after node ``node_name`` (built once)."""
    per = _MASKED.setdefault(graph.module, {})
    if node_name not in per:
        gm = fresh_rewritten(graph)
        node = next(n for n in gm.graph.nodes if n.name == node_name)
        grip = Grip()
        gm.add_submodule("lxt_grip", grip)
        with gm.graph.inserting_after(node):
            new = gm.graph.call_module("lxt_grip", (node,))
        node.replace_all_uses_with(new, delete_user_cb=lambda user: user is not new)
        gm.graph.lint()
        gm.recompile()
        per[node_name] = (gm, grip)
    return per[node_name]


def _concepts(neurons: Sequence[int] | Sequence[Sequence[int]] | Tensor, channels: int, place: str) -> Tensor:
    """``[concepts, channels]`` 0/1 masks: a list of ints is one concept, a list of lists several; a bool or
    float tensor ``[concepts, channels]`` (or ``[channels]``) is taken as the masks themselves."""
    if isinstance(neurons, Tensor) and neurons.is_floating_point() or isinstance(neurons, Tensor) and \
            neurons.dtype == torch.bool:
        masks = neurons.float().reshape(-1, neurons.shape[-1])
    else:
        items = list(neurons.tolist() if isinstance(neurons, Tensor) else neurons)
        groups = [list(g) for g in items] if items and not isinstance(items[0], int) else [items]
        masks = torch.zeros(len(groups), channels)
        for c, group in enumerate(groups):
            bad = [i for i in group if not -channels <= int(i) < channels]
            if bad:
                raise PlaceError(f"neuron(s) {bad[:8]} outside 0…{channels - 1} at {place!r}")
            masks[c, torch.as_tensor([int(i) for i in group], dtype=torch.long)] = 1.0
    if masks.shape[-1] != channels:
        raise PlaceError(f"masks of {masks.shape[-1]} channels for {place!r}, which has {channels}")
    return masks


@in_eval_mode
def conditional(model: nn.Module, inputs: Any, *, tokenizer: Any = None, place: str,
                neurons: Sequence[int] | Sequence[Sequence[int]] | Tensor, target: Any = None,
                composite: Any = None, attention_mask: Tensor | None = None, processor: Any = None) -> Attribution:
    """The conditional heatmap: input relevance of ``target`` (as in :func:`lxt_fx.explain`) that flows through
    ``neurons`` of ``place`` only, ``R_i(S) = x_i · ∂̃f/∂x_i`` with the modified gradient masked to the channels
    ``S`` at ``place``. ``neurons``: a list of channel indices (one concept) or a list of lists (one concept
    each, all in one batched backward); the result has ``concepts × rows`` rows, concept-major, and holds in
    ``latents[place]`` the relevance ``x ⊙ (g ⊙ m)`` at the place (0 outside each concept's channels)."""
    model = check_model(model)
    composite = resolve_composite(composite, model)
    goal = as_target(target)
    device = model_device(model)
    embedding = input_embeddings(model)
    call = model_call(model, inputs, tokenizer=tokenizer, attention_mask=attention_mask, processor=processor)
    if set(call) != {"input_ids", "attention_mask"}:
        raise PlaceError(f"conditional reads token relevance, but the inputs are {sorted(call)}: give text or "
                         "input_ids (with attention_mask)")
    ids, mask = call["input_ids"].to(device), call["attention_mask"].to(device)
    with torch.enable_grad():
        base = embedding(ids).detach()
        graph = rewritten_graph(model, composite, {"inputs_embeds": base, "attention_mask": mask}, {})
        names = resolve(graph, [place])
        if len(names) != 1:
            raise PlaceError(f"place {place!r} names {len(names)} places ({list(names)[:4]}…): give one")
        node_name = next(iter(names.values()))
        val = next(n for n in graph.module.graph.nodes if n.name == node_name).meta["val"]
        masks = _concepts(neurons, int(val.shape[-1]), place)
        concepts = masks.shape[0]
        ids_all, mask_all = ids.repeat(concepts, 1), mask.repeat(concepts, 1)
        embeds = base.repeat(concepts, 1, 1).requires_grad_(True)
        gm, grip = masked_graph(graph, node_name)
        tensors = {"inputs_embeds": embeds, "attention_mask": mask_all}
        try:
            outputs = gm({k: tensors[k] for k in sorted(tensors)})
            held = grip.last
        finally:
            grip.last = None  # hold no graph between calls
        scores, target_ids, positions = target_scores(model, outputs, goal, mask_all, tokenizer)
        if held is None:
            raise PlaceError(f"no relevance reaches {place!r} from the input: nothing flows through it")
        rows = mask_all.shape[0]
        (g,) = torch.autograd.grad(scores.sum(), [held], retain_graph=True, allow_unused=True)
        if g is None:
            g = torch.zeros_like(held)
        m = masks.to(device=g.device, dtype=g.dtype).repeat_interleave(ids.shape[0], 0)
        g = (g.reshape(rows, -1, g.shape[-1]) * m[:, None, :]).reshape(g.shape)
        (grad,) = torch.autograd.grad(held, [embeds], grad_outputs=g, allow_unused=True)
        at_place = (held.detach().float() * g.float()).reshape(rows, -1, g.shape[-1])
    relevance = token_relevance(embeds, grad, mask_all)
    tokens = [token_strings(row[m.bool()], tokenizer) for row, m in zip(ids_all, mask_all, strict=True)]
    target_tokens = None
    if tokenizer is not None and (target_ids >= 0).all():
        target_tokens = named_tokens(tokenizer.convert_ids_to_tokens(target_ids.tolist()), target_ids.tolist())
    return Attribution(relevance.cpu(), tokens, ids_all.cpu(), mask_all.cpu(), target_ids.cpu(),
                       scores.detach().float().cpu(), positions.cpu(), graph.report, target_tokens,
                       latents={place: at_place.cpu()},
                       latent_values={place: held.detach().float().reshape(rows, -1, g.shape[-1]).cpu()})
