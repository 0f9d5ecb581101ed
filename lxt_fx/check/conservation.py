"""Conservation bookkeeping: where relevance is lost or gained between the explained score and the input.

LRP rules are meant to conserve relevance, and the places where they provably do not are few: a bias
(or any constant added on the relevance path) absorbs its share ``Σ g ⊙ b``; the softmax rule (deep Taylor
with the bias at the input, Prop. 3.1) leaks ``Σ R_out − Σ R_in``; position / token-type embeddings added
to the token embeddings are constants too. Everything else (linear ops, the identity, uniform and
norm-identity rules) conserves exactly — so a leak anywhere else points at an op without a proper rule.

How it is measured, with one forward and one backward through a tapped copy of the rewritten graph
(:mod:`.latent`): an *edge tap* on every relevance-carrying argument of every relevance-path node and on
the graph outputs. The relevance of a tensor is the sum of its edges' relevances (a gradient is the sum of
its consumers' shares), so for every node ``absorbed = Σ R(out-edges) − Σ R(in-edges)`` exactly, and for
any cut of the (topologically ordered) graph ``Σ R(edges crossing it) = input sum + Σ absorbed below it``.
Block boundaries are such cuts — the residual stream entering each block — so the per-block losses, split
by the cause of each node's loss, add up to ``score − input sum`` up to float rounding.

Zero-bias mode (:func:`zero_biases`) rewrites a *copy* of the graph: every bias argument (Linear, addmm,
conv, LayerNorm) and every parameter added on the relevance path becomes zeros, and every rule's ε becomes
0. The model's parameters are never written. Without softmax, the input sum then equals the score.

**The verdict** (:meth:`Conservation.verdict`): the books *close* when what no known cause accounts for is
within ``RTOL · |score| + ATOL · scale``. What is judged is ``Σ |absorbed|`` over the nodes of cause
``other`` plus the telescoping residual ``|gap − Σ causes|`` — absolute values, so a gain at one node cannot
hide a loss at another. ``scale`` is the largest ``Σ |R|`` over the cuts (input, block boundaries, outputs):
every edge total is a float64 sum of float32 products ``x ⊙ g`` whose rounding grows with ``Σ |R|``, not with
the signed score, so the floor keeps a score near 0 (a GPT-2 logit, a sum of signed outputs) from being
judged by noise. ``RTOL = 1e-4``: tiny float32 transformers close to ~1e-7 of the score, so 1e-4 leaves three
orders of margin for rounding and still catches a doubled product (a gain of the product's whole relevance)
or a lost routing weight (Mixtral: 5e-3). ``ATOL = 1e-5`` of Σ|R|: ~100× the float32 ulp summed over
thousands of edges. When that floor exceeds 1 % of ``|score|`` and nothing exceeds the bound, the verdict is
``score ~0 — cannot judge`` (not verified).
"""

from __future__ import annotations

import math
import operator
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
from torch import Tensor, fx
from torch._ops import ops as _ops

from ..ops import LINEAR, SELECTION, SOFTMAX, op_name, packet
from ..rewrite import Plan
from ..taps import OUTPUT, Recorder, TapSpec, original_call, relevance_of
from ..tracing.meta import block_index, module_path
from .coverage import model_source

aten = _ops.aten

CAUSES = ("bias", "softmax", "embedding", "constant", "other")
CAUSE_HELP = {
    "bias": "biases of Linear/conv/LayerNorm and parameters added on the relevance path: Σ g ⊙ b",
    "softmax": "the softmax rule's bias term (deep Taylor at x), inside fused attention or a softmax node",
    "embedding": "position / token-type embeddings added to the token embeddings (constants for relevance)",
    "constant": "other constants added on the relevance path (masks, offsets) or concatenated into it (CLS, "
                "distillation or register tokens: learned inputs, constants for relevance)",
    "other": "any other op that does not conserve: an UNHANDLED non-linearity, a rule with ε > 0, rounding",
}
# Which positional argument of an ATen op is its bias.
BIAS_SLOT = {aten.linear: 2, aten.addmm: 0, aten.baddbmm: 0, aten.conv1d: 2, aten.conv2d: 2, aten.conv3d: 2,
             aten.convolution: 2, aten.conv_transpose1d: 2, aten.conv_transpose2d: 2, aten.layer_norm: 3,
             aten.group_norm: 3}
_ADDS = frozenset({aten.add, aten.add_, aten.sub, aten.sub_, aten.rsub})  # in place too (embeddings += pos)


RTOL = 1e-4   # of |score|: what no known cause accounts for, at most (see the module docstring)
ATOL = 1e-5   # of the largest Σ|R| over the cuts: the rounding floor
JUDGEABLE = 1e-2  # the floor must stay below this fraction of |score| for a "closes" verdict


@dataclass(frozen=True)
class Verdict:
    """Do the books close? ``status``: ``closes``, ``loss``, ``gain``, ``loss and gain``, ``non-finite``,
    ``score ~0``; ``verified`` only for ``closes``. ``unaccounted``: ``Σ_other |absorbed| + |residual|``
    (absolute); ``bound``: ``rtol·|score| + atol·scale``; ``loss`` / ``gain``: Σ of the positive / negative
    ``other`` absorptions (gain as a positive number); ``worst``: the ``other`` node that absorbed most."""

    status: str
    reason: str
    unaccounted: float
    bound: float
    score: float
    scale: float
    loss: float = 0.0
    gain: float = 0.0
    worst: NodeLeak | None = None

    @property
    def verified(self) -> bool:
        return self.status == "closes"

    def __bool__(self) -> bool:
        return self.verified


@dataclass
class NodeLeak:
    """Relevance one node absorbed (> 0: lost toward the input; < 0: gained), and why."""

    name: str
    op: str
    cause: str
    absorbed: float
    module_path: str
    segment: str
    source: str


@dataclass
class Segment:
    """A stretch of the graph between two cuts: the embeddings, one block, the head, or the target."""

    label: str
    above: float   # Σ R entering it from the output side (the cut after it)
    below: float   # Σ R it passes on toward the input (the cut before it)
    by_cause: dict[str, float] = field(default_factory=dict)

    @property
    def lost(self) -> float:
        """``above − below``: > 0 when relevance was absorbed in this stretch, < 0 when it was gained."""
        return self.above - self.below


@dataclass
class Conservation:
    """The bookkeeping of one forward/backward (normal, or zero-bias mode)."""

    zero_bias: bool
    score: float
    input_sum: float
    output_sum: float
    segments: list[Segment]
    leaks: list[NodeLeak]
    zeroed: list[str] = field(default_factory=list)
    scale: float = 0.0  # the largest Σ|R| over the cuts (input, block boundaries, outputs); 0: not measured

    @property
    def gap(self) -> float:
        """``score − input sum``: all relevance lost (> 0) or gained (< 0) on the way to the input."""
        return self.score - self.input_sum

    def by_cause(self) -> dict[str, float]:
        """Σ absorbed per cause over all nodes, plus ``target`` (score − Σ R at the graph outputs)."""
        out = dict.fromkeys(CAUSES, 0.0)
        for leak in self.leaks:
            out[leak.cause] += leak.absorbed
        out["target"] = self.score - self.output_sum
        return out

    @property
    def explained(self) -> float:
        """The part of the gap with a known cause (everything but ``other``)."""
        causes = self.by_cause()
        return sum(v for k, v in causes.items() if k != "other")

    def relative(self, value: float) -> float:
        return abs(value) / max(abs(self.score), 1e-30)

    @property
    def relative_gap(self) -> float:
        """``|input sum − score| / |score|``."""
        return self.relative(self.gap)

    @property
    def unexplained(self) -> float:
        """``gap − explained``: what no known cause accounts for (the ``other`` term plus rounding)."""
        return self.gap - self.explained

    def boundaries(self) -> list[tuple[str, float]]:
        """Σ relevance at every cut, input first: the relevance input, the residual stream entering each
        block, the graph outputs, the score."""
        rows = [("input", self.input_sum)]
        rows += [(f"entering {seg.label}", seg.below) for seg in self.segments[1:] if seg.label != "target"]
        rows += [("outputs", self.output_sum), ("score", self.score)]
        return rows

    def verdict(self, rtol: float = RTOL, atol: float = ATOL) -> Verdict:
        """Whether the books close: ``Σ_other |absorbed| + |gap − Σ causes| ≤ rtol·|score| + atol·scale``
        (``scale``: :attr:`scale`, else the largest |signed| cut sum). Anything beyond that bound is an
        unexplained loss (relevance vanished: a rule that drops a share) or gain (relevance created: a plain
        gradient through a product of two carrying tensors counts it twice), named with its worst node."""
        values = [self.score, self.input_sum, self.output_sum] + [leak.absorbed for leak in self.leaks]
        score = abs(self.score)
        scale = self.scale or max([score, abs(self.input_sum), abs(self.output_sum)]
                                  + [abs(v) for seg in self.segments for v in (seg.above, seg.below)])
        if not all(math.isfinite(v) for v in values):
            bad = next((leak for leak in self.leaks if not math.isfinite(leak.absorbed)), None)
            where = f" first at {bad.name} ({bad.op}, {bad.module_path or 'top level'})" if bad else ""
            return Verdict("non-finite", f"non-finite relevance{where}: see the provenance check", math.nan,
                           math.nan, self.score, scale, worst=bad)
        other = [leak for leak in self.leaks if leak.cause == "other"]
        loss = sum(leak.absorbed for leak in other if leak.absorbed > 0)
        gain = -sum(leak.absorbed for leak in other if leak.absorbed < 0)
        residual = self.unexplained - (loss - gain)
        unaccounted = loss + gain + abs(residual)
        bound = rtol * score + atol * scale
        worst = max(other, key=lambda leak: abs(leak.absorbed), default=None)
        where = f"; worst {worst.name} ({worst.op}, {worst.module_path or 'top level'}) " \
                f"{_rel(worst.absorbed, score)}" if worst is not None else ""
        if unaccounted > bound:
            if loss > bound / 2 and gain > bound / 2:
                status, what = "loss and gain", f"unexplained loss {_rel(loss, score)} and gain {_rel(gain, score)}"
            elif gain > loss:
                status, what = "gain", f"unexplained gain {_rel(gain, score)}"
            elif loss > 0:
                status, what = "loss", f"unexplained loss {_rel(loss, score)}"
            else:  # only the residual: the cut sums do not telescope (a relevance edge without a tap)
                status, what = ("gain" if residual < 0 else "loss"), \
                    f"unexplained {'gain' if residual < 0 else 'loss'} {_rel(abs(residual), score)} at no node"
            return Verdict(status, f"{what} of |score| (bound {_rel(bound, score)}){where}", unaccounted, bound,
                           self.score, scale, loss, gain, worst)
        if atol * scale > JUDGEABLE * score:
            return Verdict("score ~0", f"score ~0 — cannot judge: |score| {score:.2e} against Σ|R| {scale:.2e} "
                           f"(rounding floor {atol * scale:.1e})", unaccounted, bound, self.score, scale, loss,
                           gain, worst)
        return Verdict("closes", f"closes: unaccounted {_rel(unaccounted, score)} of |score| "
                       f"(bound {_rel(bound, score)})", unaccounted, bound, self.score, scale, loss, gain, worst)

    def top(self, k: int = 8, cause: str | None = None) -> list[NodeLeak]:
        """The ``k`` nodes that absorbed the most relevance (by magnitude), optionally of one cause."""
        pool = [leak for leak in self.leaks if cause is None or leak.cause == cause]
        return sorted(pool, key=lambda leak: (math.isnan(leak.absorbed), -abs(leak.absorbed)))[:k]


def _rel(value: float, score: float) -> str:
    return f"{abs(value) / score:.1e}" if score > 0 else f"{abs(value):.1e} (absolute)"


class MagnitudeRecorder(Recorder):
    """A :class:`~.latent.Recorder` that also sums ``|x ⊙ grad|`` per tap (``magnitudes``), for the
    verdict's rounding floor."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.magnitudes: dict[str, float] = {}

    def reset(self) -> None:
        super().reset()
        self.magnitudes = {}

    def saw_grad(self, spec: TapSpec, x: Tensor, grad: Tensor) -> None:
        super().saw_grad(spec, x, grad)
        r = relevance_of(x, grad)
        magnitude = float(torch.nan_to_num(r.abs(), nan=0.0, posinf=0.0).sum(dtype=torch.float64))
        self.magnitudes[spec.key] = self.magnitudes.get(spec.key, 0.0) + magnitude


# ---- the graph side -------------------------------------------------------------------------------------


def _leaves(node: fx.Node) -> list[fx.Node]:
    out: list[fx.Node] = []
    fx.node.map_arg((node.args, node.kwargs), out.append)
    return out


def _is_float_tensor(node: fx.Node) -> bool:
    val = node.meta.get("val")
    return isinstance(val, Tensor) and val.is_floating_point()


def edge_specs(gm: fx.GraphModule, on_path: set[str]) -> list[TapSpec]:
    """An edge tap on every relevance-carrying argument of every relevance-path node and of the output
    (not into ``getitem``: a multi-output op's relevance is read at its ``getitem`` users).
    ``on_path``: :func:`~.latent.relevance_path` of ``gm``."""
    specs = []
    for node in gm.graph.nodes:
        if node.op == "output":
            consumer = OUTPUT
        elif node.op == "call_function" and node.name in on_path and node.target is not operator.getitem:
            consumer = node.name
        else:
            continue
        seen: dict[str, int] = {}
        for leaf in _leaves(node):
            if leaf.name not in on_path:
                continue
            slot = seen.get(leaf.name, 0)
            seen[leaf.name] = slot + 1
            specs.append(TapSpec(key=f"{leaf.name}->{consumer}#{slot}", node=leaf.name, consumer=consumer,
                                 slot=slot))
    return specs


def value_specs(gm: fx.GraphModule) -> list[TapSpec]:
    """A forward-only finiteness check on every float tensor node (inputs and call_function nodes)."""
    return [TapSpec(key=f"value:{n.name}", node=n.name, value_only=True) for n in gm.graph.nodes
            if n.op in ("placeholder", "call_function") and _is_float_tensor(n)]


def _constant_origin(node: fx.Node, on_path: set[str], depth: int = 8) -> str:
    """``embedding``, ``bias`` or ``constant``: what a constant operand was computed from."""
    frontier, seen = [node], set()
    for _ in range(depth):
        nxt = []
        for n in frontier:
            if n.name in seen or n.name in on_path:
                continue
            seen.add(n.name)
            if n.op == "call_function" and packet(original_call(n)[0]) is aten.embedding:
                return "embedding"
            if n.op == "get_attr" and "bias" in str(n.target).rsplit(".", 1)[-1]:
                return "bias"
            if n.op == "get_attr" and any(k in str(n.target).rsplit(".", 1)[-1]
                                          for k in ("position_embedding", "pos_embed")):
                return "embedding"  # a position-embedding parameter (ViT, DeiT, DINOv2), not a lookup
            nxt.extend(_leaves(n))
        frontier = nxt
    return "constant"


def _float_constants(node: fx.Node, args: Iterable[object], on_path: set[str]) -> list[fx.Node]:
    return [a for a in args if isinstance(a, fx.Node) and a.name not in on_path and _is_float_tensor(a)]


def cause_of(node: fx.Node, the_plan: Plan, on_path: set[str]) -> str:
    """The cause a node's absorbed relevance is booked under (see :data:`CAUSE_HELP`)."""
    target, args, _ = original_call(node)
    p = packet(target)
    decided = the_plan.decisions.get(node.name)
    if (decided and decided[0].name in ("softmax", "attention")) or p in SOFTMAX \
            or p is aten.scaled_dot_product_attention:
        return "softmax"
    slot = BIAS_SLOT.get(p)
    if slot is not None and len(args) > slot and isinstance(args[slot], fx.Node) \
            and args[slot].name not in on_path:
        return "bias"
    if p in _ADDS:
        constants = _float_constants(node, args, on_path)
        if constants or any(isinstance(a, (int, float)) and a != 0 for a in args[:2]):
            origins = {_constant_origin(c, on_path) for c in constants}
            for cause in ("embedding", "bias"):
                if cause in origins:
                    return cause
            return "constant"
    if p is aten.cat and args and isinstance(args[0], (list, tuple)):  # a CLS / register / prompt token
        constants = _float_constants(node, args[0], on_path)  # concatenated to the stream: a constant input
        if constants:
            origins = {_constant_origin(c, on_path) for c in constants}
            return "embedding" if "embedding" in origins else "constant"
    return "other"


def zero_biases(gm: fx.GraphModule, on_path: set[str]) -> list[str]:
    """Zero every bias argument and parameter added on the relevance path, and every rule's ε, in ``gm``
    (a copy: the parameters themselves are never written). Returns the names of the nodes changed."""
    changed = []
    for node in list(gm.graph.nodes):
        if node.op != "call_function":
            continue
        if node.name not in on_path and "lxt_rule" not in node.meta:
            continue
        target, args, _ = original_call(node)
        offset = len(node.args) - len(args)
        p = packet(target)
        positions: list[int] = []
        slot = BIAS_SLOT.get(p)
        if slot is not None and len(args) > slot and isinstance(args[slot], fx.Node) \
                and args[slot].name not in on_path:
            positions.append(slot)
        elif p in _ADDS:
            positions += [i for i, a in enumerate(args) if isinstance(a, fx.Node) and a.name not in on_path
                          and _is_float_tensor(a) and _constant_origin(a, on_path) == "bias"]
        new_args = list(node.args)
        for i in positions:
            with gm.graph.inserting_before(node):
                zeros = gm.graph.call_function(aten.zeros_like.default, (args[i],))
            new_args[offset + i] = zeros
        if positions:
            node.args = tuple(new_args)
        if "epsilon" in node.kwargs and node.kwargs["epsilon"]:
            node.kwargs = {**node.kwargs, "epsilon": 0.0}
            positions.append(-1)
        if positions:
            changed.append(node.name)
    gm.graph.lint()
    gm.recompile()
    return changed


def _segments(gm: fx.GraphModule) -> tuple[list[tuple[str, int]], dict[str, int]]:
    """``([(label, first node index)], {node name: index})``: embeddings, one segment per block, head."""
    nodes = list(gm.graph.nodes)
    index = {n.name: i for i, n in enumerate(nodes)}
    start = max((i for i, n in enumerate(nodes) if n.op in ("placeholder", "get_attr")), default=-1) + 1
    blocks = [(i, b) for i, n in enumerate(nodes) if n.op == "call_function" and (b := block_index(n)) is not None]
    if not blocks:
        return [("graph", start)], index
    segments = [("embeddings", start)]
    current = None
    for i, b in blocks:
        if b != current:
            segments.append((f"block {b}", i))
            current = b
    last = blocks[-1][0] + 1
    if last < len(nodes) - 1:
        segments.append(("head", last))
    return segments, index


def causes(gm: fx.GraphModule, the_plan: Plan, on_path: set[str]) -> dict[str, str]:
    """The cause of every relevance-path node of ``gm`` (read before taps are inserted)."""
    return {n.name: cause_of(n, the_plan, on_path) for n in gm.graph.nodes
            if n.op == "call_function" and n.name in on_path}


def segment_labels(gm: fx.GraphModule) -> dict[str, str]:
    """Node name → ``embeddings`` / ``block i`` / ``head`` (``graph`` when there are no blocks)."""
    starts, index = _segments(gm)
    out = {}
    for name, i in index.items():
        label = starts[0][0]
        for seg, start in starts:
            if i >= start:
                label = seg
        out[name] = label
    return out


def account(gm: fx.GraphModule, on_path: set[str], totals: dict[str, float], specs: list[TapSpec],
            score: float, relevance_inputs: Iterable[str], cause: dict[str, str], zero_bias: bool = False,
            zeroed: Iterable[str] = (), magnitudes: dict[str, float] | None = None,
            writes: dict[str, str] | None = None) -> Conservation:
    """Turn the edge totals of one backward into per-node losses, per-segment sums and boundary sums
    (``gm``: the tapped graph; ``cause``: :func:`causes` of it before tapping; ``magnitudes``: Σ|R| per tap,
    :attr:`MagnitudeRecorder.magnitudes`, for :attr:`Conservation.scale`; ``writes``: the plan's in-place
    writes into buffers, :attr:`lxt_fx.rewrite.Plan.writes`).

    An in-place write ``buf[..., :d].copy_(k)`` has no data-flow edge to the readers of ``buf``: the books
    add one from the writer to the buffer, carrying what reached the writer and did not leave it through its
    own output, and a read of ``buf`` starts at the last write before it. So a write conserves by
    construction and any mismatch — relevance on entries no write filled — is booked at the buffer."""
    nodes = list(gm.graph.nodes)
    by_name = {n.name: n for n in nodes}
    seg_starts, index = _segments(gm)
    out_index = index[next(n.name for n in nodes if n.op == "output")]
    writers: dict[str, list[int]] = {}
    for writer, buffer in (writes or {}).items():
        if writer in index and buffer in index:
            writers.setdefault(buffer, []).append(index[writer])

    def start(node: str, consumer: int) -> int:  # a buffer's value is complete after the last write before
        return max([index[node]] + [w for w in writers.get(node, ()) if w < consumer])

    r_in: dict[str, float] = {}
    r_out: dict[str, float] = {}
    edges: list[tuple[int, int, float]] = []
    for spec in specs:
        if spec.value_only or spec.consumer is None:
            continue
        value = totals.get(spec.key, 0.0)
        r_out[spec.node] = r_out.get(spec.node, 0.0) + value
        r_in[spec.consumer] = r_in.get(spec.consumer, 0.0) + value
        consumer = out_index if spec.consumer == OUTPUT else index[spec.consumer]
        edges.append((start(spec.node, consumer), consumer, value))
    for node in reversed(nodes):  # a getitem passes its relevance to the multi-output op it reads
        if node.op == "call_function" and node.target is operator.getitem and node.name in on_path:
            parent = node.args[0]
            r_in[node.name] = r_out.get(node.name, 0.0)
            r_out[parent.name] = r_out.get(parent.name, 0.0) + r_out.get(node.name, 0.0)
            edges.append((index[parent.name], index[node.name], r_out.get(node.name, 0.0)))
    for writer, buffer in (writes or {}).items():  # the write's own edge into the buffer
        if writer not in index or buffer not in index:
            continue
        value = r_in.get(writer, 0.0) - r_out.get(writer, 0.0)
        r_out[writer] = r_out.get(writer, 0.0) + value
        r_in[buffer] = r_in.get(buffer, 0.0) + value
        edges.append((index[writer], max(writers[buffer]), value))

    def cut(k: int) -> float:
        return sum(v for a, b, v in edges if a < k <= b)

    def label_of(i: int) -> str:
        label = seg_starts[0][0]
        for name, start in seg_starts:
            if i >= start:
                label = name
        return label

    inputs = set(relevance_inputs)
    leaks = []
    for node in nodes:
        if node.op != "call_function" or node.name not in on_path or node.target is operator.getitem \
                or node.name in inputs:  # a relevance place inside the graph is an input, not a leak
            continue
        absorbed = r_out.get(node.name, 0.0) - r_in.get(node.name, 0.0)
        leaks.append(NodeLeak(node.name, op_name(original_call(node)[0]), cause.get(node.name, "other"), absorbed,
                              module_path(node), label_of(index[node.name]), model_source(node)))
    input_sum = sum(r_out.get(name, 0.0) for name in inputs if name in by_name)
    output_sum = r_in.get(OUTPUT, 0.0)
    segments = []
    bounds = [start for _, start in seg_starts] + [out_index]
    for (label, start), end in zip(seg_starts, bounds[1:], strict=True):
        seg = Segment(label, above=cut(end), below=cut(start), by_cause=dict.fromkeys(CAUSES, 0.0))
        segments.append(seg)
    for leak in leaks:
        next(s for s in segments if s.label == leak.segment).by_cause[leak.cause] += leak.absorbed
    segments.append(Segment("target", above=score, below=output_sum))  # the score's own function
    scale = 0.0
    if magnitudes is not None:
        abs_edges = [(index[spec.node], out_index if spec.consumer == OUTPUT else index[spec.consumer],
                      magnitudes.get(spec.key, 0.0)) for spec in specs
                     if not spec.value_only and spec.consumer is not None]
        scale = max([sum(v for a, b, v in abs_edges if a < k <= b) for k in bounds] + [abs(score)])
    return Conservation(zero_bias, score, input_sum, output_sum, segments, leaks, list(zeroed), scale)


def excused_neg_inf(gm: fx.GraphModule, on_path: set[str], depth: int = 4) -> set[str]:
    """Nodes whose ``-inf`` entries are masking, not overflow: off the relevance path, or reaching a softmax
    (or fused attention) through linear/selection ops only."""
    out = set()
    for node in gm.graph.nodes:
        if node.op not in ("placeholder", "call_function"):
            continue
        if node.name not in on_path:
            out.add(node.name)
            continue
        frontier = [node]
        for _ in range(depth):
            users = [u for n in frontier for u in n.users if u.op == "call_function"]
            packets = {packet(original_call(u)[0]) for u in users}
            if packets & (SOFTMAX | {aten.scaled_dot_product_attention}):
                out.add(node.name)
                break
            frontier = [u for u in users if packet(original_call(u)[0]) in LINEAR | SELECTION]
            if not frontier:
                break
    return out
