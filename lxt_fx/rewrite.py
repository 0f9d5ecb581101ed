"""Apply a composite to a captured graph: relevance-path analysis, rule decisions, node substitution.

The pass, in three steps over the fx graph (no string surgery, no re-tracing):

1. **decide** — in topological order, track which nodes carry relevance (data flow from the relevance
   input, e.g. ``inputs_embeds``) and ask the composite for a rule for every ``call_function`` node with at
   least one carrying input. A rule that stops relevance (``Stop``) makes its output constant, so a later
   product with it is linear and needs no rule (RoPE, scaling, a detached norm scale).
2. **path** — in reverse order, keep the carrying nodes whose value reaches the graph output through
   carrying edges: the relevance path. Non-linear ops on it without a decision are *unhandled*.
3. **apply** — each decided node's target becomes its rule's GxI function, called as
   ``rule_fn(original_op, *args, **kwargs, **rule_params)``: an opaque ``call_function`` node whose
   metadata (module path, source line) is kept; then ``recompile()``.
"""

from __future__ import annotations

import contextlib
import contextvars
import operator
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import torch
from torch import fx

from .ops import (
    IGNORED,
    LINEAR,
    PRODUCTS,
    SELECTION,
    SHAPE_ONLY,
    factors,
    grad_disabled,
    is_linear_custom,
    op_name,
    packet,
    returns_view,
    writes_first_argument,
)
from .rules.base import Position, Rule, arg_at
from .tracing.errors import LXTError
from .tracing.meta import module_class, module_path, source_line

aten = torch.ops.aten


@dataclass(frozen=True)
class NodeInfo:
    """What a predicate may ask about a node besides the node itself.

    ``carrying``: positions of the arguments that carry relevance (an index, or ``(index, element)`` inside a
    list argument, see :func:`carrying_positions`);
    ``reachable``: names of all nodes that depend on the relevance input, ignoring stop decisions."""

    carrying: tuple[Position, ...]
    reachable: frozenset[str]


class Decider(Protocol):
    """What :func:`plan` asks of a composite (:class:`lxt_fx.composites.Composite` is one)."""

    name: str

    def decide(self, node: fx.Node, info: NodeInfo) -> tuple[Rule | None, int | None]:
        """(rule, entry index) for ``node``; (None, index) when an entry maps it to None; (None, None) when
        no entry fits."""
        ...

    def region_members(self, nodes: Iterable[fx.Node], info: NodeInfo) -> list[tuple[Rule, list[fx.Node]]]:
        """For each region rule, the ``call_function`` nodes its pattern matches, grouped by module path."""
        ...


class UnhandledOpError(LXTError):
    """``strict=True`` and non-linear ops on the relevance path got no rule."""

    def __init__(self, unhandled: list[NodeRow], composite: str) -> None:
        self.unhandled = unhandled
        lines = "\n".join(f"  - {r.name}: {r.op} in {r.module_path or '<top>'} ({r.module_class}) "
                          f"at {r.source}" for r in unhandled)
        super().__init__(f"composite {composite!r} leaves {len(unhandled)} non-linear op(s) on the relevance "
                         f"path without a rule:\n{lines}\n  what to do: add (pattern → rule) entries for "
                         "them, e.g. composite.extend([(op, lxt_fx.rules.Identity())]), or pass strict=False")


@dataclass
class NodeRow:
    """One graph node in a report."""

    name: str
    op: str
    module_path: str
    module_class: str
    source: str
    rule: str = ""
    carrying: tuple[Position, ...] = ()


@dataclass
class RewriteReport:
    """What a rewrite did: every rewritten node, every relevance-path op left without a decision; and how
    the graph was captured (``capture_note``: stamped from a short export, a full export and why, or read
    from the disk cache, see :mod:`lxt_fx.tracing.stamp`)."""

    composite: str
    model_class: str
    rewritten: list[NodeRow] = field(default_factory=list)
    unhandled: list[NodeRow] = field(default_factory=list)
    path_nodes: int = 0
    graph_nodes: int = 0
    capture_seconds: float = 0.0
    rewrite_seconds: float = 0.0
    capture_note: str = ""

    def rule_counts(self) -> dict[str, int]:
        """How many nodes each rule was applied to."""
        counts: dict[str, int] = {}
        for row in self.rewritten:
            counts[row.rule] = counts.get(row.rule, 0) + 1
        return counts

    def to_dict(self) -> dict[str, Any]:
        """The report as plain dicts and lists (``dataclasses.asdict``), e.g. for JSON."""
        return asdict(self)

    # Renderers live in lxt_fx.render.rewrite_report (a layer below); imported on use.
    def __rich__(self) -> Any:
        from .render.rewrite_report import rewrite_rich

        return rewrite_rich(self)

    def _repr_html_(self) -> str:
        from .render.rewrite_report import rewrite_html

        return rewrite_html(self)

    def to_networkx(self, graph: fx.GraphModule | None = None) -> Any:
        """The rewritten nodes (or, given the rewritten ``graph``, every node) as a networkx DiGraph."""
        from .render.rewrite_report import rewrite_networkx

        return rewrite_networkx(self, graph)

    def __str__(self) -> str:
        head = (f"RewriteReport({self.model_class}, composite={self.composite!r}): {len(self.rewritten)} nodes "
                f"rewritten, {len(self.unhandled)} unhandled, {self.path_nodes}/{self.graph_nodes} nodes on "
                f"the relevance path; rules: {self.rule_counts()}"
                + (f"\n  capture: {self.capture_note}" if self.capture_note else ""))
        rows = [f"  {r.name:<28} {r.op:<40} {r.rule:<14} {r.module_path}" for r in self.rewritten]
        bad = [f"  UNHANDLED {r.name:<18} {r.op:<40} {r.module_path} {r.source}" for r in self.unhandled]
        return "\n".join([head, *rows, *bad])


def carrying_positions(node: fx.Node, carries: set[fx.Node]) -> tuple[Position, ...]:
    """The positions of ``node``'s arguments that carry relevance: ``i`` for a positional argument, and
    ``(i, j)`` for element ``j`` of a list or tuple argument ``i`` (``einsum(eq, [q, k])`` → ``((1, 0),
    (1, 1))``; ``cat([a, b])`` → ``((0, 0), (0, 1))``), so that a product whose factors arrive in a list is
    seen as a product. Shape-only arguments (``expand_as``'s second) carry nothing."""
    shape_only = SHAPE_ONLY.get(packet(node.target), frozenset())
    found: list[Position] = []

    def hits(arg: Any) -> bool:
        hit = False

        def visit(a: fx.Node) -> fx.Node:
            nonlocal hit
            hit = hit or a in carries
            return a

        fx.node.map_arg(arg, visit)
        return hit

    for i, arg in enumerate(node.args):
        if i in shape_only:
            continue
        if isinstance(arg, (list, tuple)):
            found += [(i, j) for j, element in enumerate(arg) if hits(element)]
        elif hits(arg):
            found.append(i)
    return tuple(found)


def describe_positions(carrying: Iterable[Position]) -> str:
    """Readable carrying positions: ``0, 1`` or ``1[0], 1[1]`` (elements of the list argument 1)."""
    return ", ".join(f"{p[0]}[{p[1]}]" if isinstance(p, tuple) else str(p) for p in carrying)


def _has_float_value(node: fx.Node) -> bool:
    val = node.meta.get("val")
    vals = val if isinstance(val, (tuple, list)) else [val]
    # complex values carry relevance too: a Fourier mixing (FNet's ``fft_fftn(x).real``) is linear in x, and
    # a rotary embedding computed as a complex product (DeepSeek-V2, Llama 4) carries
    return any(isinstance(v, torch.Tensor) and (v.is_floating_point() or v.is_complex()) for v in vals)


def _needs_rule(node: fx.Node, carrying: tuple[Position, ...]) -> bool:
    p = packet(node.target)
    if node.target is operator.getitem or p in IGNORED or p in SELECTION:
        return False
    if p in PRODUCTS:
        return len(factors(node.target, carrying)) >= 2
    if p in (aten.div, aten.div_):
        return 1 in carrying
    if is_linear_custom(node.target):
        return carrying != (0,)
    if p is aten.where:
        return 0 in carrying
    return p not in LINEAR


@dataclass
class Plan:
    """The decisions for one graph: rule and carrying inputs per node name, and the relevance path."""

    decisions: dict[str, tuple[Rule, tuple[Position, ...]]]
    carrying: dict[str, tuple[Position, ...]]
    on_path: set[str]
    unhandled: list[str]
    inputs: tuple[str, ...]
    regions: dict[str, str] = field(default_factory=dict)  # region output node → its input node
    absorbed: set[str] = field(default_factory=set)  # nodes inside a region (backward rerouted)
    # relevance places inside the graph: node name → the input it stands for (a dual encoder's token
    # embedding lookup → "inputs_embeds"); listed in ``inputs`` too, see :func:`relevance_place`
    places: dict[str, str] = field(default_factory=dict)
    # in-place write of a carrying value into a buffer that carried none (``buf[..., :d].copy_(k)``):
    # writer node → the buffer it writes (the base tensor of the written view), in graph order
    writes: dict[str, str] = field(default_factory=dict)
    # a graph pass that ran on the captured graph before the decisions (a position-aware composite inserts
    # its position places, :mod:`lxt_fx.composites.palrp`): run it again on a fresh copy before ``apply``
    prepare: Any = None


def _regions(nodes: list[fx.Node], composite: Decider, reachable: set[fx.Node]
             ) -> dict[str, tuple[Rule, fx.Node, set[str]]]:
    """Region output name → (rule, region input node, member names) for every module region that is one
    element-wise function: one relevance-carrying input, one output used outside, ≥ 2 non-linear ops."""
    info = NodeInfo((), frozenset(n.name for n in reachable))
    found = {}
    for rule, members in composite.region_members(nodes, info):
        names = {m.name for m in members}
        inputs = {a for m in members for a in m.all_input_nodes if a.name not in names and a in reachable}
        outputs = [m for m in members if any(u.name not in names for u in m.users)]
        nonlinear = [m for m in members if m in reachable and _needs_rule(m, (0,))]
        if len(inputs) == 1 and len(outputs) == 1 and len(nonlinear) >= 2:
            found[outputs[0].name] = (rule, inputs.pop(), names)
    return found


def _is_source(node: fx.Node, inputs: tuple[str, ...]) -> bool:
    """A relevance input: a named placeholder, or a named node inside the graph (a relevance place)."""
    return node.name in inputs and node.op in ("placeholder", "call_function")


def alias_source(node: fx.Node) -> fx.Node | None:
    """The node whose storage ``node``'s value shares: argument 0 of a view (``slice``, ``transpose``) or of an
    in-place op (``copy_``, ``mul_``); None for anything else."""
    if node.op != "call_function" or not node.args or not isinstance(node.args[0], fx.Node):
        return None
    return node.args[0] if returns_view(node.target) or writes_first_argument(node.target) else None


class _Buffers:
    """Storage tracking for in-place writes, in graph order.

    ``buf = k.new_empty(...); buf[..., :d].copy_(k_nope); buf[..., d:].copy_(k_rot)`` carries ``k_nope`` and
    ``k_rot`` from the writes on, though no data-flow edge leads from them to ``buf``: after a write of a
    carrying value, the written base and every view of it carry (:meth:`written`); a node that reads the
    base or a view after a write makes that write part of the relevance path (:meth:`writers_before`)."""

    def __init__(self) -> None:
        self.base: dict[fx.Node, fx.Node] = {}           # node → the base whose storage it views
        self.views: dict[fx.Node, list[fx.Node]] = {}    # base → it and every view of it, so far
        self.writers: dict[fx.Node, list[fx.Node]] = {}  # base → the carrying writes into it, in order
        self.index: dict[fx.Node, int] = {}

    def see(self, node: fx.Node, index: int) -> None:
        source = alias_source(node)
        base = self.base.get(source, source) if source is not None else node
        self.base[node] = base
        self.views.setdefault(base, []).append(node)
        self.index[node] = index

    def written(self, writer: fx.Node) -> list[fx.Node]:
        """Record ``writer`` (an in-place op whose written argument carried nothing) as a carrying write;
        returns the base and its views, which carry from now on."""
        base = self.base[writer]
        self.writers.setdefault(base, []).append(writer)
        return self.views[base]

    def writers_before(self, node: fx.Node, reader: fx.Node | None) -> list[fx.Node]:
        """The carrying writes into ``node``'s storage that ran before ``reader`` (None: the graph output)."""
        base = self.base.get(node)
        found = self.writers.get(base, []) if base is not None else []
        limit = self.index.get(reader, len(self.index)) if reader is not None else len(self.index)
        return [w for w in found if self.index[w] < limit]


def _writes_buffer(node: fx.Node, carrying: tuple[Position, ...]) -> bool:
    """An in-place op that writes a carrying value into an argument 0 that carried nothing."""
    return writes_first_argument(node.target) and bool(carrying) and 0 not in carrying


def plan(gm: fx.GraphModule, composite: Decider, inputs: Iterable[str],
         places: dict[str, str] | None = None) -> Plan:
    """Decide a rule per node (steps 1 and 2 of the module docstring); changes nothing.

    ``inputs``: node names relevance starts from — placeholders, or nodes inside the graph named in
    ``places`` (node name → the input it stands for), whose value is read as a relevance input."""
    inputs = tuple(inputs) + tuple(n for n in (places or {}) if n not in inputs)
    nodes = list(gm.graph.nodes)
    buffers = _Buffers()
    for i, node in enumerate(nodes):
        buffers.see(node, i)
    reachable: set[fx.Node] = set()
    for node in nodes:
        if _is_source(node, inputs):
            reachable.add(node)
        elif node.op == "call_function" and _has_float_value(node):
            carrying = carrying_positions(node, reachable)
            if carrying:
                reachable.add(node)
            if _writes_buffer(node, carrying):
                reachable.update(v for v in buffers.views[buffers.base[node]] if buffers.index[v] < buffers.index[node])
    reachable_names = frozenset(n.name for n in reachable)
    regions = _regions(nodes, composite, reachable)
    absorbed = {name for out, (_, _, members) in regions.items() for name in members if name != out}

    carries: set[fx.Node] = set()
    decisions: dict[str, tuple[Rule, tuple[Position, ...]]] = {}
    carrying_of: dict[str, tuple[Position, ...]] = {}
    writes: dict[str, str] = {}
    for node in nodes:
        if _is_source(node, inputs):
            carries.add(node)
            continue
        if node.name in absorbed:
            continue
        if node.name in regions:
            rule, source, _ = regions[node.name]
            if source in carries:
                decisions[node.name] = (rule, (0,))
                carrying_of[node.name] = (0,)
                carries.add(node)
            continue
        if node.op != "call_function" or not _has_float_value(node):
            continue
        carrying = carrying_positions(node, carries)
        if not carrying or packet(node.target) in IGNORED or grad_disabled(node):
            continue
        carrying_of[node.name] = carrying
        rule, _ = composite.decide(node, NodeInfo(carrying, reachable_names))
        if rule is not None:
            decisions[node.name] = (rule, carrying)
            if rule.stops:
                continue
        carries.add(node)
        if _writes_buffer(node, carrying):
            carries.update(v for v in buffers.written(node) if buffers.index[v] <= buffers.index[node])
            writes[node.name] = buffers.base[node].name

    on_path: set[str] = set()

    def reach(arg: Any, reader: fx.Node | None) -> None:
        """Put the carrying nodes in ``arg`` on the path, with the writes into them that ``reader`` sees."""
        def visit(a: fx.Node) -> fx.Node:
            if a in carries:
                on_path.add(a.name)
                on_path.update(w.name for w in buffers.writers_before(a, reader))
            return a

        fx.node.map_arg(arg, visit)

    for node in reversed(nodes):
        if node.op == "output":
            reach(node.args, None)
        elif node.name in on_path and node.name in regions:
            on_path.add(regions[node.name][1].name)
        elif node.name in on_path and node.name in carrying_of:
            rule = decisions.get(node.name, (None,))[0]
            if rule is not None and rule.stops:
                continue
            flows = carrying_of[node.name] if rule is None else rule.flows(carrying_of[node.name], node.target)
            for position in flows:
                reach(arg_at(node.args, position), node)
    unhandled = [n.name for n in nodes if n.name in on_path and n.name in carrying_of
                 and n.name not in decisions and _needs_rule(n, carrying_of[n.name])]
    region_inputs = {out: source.name for out, (_, source, _) in regions.items() if out in decisions}
    return Plan(decisions, carrying_of, on_path, unhandled, inputs, region_inputs, absorbed,
                places=dict(places or {}), writes={w: b for w, b in writes.items() if w in on_path})


def row(node: fx.Node, rule: str = "", carrying: tuple[Position, ...] = ()) -> NodeRow:
    """A report row for ``node`` (before it is rewritten)."""
    return NodeRow(node.name, op_name(node.target), module_path(node), module_class(node), source_line(node),
                   rule, carrying)


def apply(gm: fx.GraphModule, the_plan: Plan, report: RewriteReport) -> fx.GraphModule:
    """Substitute each decided node's target with its rule's GxI function and recompile (step 3)."""
    by_name = {n.name: n for n in gm.graph.nodes}
    for name, (rule, carrying) in the_plan.decisions.items():
        node = by_name[name]
        fn, extra = rule.gxi(node.target, carrying)
        if name in the_plan.regions:
            entry = row(node, rule.name, carrying)
            entry.op = f"region {module_class(node)}"
            report.rewritten.append(entry)
            with gm.graph.inserting_after(node):
                rerouted = gm.graph.call_function(fn, (by_name[the_plan.regions[name]], node), extra)
            rerouted.meta.update({k: v for k, v in node.meta.items() if k in ("nn_module_stack", "stack_trace",
                                                                              "val")})
            rerouted.meta["lxt_rule"] = rule
            node.replace_all_uses_with(rerouted, delete_user_cb=lambda user, new=rerouted: user is not new)
            continue
        report.rewritten.append(row(node, rule.name, carrying))
        node.meta["lxt_rule"] = rule
        node.meta["lxt_original_target"] = node.target
        node.args = (node.target, *node.args)
        node.kwargs = {**node.kwargs, **extra}
        node.target = fn
    for name, key in getattr(the_plan, "places", {}).items():
        node = by_name[name]
        node.meta["lxt_original_target"] = node.target
        node.meta["lxt_place"] = key
        node.args = (node.target, *node.args)
        node.kwargs = {**node.kwargs, "lxt_place": key}
        node.target = relevance_place
    report.unhandled = [row(by_name[name]) for name in the_plan.unhandled]
    report.path_nodes = len(the_plan.on_path)
    report.graph_nodes = len(by_name)
    gm.graph.lint()
    gm.recompile()
    return gm


# ---- relevance places inside the graph ------------------------------------------------------------------

_RECORDING: contextvars.ContextVar[dict[str, list[torch.Tensor]] | None] = contextvars.ContextVar(
    "lxt_fx_relevance_places", default=None)


def relevance_place(op: Any, *args: Any, lxt_place: str, **kwargs: Any) -> Any:
    """A relevance place: runs ``op`` (a token-embedding lookup); inside :func:`recording_places` with
    gradients enabled, its output becomes a tensor the caller can differentiate with respect to (a fresh
    view, or a fresh leaf when nothing before it requires grad) and is recorded under ``lxt_place``, so that
    relevance ``value ⊙ gradient`` is read there exactly as at an input. Elsewhere it is ``op`` itself."""
    out = op(*args, **kwargs)
    seen = _RECORDING.get()
    if seen is None or not torch.is_grad_enabled() or not isinstance(out, torch.Tensor):
        return out
    out = out.view_as(out) if out.requires_grad else out.detach().requires_grad_(True)
    seen.setdefault(lxt_place, []).append(out)
    return out


@contextlib.contextmanager
def recording_places() -> Iterator[dict[str, list[torch.Tensor]]]:
    """Inside, every relevance place a rewritten graph runs records its value: ``{input name: [tensor, …]}``
    (one per place node, in graph order); differentiate with respect to them for their relevance."""
    seen: dict[str, list[torch.Tensor]] = {}
    token = _RECORDING.set(seen)
    try:
        yield seen
    finally:
        _RECORDING.reset(token)
