"""Components: the units circuits are made of, each a slice of one node of the captured graph.

A :class:`Component` is a head's output (its channels of the input of the attention output projection), an
MLP's output, one neuron of a place (a channel; ``"….mlp.down_proj:input"`` for the MLP neurons), the residual
stream after a block at one position, or a whole place. :func:`find_components` lists them for a captured
graph from kinds (``"heads"``, ``"mlp"``, ``"neurons"``, ``"resid"``) or place names.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from torch import Tensor, nn

from ..session import Rewritten
from ..taps import INPUT_SUFFIX, resolve
from .places import PlaceError, attention_places

__all__ = ["KINDS", "Component", "find_components", "mlp_paths"]

KINDS = ("heads", "mlp", "neurons", "resid")


@dataclass(frozen=True)
class Component:
    """One component: channels ``[start, stop)`` of graph node ``node`` (all when ``start`` is None), at
    sequence ``position`` (all positions when None). ``kind``: ``"head"``, ``"mlp"``, ``"neuron"``,
    ``"resid"`` or ``"place"``; ``layer`` the block index (None when the place is in no numbered block),
    ``index`` the head or neuron index, ``place`` the place it was named by."""

    kind: str
    place: str
    node: str
    layer: int | None = None
    index: int | None = None
    position: int | None = None
    start: int | None = None
    stop: int | None = None

    @property
    def label(self) -> str:
        """A short name: ``L3.H2``, ``L3.MLP``, ``L3.N17``, ``L3.resid@5``, or the place (``#channel``)."""
        layer = f"L{self.layer}." if self.layer is not None else ""
        if self.kind == "head":
            return f"{layer}H{self.index}"
        if self.kind == "mlp":
            return f"{layer}MLP"
        if self.kind == "resid":
            return f"{layer}resid@{self.position}"
        if self.kind == "neuron" and self.place.endswith(".mlp.down_proj" + INPUT_SUFFIX):
            return f"{layer}N{self.index}"
        suffix = "" if self.index is None else f"#{self.index}"
        return f"{self.place}{suffix}" + ("" if self.position is None else f"@{self.position}")


def _layer(path: str) -> int | None:
    found = re.findall(r"\.(\d+)(?:\.|$)", path)
    return int(found[0]) if found else None


def mlp_paths(model: nn.Module) -> list[str]:
    """Module paths of the MLP blocks (a module named ``mlp`` inside a numbered block), in layer order."""
    paths = [p for p, _ in model.named_modules() if p.endswith(".mlp") and _layer(p) is not None]
    return sorted(paths, key=lambda p: _layer(p) or 0)


def _mlp_neuron_place(model: nn.Module, mlp: str) -> str:
    """``"<last projection of the MLP>:input"``: the MLP's neurons (``down_proj``, GPT-2's ``c_proj``)."""
    modules = dict(model.named_modules())
    last = [p for p, m in modules.items() if p.startswith(mlp + ".") and
            (isinstance(m, nn.Linear) or type(m).__name__ == "Conv1D")]
    if not last:
        raise PlaceError(f"MLP {mlp!r} holds no Linear projection whose input are its neurons: name the place")
    return last[-1] + INPUT_SUFFIX


def _channels(graph: Rewritten, node: str) -> int:
    val = next(n for n in graph.module.graph.nodes if n.name == node).meta.get("val")
    if not isinstance(val, Tensor) or val.dim() < 2:
        raise PlaceError(f"node {node!r} holds no tensor with channels")
    return int(val.shape[-1])


def find_components(graph: Rewritten, model: nn.Module, kinds: Sequence[str], seq_len: int,
                    layers: Sequence[int] | None = None, positions: Sequence[int] | None = None) -> list[Component]:
    """The components of ``kinds`` (``"heads"``, ``"mlp"``, ``"neurons"``, ``"resid"``, or place names and
    globs: one component per channel of each) in ``graph``; ``layers`` keeps those blocks only; ``positions``:
    the positions of the residual-stream components (default every one of ``seq_len``)."""
    keep = None if layers is None else set(layers)
    out: list[Component] = []
    for kind in kinds:
        if kind == "heads":
            places = attention_places(graph)
            if not places:
                raise PlaceError(f"no attention layer with an output projection in the graph of "
                                 f"{type(model).__name__}: name the projection inputs as places instead")
            for p in places:
                layer, width = _layer(p.path), _channels(graph, p.node) // p.heads
                out += [Component("head", p.path + INPUT_SUFFIX, p.node, layer, h, None, h * width, (h + 1) * width)
                        for h in range(p.heads) if keep is None or layer in keep]
        elif kind in ("mlp", "neurons", "resid"):
            paths = [p for p in mlp_paths(model) if keep is None or _layer(p) in keep]
            if not paths:
                raise PlaceError(f"{type(model).__name__} has no module named '<block>.mlp': name the places")
            for path in paths:
                layer = _layer(path)
                if kind == "mlp":
                    out.append(Component("mlp", path, resolve(graph, [path])[path], layer))
                elif kind == "resid":
                    block = path.removesuffix(".mlp")
                    node = resolve(graph, [block])[block]
                    out += [Component("resid", block, node, layer, None, t)
                            for t in (range(seq_len) if positions is None else positions)]
                else:
                    place = _mlp_neuron_place(model, path)
                    node = resolve(graph, [place])[place]
                    out += [Component("neuron", place, node, layer, i, None, i, i + 1)
                            for i in range(_channels(graph, node))]
        else:
            for place, node in resolve(graph, [kind]).items():
                layer = _layer(place)
                if keep is not None and layer not in keep:
                    continue
                out += [Component("neuron", place, node, layer, i, None, i, i + 1)
                        for i in range(_channels(graph, node))]
    return out
