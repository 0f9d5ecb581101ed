"""Latent relevance: ``x ⊙ grad`` at chosen nodes, edges or modules, from one ordinary backward pass.

A graph pass over a *copy* of the rewritten ``GraphModule`` (a fresh ``captured.module()`` — which shares
the model's parameters, never copies or changes them — with the same plan re-applied). It inserts a tap
(a ``call_module`` node holding a :class:`Tap`) where asked:

* a **node tap** after a node: every user of the node reads the tap's output, so the gradient arriving at
  the tap is the node's whole gradient and ``x ⊙ grad`` is the relevance of that tensor (per neuron);
* an **edge tap** between a node and one argument slot of one consumer: the gradient arriving there is
  that consumer's share only — what conservation bookkeeping needs;
* a **value tap** (forward only): checks the value is finite, nothing else.

A tap returns ``x.view_as(x)`` — a fresh autograd node with the same value — and registers a gradient hook
on it, so the forward values are unchanged and the backward (``.backward()`` or ``torch.autograd.grad``,
run by whoever drives the graph) fills a :class:`Recorder`. ``0 · ±inf`` counts as 0 in relevance
(masked logits carry no relevance, as in the explicit softmax rule).
"""

from __future__ import annotations

import difflib
import fnmatch
import operator
import weakref
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, fx, nn

from .ops import MAY_RETURN_INPUT, packet, returns_view, writes_first_argument, written_in_place
from .rewrite import Plan, RewriteReport, apply
from .tracing.errors import LXTError
from .tracing.meta import module_path
from .tracing.offload import loaded

if TYPE_CHECKING:
    from .session import Rewritten

OUTPUT = "output"
INPUT_SUFFIX = ":input"  # ``"<module path>:input"``: the module's input rather than its output


class CaptureNameError(LXTError, KeyError):
    """A name given to ``explain(..., capture=[...])`` or ``Attribution.latent(name)`` that names nothing
    captured: no graph node, relevance input or module path of that name (close matches are listed)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


@dataclass(frozen=True)
class TapSpec:
    """Where one tap goes.

    ``node``: the producing node's name; ``consumer``: None for a node tap (all uses), else the consuming
    node's name (``"output"`` for the graph output) for an edge tap; ``slot``: which occurrence of ``node``
    among the consumer's node arguments (flattened args then kwargs) — ``mul(x, x)`` has slots 0 and 1;
    ``keep``: keep the per-neuron relevance tensor, not only its sum; ``value_only``: a forward check only."""

    key: str
    node: str
    consumer: str | None = None
    slot: int = 0
    keep: bool = False
    value_only: bool = False


@dataclass
class Record:
    """What one tap saw."""

    total: float = 0.0                  # Σ x ⊙ grad, float64
    relevance: Tensor | None = None     # x ⊙ grad per neuron (``keep=True``)
    value: Tensor | None = None         # x itself, the activation (``keep=True``)
    fired: bool = False                 # a gradient arrived
    value_order: int | None = None      # forward position of a non-finite value
    value_kind: str = ""                # "nan", "+inf", "-inf"
    grad_order: int | None = None       # backward position of a non-finite gradient
    grad_kind: str = ""
    relevance_order: int | None = None  # backward position of a non-finite relevance
    relevance_kind: str = ""


def nonfinite_kind(t: Tensor, allow_neg_inf: bool = False) -> str:
    """``""`` when every entry is finite, else which kinds occur (``"nan"``, ``"+inf"``, ``"-inf"``; of the
    real and imaginary parts of a complex tensor)."""
    if t.is_complex():
        t = torch.view_as_real(t.resolve_conj())
    if not t.is_floating_point() or bool(torch.isfinite(t).all()):
        return ""
    kinds = []
    if bool(torch.isnan(t).any()):
        kinds.append("nan")
    if bool(torch.isposinf(t).any()):
        kinds.append("+inf")
    if not allow_neg_inf and bool(torch.isneginf(t).any()):
        kinds.append("-inf")
    return ", ".join(kinds)


def relevance_of(x: Tensor, grad: Tensor) -> Tensor:
    """``x ⊙ grad`` in at least float32; entries with zero gradient are 0 (``0 · ±inf`` = 0). For a complex
    ``x`` (the inside of a Fourier mixing): ``Re(x ⊙ conj(grad))`` — torch's gradient of a real score ``L``
    is ``grad = ∂L/∂Re x + i ∂L/∂Im x``, so this is ``Re x ∂L/∂Re x + Im x ∂L/∂Im x``, Gradient×Input over
    the real and imaginary parts, and it telescopes through real-linear maps as ``x ⊙ grad`` does."""
    if x.is_complex() or grad.is_complex():
        dtype = torch.promote_types(torch.promote_types(x.dtype, grad.dtype), torch.complex64)
        r = (x.to(dtype) * grad.to(dtype).conj()).real
        return torch.where(grad == 0, torch.zeros((), dtype=r.dtype, device=r.device), r)
    dtype = torch.promote_types(torch.promote_types(x.dtype, grad.dtype), torch.float32)
    r = x.to(dtype) * grad.to(dtype)
    return torch.where(grad == 0, torch.zeros((), dtype=dtype, device=r.device), r)


class Recorder:
    """Collects what the taps of one graph saw in the last forward/backward; :meth:`reset` between runs."""

    def __init__(self, specs: Sequence[TapSpec] = (), excused_neg_inf: Iterable[str] = ()) -> None:
        self.specs = {s.key: s for s in specs}
        self.excused_neg_inf = frozenset(excused_neg_inf)
        self.records: dict[str, Record] = {}
        self._clock = 0

    def reset(self) -> None:
        self.records = {}
        self._clock = 0

    def _tick(self) -> int:
        self._clock += 1
        return self._clock

    def saw_value(self, spec: TapSpec, x: Tensor) -> None:
        rec = self.records.setdefault(spec.key, Record())
        order = self._tick()
        kind = nonfinite_kind(x.detach(), allow_neg_inf=spec.node in self.excused_neg_inf)
        if kind and rec.value_order is None:
            rec.value_order, rec.value_kind = order, kind

    def saw_grad(self, spec: TapSpec, x: Tensor, grad: Tensor) -> None:
        rec = self.records.setdefault(spec.key, Record())
        order = self._tick()
        rec.fired = True
        kind = nonfinite_kind(grad)
        if kind and rec.grad_order is None:
            rec.grad_order, rec.grad_kind = order, kind
        r = relevance_of(x, grad)
        kind = nonfinite_kind(r)
        if kind and rec.relevance_order is None:
            rec.relevance_order, rec.relevance_kind = order, kind
        rec.total += float(r.sum(dtype=torch.float64))
        if spec.keep:
            kept = r.detach().float()
            rec.relevance = kept if rec.relevance is None else rec.relevance + kept
            if rec.value is None:
                rec.value = x.detach().float()

    def totals(self) -> dict[str, float]:
        """Σ relevance per tap key (0.0 for taps no gradient reached)."""
        return {key: rec.total for key, rec in self.records.items()}

    def relevance(self) -> dict[str, Tensor]:
        """Per-neuron relevance of every ``keep`` tap a gradient reached."""
        return {key: rec.relevance for key, rec in self.records.items() if rec.relevance is not None}

    def values(self) -> dict[str, Tensor]:
        """The activation ``x`` of every ``keep`` tap a gradient reached (float32)."""
        return {key: rec.value for key, rec in self.records.items() if rec.value is not None}


class Tap(nn.Module):
    """The module a tap node calls: identity in value; records into its :class:`Recorder`."""

    def __init__(self, spec: TapSpec, recorder: Recorder, copy: bool = False, fresh: bool = False) -> None:
        super().__init__()
        self.spec = spec
        self.recorder = recorder
        self.copy = copy  # a later in-place op writes this value: keep a copy, not a view of it
        # the consumer writes this edge in place: hand it a fresh tensor (a hook on a view that is written in
        # place never fires; one on a fresh tensor receives the gradient of the value before the write)
        self.fresh = fresh

    def forward(self, x: Any) -> Any:
        if not isinstance(x, Tensor) or not (x.is_floating_point() or x.is_complex()):
            return x
        spec, recorder = self.spec, self.recorder
        if spec.value_only:
            recorder.saw_value(spec, x)
            return x
        if not x.requires_grad:
            recorder.records.setdefault(spec.key, Record())
            return x
        # a fresh autograd node: the gradient arriving here is this tap's share only
        y = x.clone() if self.fresh else x.view_as(x)
        value = x.detach().clone() if self.copy else x.detach()
        y.register_hook(lambda grad: recorder.saw_grad(spec, value, grad))
        return y

    def extra_repr(self) -> str:
        return repr(self.spec.key)


def fresh_rewritten(graph: Rewritten) -> fx.GraphModule:
    """A new copy of ``graph``'s rewritten module: ``captured.module()`` (the model's own parameters,
    shared, untouched) with the same plan applied again."""
    gm = graph.captured.module()
    if getattr(graph.plan, "prepare", None) is not None:
        graph.plan.prepare(gm)
    names = {n.name for n in gm.graph.nodes}
    missing = [name for name in graph.plan.decisions if name not in names]
    if missing:  # node names come from the same program, so this means the capture changed
        raise RuntimeError(f"a fresh copy of the captured graph lacks decided nodes {missing[:5]}")
    apply(gm, graph.plan, RewriteReport(graph.report.composite, graph.report.model_class))
    return gm


def original_call(node: fx.Node) -> tuple[Any, tuple, dict]:
    """``(target, args, kwargs)`` of ``node`` as captured, also after the rewrite made it a rule call."""
    target = node.meta.get("lxt_original_target")
    if target is not None and node.args and node.args[0] is target:
        return target, tuple(node.args[1:]), dict(node.kwargs)
    return node.target, tuple(node.args), dict(node.kwargs)


def rule_calls(gm: fx.GraphModule, the_plan: Plan) -> dict[str, fx.Node]:
    """Decision name → the node of rewritten ``gm`` that calls the rule's GxI function: the decided node
    itself, or, for a region rule, the node inserted after the region's output that reroutes its backward
    (it reads the region's input and output, and replaces the output for every other user)."""
    by_name = {n.name: n for n in gm.graph.nodes}
    regions = getattr(the_plan, "regions", {})
    out: dict[str, fx.Node] = {}
    for name, (rule, _) in the_plan.decisions.items():
        node = by_name.get(name)
        if node is None:
            continue
        if name in regions:
            calls = [u for u in node.users if u.op == "call_function" and u.meta.get("lxt_rule") is rule
                     and len(u.args) > 1 and u.args[1] is node]
            if calls:
                out[name] = calls[0]
            continue
        out[name] = node
    return out


def relevance_path(gm: fx.GraphModule, the_plan: Plan) -> set[str]:
    """Names of the nodes of rewritten ``gm`` through which relevance reaches the output: the plan's path,
    with each region's output (whose gradient the region's rule call bypasses) replaced by that call."""
    path = set(the_plan.on_path)
    for name in getattr(the_plan, "regions", {}):
        call = rule_calls(gm, the_plan).get(name)
        if call is not None and name in path:
            path.discard(name)
            path.add(call.name)
    return path


def _replace_slot(consumer: fx.Node, node: fx.Node, slot: int, new: fx.Node) -> None:
    """Replace occurrence number ``slot`` of ``node`` among ``consumer``'s arguments with ``new``."""
    seen = -1

    def swap(a: fx.Node) -> fx.Node:
        nonlocal seen
        if a is node:
            seen += 1
            if seen == slot:
                return new
        return a

    consumer.args = fx.node.map_arg(consumer.args, swap)
    consumer.kwargs = fx.node.map_arg(consumer.kwargs, swap)


def _writes(consumer: fx.Node, node: fx.Node) -> bool:
    """Whether ``consumer`` is an in-place op that writes ``node`` itself (its first tensor argument)."""
    target = consumer.meta.get("lxt_original_target", consumer.target)
    if not writes_first_argument(target):
        return False
    args = consumer.args[1:] if "lxt_original_target" in consumer.meta else consumer.args
    return bool(args) and args[0] is node


def _read_from_written(nodes: Iterable[fx.Node], written: set[str]) -> set[str]:
    """``written`` and every view of a written storage (``attn[..., i, :i]`` read before
    ``attn[..., i, :i] = …`` writes it through another view): a tap on one must keep a copy of the value it
    saw, or its relevance would be read off the value after the write."""
    found = set(written)
    for node in nodes:
        base = node
        while base.op == "call_function" and base.args and isinstance(base.args[0], fx.Node):
            origin = base.meta.get("lxt_original_target", base.target)
            if not (origin is operator.getitem or returns_view(origin)):
                break
            base = base.args[0]
            if base.name in written:
                found.add(node.name)
                break
    return found


def insert_taps(gm: fx.GraphModule, specs: Sequence[TapSpec], recorder: Recorder) -> fx.GraphModule:
    """Insert a tap per spec into ``gm`` (in place; pass a copy) and recompile. Edge taps go in first, so a
    node tap on the same node sees the sum of its edges' gradients."""
    graph = gm.graph
    nodes = {n.name: n for n in graph.nodes}
    output = next(n for n in graph.nodes if n.op == "output")
    ordered = sorted(specs, key=lambda s: (s.consumer is None, s.value_only))
    written = written_in_place(graph.nodes)
    kept = _read_from_written(graph.nodes, written)
    rewired: list[tuple[fx.Node, fx.Node]] = []
    for i, spec in enumerate(ordered):
        node = nodes[spec.node]
        name = f"lxt_tap_{i}"
        consumer = None if spec.consumer in (None, OUTPUT) else nodes[spec.consumer]
        # … or hands its input on as its own output (``type_as`` to the same dtype) that a later op writes
        fresh = consumer is not None and spec.slot == 0 and (_writes(consumer, node) or (
            packet(original_call(consumer)[0]) in MAY_RETURN_INPUT and consumer.name in written))
        gm.add_submodule(name, Tap(spec, recorder, copy=spec.node in kept, fresh=fresh))
        if spec.value_only:
            with graph.inserting_after(node):
                graph.call_module(name, (node,))
        elif spec.consumer is None:
            with graph.inserting_after(node):
                tap = graph.call_module(name, (node,))
            node.replace_all_uses_with(tap, delete_user_cb=lambda user, t=tap: user is not t)
        else:
            consumer = output if spec.consumer == OUTPUT else nodes[spec.consumer]
            with graph.inserting_before(consumer):
                tap = graph.call_module(name, (node,))
            _replace_slot(consumer, node, spec.slot, tap)
            if fresh:
                rewired.append((node, consumer))
    # the consumer wrote a copy, not the node: later readers of the node read the consumer's result instead
    position = {n: i for i, n in enumerate(graph.nodes)}
    for node, consumer in rewired:
        for user in list(node.users):
            if position[user] > position[consumer]:
                user.replace_input_with(node, consumer)
    graph.lint()
    gm.recompile()
    return gm


# ---- naming what to capture ------------------------------------------------------------------------------


def _external_users(node: fx.Node, inside: set[str]) -> bool:
    return any(u.op == "output" or u.name not in inside for u in node.users)


def resolve(graph: Rewritten, names: Sequence[str]) -> dict[str, str]:
    """``{requested name: node name}``. A name is a graph node (``"add_9"``), a relevance input
    (``"inputs_embeds"``), or a module path as in ``model.named_modules()`` (``"model.layers.3"``, a glob
    like ``"model.layers.*.mlp"`` expands to one entry per module): a module means its output, the last of
    its relevance-path nodes that is used outside it; ``"<module path>:input"`` means its input, the first
    relevance-path tensor made outside the module that a node inside it reads."""
    nodes = list(graph.module.graph.nodes)
    by_name = {n.name: n for n in nodes}
    on_path = graph.plan.on_path
    paths = sorted({module_path(n) for n in nodes if n.op == "call_function"} - {""})
    resolved: dict[str, str] = {}
    for name in names:
        if name in by_name:
            resolved[name] = name
            continue
        if f"tensors_{name}" in by_name:
            resolved[name] = f"tensors_{name}"
            continue
        is_input = name.endswith(INPUT_SUFFIX)
        pattern = name.removesuffix(INPUT_SUFFIX).removesuffix(".")
        concrete = [p for p in _module_roots(paths) if fnmatch.fnmatchcase(p, pattern)]
        if not concrete:
            raise CaptureNameError(_unknown(name, paths, nodes))
        for path in concrete:
            inside = [n for n in nodes if n.op == "call_function" and
                      (module_path(n) == path or module_path(n).startswith(path + "."))]
            members = {n.name for n in inside}
            if is_input:
                key = f"{path}{INPUT_SUFFIX}" if any(c in name for c in "*?[") else name
                resolved[key] = _module_input(path, inside, members, on_path)
                continue
            outs = [n for n in inside if n.name in on_path and _external_users(n, members)
                    and isinstance(n.meta.get("val"), Tensor)]
            if not outs:
                raise CaptureNameError(f"module {path!r} has no output on the relevance path (nothing in it "
                                       "carries relevance to the explained output): capture a module that "
                                       "the explained output depends on")
            resolved[path if any(c in name for c in "*?[") else name] = outs[-1].name
    return resolved


def _module_input(path: str, inside: Sequence[fx.Node], members: set[str], on_path: Iterable[str]) -> str:
    """The node name of module ``path``'s input: the first relevance-path tensor from outside it read inside."""
    on_path = set(on_path)
    for n in inside:
        for a in n.all_input_nodes:
            if a.name not in members and a.name in on_path and isinstance(a.meta.get("val"), Tensor):
                return a.name
    raise CaptureNameError(f"module {path!r} reads no relevance-carrying input (nothing that reaches it carries "
                           f"relevance to the explained output): capture {path!r} or a module before it")


def _unknown(name: str, paths: Sequence[str], nodes: Sequence[fx.Node]) -> str:
    """The message for a capture name that matches nothing, with the closest module paths / node names."""
    shown, suffix = name, (INPUT_SUFFIX if name.endswith(INPUT_SUFFIX) else "")
    name = name.removesuffix(INPUT_SUFFIX)
    roots = _module_roots(paths)
    inputs = [n.name.removeprefix("tensors_") for n in nodes if n.op == "placeholder"
              and n.name.startswith("tensors_")]
    candidates = roots + inputs + [n.name for n in nodes if n.op == "call_function"]
    close = [c + suffix for c in difflib.get_close_matches(name, candidates, n=5, cutoff=0.6)]
    top = sorted({p.split(".")[0] for p in roots})
    hint = f"did you mean {', '.join(repr(c) for c in close)}? " if close else ""
    return (f"capture name {shown!r} is neither a node of the graph, a relevance input nor a module path of "
            f"the model; {hint}module paths are as in model.named_modules() (top level: {top}; globs such as "
            f"'model.layers.*' allowed; '<path>:input' for a module's input), inputs: {inputs}")


def _module_roots(paths: Iterable[str]) -> list[str]:
    """Every module path and each of its ancestors (``a.b.c`` → ``a``, ``a.b``, ``a.b.c``)."""
    out: set[str] = set()
    for path in paths:
        parts = path.split(".")
        out.update(".".join(parts[: i + 1]) for i in range(len(parts)))
    return sorted(out)


# ---- the latent pass, cached per rewritten graph --------------------------------------------------------


@dataclass
class LatentPass:
    """A tapped copy of a rewritten graph that records per-neuron relevance at ``capture`` names."""

    graph: Rewritten
    names: dict[str, str]  # requested name → node name
    module: fx.GraphModule
    recorder: Recorder = field(default_factory=Recorder)
    tap_of: dict[str, str] = field(default_factory=dict)  # requested name → the tap key holding it

    def __call__(self, tensors: Mapping[str, Tensor]) -> dict[str, Tensor]:
        self.recorder.reset()
        with loaded(self.module, self.graph.captured.offloaded):  # weights an accelerate hook keeps off-device
            return self.module({k: tensors[k] for k in sorted(tensors)})

    def relevance(self) -> dict[str, Tensor]:
        """``{requested name: x ⊙ grad}`` after the backward pass (float32, the tensor's own shape)."""
        got = self.recorder.relevance()
        return {name: got[self.tap_of[name]] for name in self.names if self.tap_of[name] in got}

    def values(self) -> dict[str, Tensor]:
        """``{requested name: x}``, the activation at each captured name (float32), after the backward."""
        got = self.recorder.values()
        return {name: got[self.tap_of[name]] for name in self.names if self.tap_of[name] in got}


_PASSES: weakref.WeakKeyDictionary[fx.GraphModule, dict[tuple[str, ...], LatentPass]] = (
    weakref.WeakKeyDictionary())


def latent_pass(graph: Rewritten, capture: Sequence[str]) -> LatentPass:
    """The tapped copy of ``graph`` for these names (built once per graph and names)."""
    key = tuple(capture)
    per_graph = _PASSES.setdefault(graph.module, {})
    hit = per_graph.get(key)
    if hit is None:
        names = resolve(graph, capture)
        recorder = Recorder()
        first: dict[str, str] = {}  # node → the first name asking for it: two names, one tap
        for name, node in names.items():
            first.setdefault(node, name)
        specs = [TapSpec(key=name, node=node, keep=True) for node, name in first.items()]
        recorder.specs = {s.key: s for s in specs}
        module = insert_taps(fresh_rewritten(graph), specs, recorder)
        tap_of = {name: first[node] for name, node in names.items()}
        hit = per_graph[key] = LatentPass(graph, names, module, recorder, tap_of)
    return hit
