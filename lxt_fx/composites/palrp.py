"""PA-LRP: AttnLRP with positional encodings as inputs of their own (Bakish et al. 2025, arXiv 2506.02138).

``palrp`` is the ``attnlrp`` composite plus two entries and a graph pass that makes every positional table
a *relevance place* (see :func:`lxt_fx.rewrite.relevance_place`): a tensor whose relevance ``P ⊙ ∂f/∂P`` is
read like an input's. The rules are :class:`~lxt_fx.rules.position.AdditivePosition` (Eq. 5) and
:class:`~lxt_fx.rules.position.RotaryPosition` (Eq. 10). Found from the graph's structure and parameter
names, never from a model type:

* **an additive table**: an ``add`` whose one operand is on the relevance path and whose other one is
  computed (through lookups, views, slices, casts, interpolation, sums of tables) from a parameter or buffer
  named like a position table (``position``, ``wpe``, ``pos_embed``, ``embed_positions``) — GPT-2's
  ``wpe``, BERT's and ViT's ``position_embeddings``, CLIP's ``position_embedding``, Whisper's sinusoidal
  ``embed_positions``. BERT's token-type embeddings are read the same way, under their own name;
* **a rotary table**: a product whose one operand is on the relevance path and whose other one is computed
  (through views, casts, scales, section splits) from a ``cos`` or ``sin`` — also inside a ``no_grad``
  region, where transformers computes its RoPE tables (LLaMA, Mixtral, Qwen2-VL's M-RoPE and 2-D vision
  RoPE).

Each such operand gets an ``expand_as`` node that broadcasts it to the other operand's shape first (a table shared over the
batch gets one relevance per row), keyed ``positions:<table>`` (``positions:transformer.wpe``,
``positions:model.rotary_emb``) or ``token_types:<table>``. ``explain`` reads them into
``Attribution.position_relevance`` and ``Attribution.position_maps``.
"""

from __future__ import annotations

import operator
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, fx

from ..ops import grad_disabled, packet
from ..rules.position import AdditivePosition, RotaryPosition
from ..tracing.meta import _ENTRY_PREFIX, module_path
from .attnlrp import attnlrp
from .composite import Composite

aten = torch.ops.aten

POSITION_NAMES = ("position", "wpe", "pos_embed", "embed_positions")
SEGMENT_NAMES = ("token_type",)
PLACE_PREFIXES = ("positions:", "token_types:")
_ADDS = frozenset({aten.add, aten.add_})
_PRODUCTS = frozenset({aten.mul, aten.mul_, aten.multiply})
# What a table passes through between its parameter (or its cos / sin) and the op that uses it.
_PASSING = frozenset({
    aten.embedding, aten.index, aten.index_select, aten.view, aten._unsafe_view, aten.reshape, aten.expand,
    aten.slice, aten.select, aten.unsqueeze, aten.squeeze, aten.permute, aten.transpose, aten.flatten,
    aten.contiguous, aten.clone, aten.alias, aten.to, aten._to_copy, aten.type_as, aten.cat, aten.split,
    aten.split_with_sizes, aten.chunk, aten.add, aten.mul, aten.div, aten.upsample_bicubic2d,
    aten.upsample_bilinear2d, aten._upsample_bicubic2d_aa, aten.detach, aten.lift_fresh_copy, aten.repeat,
    aten.stack,
})


def _table_name(node: fx.Node) -> str:
    """The table's name in the model (``transformer.wpe``), without the capture's entry prefix."""
    name = str(node.target).removesuffix(".weight")
    return name[len(_ENTRY_PREFIX):] if name.startswith(_ENTRY_PREFIX) else name


def _trace_back(node: fx.Node, depth: int = 12) -> Iterable[fx.Node]:
    """``node`` and what it is computed from through table-passing ops (and getitem), breadth first."""
    frontier, seen = [node], set()
    for _ in range(depth):
        following = []
        for n in frontier:
            if n in seen:
                continue
            seen.add(n)
            yield n
            if n.op != "call_function":
                continue
            if n.target is operator.getitem or packet(n.target) in _PASSING or grad_disabled(n):
                following.extend(n.all_input_nodes)
        frontier = following


def _additive_source(operand: fx.Node, gm: fx.GraphModule) -> tuple[str, str] | None:
    """(kind, table name) when ``operand`` is computed from a position or token-type table."""
    found = None
    for n in _trace_back(operand):
        if n.op != "get_attr":
            continue
        leaf = str(n.target).lower()
        if any(k in leaf for k in POSITION_NAMES):
            return "positions", _table_name(n)
        if any(k in leaf for k in SEGMENT_NAMES):
            found = ("token_types", _table_name(n))
    return found


def _submodule_has_trig(node: fx.Node, gm: fx.GraphModule) -> bool:
    sub = next((a for a in node.args if isinstance(a, fx.Node) and a.op == "get_attr"), None)
    module = getattr(gm, str(sub.target), None) if sub is not None else None
    graph = getattr(module, "graph", None)
    return graph is not None and any(packet(n.target) in (aten.cos, aten.sin) for n in graph.nodes
                                     if n.op == "call_function")


def _rotary_source(operand: fx.Node, gm: fx.GraphModule) -> str | None:
    """The module path of the rotary table ``operand`` is computed from (its cos / sin), or None."""
    for n in _trace_back(operand):
        if n.op != "call_function":
            continue
        if packet(n.target) in (aten.cos, aten.sin) or (grad_disabled(n) and _submodule_has_trig(n, gm)):
            return module_path(n) or "rotary"
    return None


def _reachable(gm: fx.GraphModule, inputs: Iterable[str]) -> set[fx.Node]:
    """The float-valued nodes that depend on ``inputs`` (a size read off an input carries nothing)."""
    names = set(inputs)
    found: set[fx.Node] = set()
    for node in gm.graph.nodes:
        if node.name in names or (_float(node) and any(a in found for a in node.all_input_nodes)):
            found.add(node)
    return found


def _float(node: Any) -> bool:
    val = node.meta.get("val") if isinstance(node, fx.Node) else None
    return isinstance(val, Tensor) and val.is_floating_point()


def insert_position_places(gm: fx.GraphModule, inputs: Iterable[str]) -> dict[str, str]:
    """Put an ``expand_as`` node (the table broadcast to the shape of the other operand: a table shared over
    the batch or the heads gets an entry per row and head, so its relevance is per row) before every positional operand (see the module docstring) of
    ``gm`` and return ``{node name: place key}``. Deterministic: a fresh copy of the same graph gets the same
    node names. ``inputs``: the names of the nodes relevance starts from."""
    carrying = _reachable(gm, inputs)
    places: dict[str, str] = {}
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.name in places:
            continue
        p = packet(node.target)
        if p not in _ADDS and p not in _PRODUCTS:
            continue
        operands = [(i, a) for i, a in enumerate(node.args[:2]) if isinstance(a, fx.Node)]
        if len(operands) != 2 or sum(a in carrying for _, a in operands) != 1:
            continue
        (i, table), = [(i, a) for i, a in operands if a not in carrying]
        like = node.args[1 - i]
        if not _float(table) or not _float(like):
            continue
        if p in _ADDS:
            source = _additive_source(table, gm)
            if source is None:
                continue
            key, kind = f"{source[0]}:{source[1]}", "additive"
        else:
            rotary = _rotary_source(table, gm)
            if rotary is None:
                continue
            key, kind = f"positions:{rotary}", "rotary"
        if table.meta["val"].dim() > like.meta["val"].dim():
            continue
        with gm.graph.inserting_before(node):  # the table broadcast to the consumer's shape (per row, head)
            place = gm.graph.call_function(aten.expand_as.default, (table, like))
        place.meta.update({k: v for k, v in node.meta.items() if k in ("nn_module_stack", "stack_trace")})
        place.meta["val"] = like.meta["val"]
        place.meta["lxt_position"] = kind
        args = list(node.args)
        args[i] = place
        node.args = tuple(args)
        places[place.name] = key
    gm.graph.lint()
    gm.recompile()
    return places


def _takes(kind: str):
    def predicate(node: fx.Node) -> bool:
        """Whether one of the node's operands is a positional table of this kind (a PA-LRP place)."""
        return any(a.meta.get("lxt_position") == kind for a in node.all_input_nodes)

    predicate.__name__ = f"takes_{kind}_position"
    return predicate


takes_additive_position = _takes("additive")
takes_rotary_position = _takes("rotary")


class PositionAware(Composite):
    """A composite whose rewrite also makes positional tables relevance places
    (:func:`insert_position_places`): the session calls :meth:`position_places` on the captured graph."""

    def position_places(self, gm: fx.GraphModule, inputs: Iterable[str]) -> dict[str, str]:
        """Insert the position places into ``gm``; ``{node name: key}``."""
        return insert_position_places(gm, inputs)

    def extend(self, other: Composite | Iterable[tuple[Any, Any]], name: str | None = None) -> PositionAware:
        """A new position-aware composite: this one's entries, then ``other``'s."""
        more = other.entries if isinstance(other, Composite) else tuple(other)
        other_name = other.name if isinstance(other, Composite) else "custom"
        return PositionAware(self.entries + more, name or f"{self.name}|{other_name}")


palrp = PositionAware([
    (takes_additive_position, AdditivePosition()),   # Eq. 5
    (takes_rotary_position, RotaryPosition()),                                   # Eq. 10
    *attnlrp.entries,
], name="palrp")
