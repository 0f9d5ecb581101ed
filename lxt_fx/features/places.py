"""Places: where neurons live. A place is a module path as in ``model.named_modules()`` (its output
channels are the neurons) or ``"<module path>:input"`` (its input channels: ``"model.layers.10.mlp.down_proj:input"``
are the MLP neurons of a LLaMA-like block); globs (``"model.layers.*.mlp.down_proj:input"``) name several.

A place resolves to one node of the captured graph (:func:`lxt_fx.taps.resolve`); an unknown place raises
:class:`~lxt_fx.taps.CaptureNameError` listing the closest module paths. :func:`attention_places` finds, in
any captured family, the input of every attention output projection (heads concatenated on the last dim).
"""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, fx, nn

from ..composites.registry import resolve_composite
from ..explain import model_call
from ..session import Rewritten, check_model, rewritten_graph, split_inputs
from ..taps import INPUT_SUFFIX, CaptureNameError, original_call, resolve
from ..tracing.errors import LXTError
from ..tracing.modes import in_eval_mode

__all__ = ["INPUT_SUFFIX", "AttentionPlace", "PlaceError", "attention_places", "graph_for", "module_at",
           "resolve_places"]


class PlaceError(LXTError, ValueError):
    """A place that exists but cannot be used for what was asked (e.g. ``ablate`` on a module without weights
    that hold its channels), or a neuron index outside the place."""


@in_eval_mode
def graph_for(model: nn.Module, inputs: Any = None, tokenizer: Any = None, composite: Any = None, *,
              attention_mask: Tensor | None = None, images: Any = None, audio: Any = None,
              processor: Any = None) -> Rewritten:
    """The rewritten graph ``explain`` runs for ``model`` and its inputs, given as to :func:`lxt_fx.explain`
    (cached: the same object)."""
    model = check_model(model)
    composite = resolve_composite(composite, model)
    call = model_call(model, inputs, tokenizer=tokenizer, attention_mask=attention_mask, images=images,
                      audio=audio, processor=processor)
    with torch.no_grad():
        tensors, static = split_inputs(model, call)
    return rewritten_graph(model, composite, tensors, static)


def resolve_places(graph: Rewritten, places: Sequence[str]) -> dict[str, str]:
    """``{place: node name}`` (a glob expands to one entry per module); unknown → ``CaptureNameError``."""
    return resolve(graph, list(places))


def module_at(model: nn.Module, place: str) -> tuple[str, nn.Module, bool]:
    """``(module path, module, is_input)`` of one concrete place; an unknown path raises
    :class:`~lxt_fx.taps.CaptureNameError` with the closest module paths."""
    is_input = place.endswith(INPUT_SUFFIX)
    path = place.removesuffix(INPUT_SUFFIX)
    modules = dict(model.named_modules())
    if path in modules and path:
        return path, modules[path], is_input
    if any(c in path for c in "*?["):
        hits = [p for p in modules if p and fnmatch.fnmatchcase(p, path)]
        if len(hits) == 1:
            return hits[0], modules[hits[0]], is_input
        suffix = INPUT_SUFFIX if is_input else ""
        raise PlaceError(f"place {place!r} is a glob that matches {len(hits)} modules here "
                         f"({', '.join(repr(h + suffix) for h in hits[:4])}{', …' if len(hits) > 4 else ''}); "
                         "give one place" if hits else f"place {place!r} matches no module")
    close = difflib.get_close_matches(path, [p for p in modules if p], n=5, cutoff=0.6)
    hint = f"did you mean {', '.join(repr(c + (INPUT_SUFFIX if is_input else '')) for c in close)}? " if close else ""
    raise CaptureNameError(f"place {place!r} names no module of {type(model).__name__}; {hint}places are module "
                           "paths as in model.named_modules(), optionally ending in ':input'")


# ---- attention heads ------------------------------------------------------------------------------------

_SHAPE_OPS = {"view", "reshape", "_unsafe_view", "transpose", "permute", "contiguous", "clone", "to",
              "_to_copy", "flatten", "dropout", "alias", "expand", "detach", "type_as", "copy"}
_PROJECTIONS = {"linear", "addmm", "mm", "matmul", "bmm", "conv1d"}


def _op(node: fx.Node) -> str:
    target = node.meta.get("lxt_original_target", node.target)
    name = getattr(target, "__name__", str(target))
    return name.split(".")[0]


@dataclass(frozen=True)
class AttentionPlace:
    """One attention layer: ``node`` is the input of its output projection (``[..., heads · head_dim]``,
    head-major), ``heads`` its head count, ``path`` the module path of the projection."""

    node: str
    heads: int
    path: str


def _attention_outputs(nodes: Sequence[fx.Node]) -> list[fx.Node]:
    """Per layer, the node holding the per-head attention output ``[batch, heads, seq, head_dim]``: an SDPA
    (or any fused attention) node, or the ``probs @ v`` matmul that follows a softmax."""
    outs = []
    for n in nodes:
        if n.op != "call_function":
            continue
        op = _op(n)
        if "scaled_dot_product" in op or "flash_attention" in op or "efficient_attention" in op:
            outs.append(n)
        elif op in ("softmax", "_softmax"):
            frontier, seen = [n], set()
            while frontier:
                cur = frontier.pop()
                for user in cur.users:
                    if user.name in seen:
                        continue
                    seen.add(user.name)
                    uop = _op(user)
                    if uop in _SHAPE_OPS:
                        frontier.append(user)
                    elif uop in ("matmul", "bmm") and original_call(user)[1][:1] == (cur,):
                        outs.append(user)
    return [n for n in outs if isinstance(n.meta.get("val"), Tensor) and n.meta["val"].dim() == 4]


def attention_places(graph: Rewritten) -> list[AttentionPlace]:
    """Every attention layer of the captured graph, in graph (= layer) order."""
    from ..tracing.meta import module_path

    nodes = list(graph.module.graph.nodes)
    places = []
    for out in _attention_outputs(nodes):
        heads = int(out.meta["val"].shape[1])
        cur, found = out, None
        for _ in range(16):  # follow the shape ops to the output projection
            users = list(cur.users)
            proj = [u for u in users if _op(u) in _PROJECTIONS]
            if proj:
                found = proj[0]
                break
            shape = [u for u in users if _op(u) in _SHAPE_OPS]
            if len(shape) != 1:
                break
            cur = shape[0]
        if found is None or cur is out:
            continue
        if isinstance(cur.meta.get("val"), Tensor) and cur.meta["val"].shape[-1] % heads == 0:
            places.append(AttentionPlace(cur.name, heads, module_path(found)))
    return places
