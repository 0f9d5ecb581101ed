"""NaN/Inf provenance: the first node whose value, gradient or relevance is not finite.

Read from the taps of the bookkeeping pass (:mod:`.conservation`): a forward-only value tap on every float
node (in graph order, so the first non-finite value is the op that produced it), and the edge taps'
gradient hooks (in the order the backward reaches them, so the first non-finite gradient names the op
whose backward produced it — the edge's consumer — and the tensor that received it). Relevance is
``x ⊙ grad`` with ``0 · ±inf = 0``. ``-inf`` is not reported where it is masking: off the relevance path
(attention masks) or feeding a softmax.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import fx

from ..ops import op_name
from ..taps import OUTPUT, Recorder, original_call
from ..tracing.meta import module_path
from .coverage import model_source, short_source


@dataclass
class Finding:
    """One non-finite tensor: which stage saw it, which node holds it, and where that node comes from."""

    stage: str          # "forward value", "backward gradient", "relevance"
    node: str
    op: str
    kind: str           # "nan", "+inf", "-inf" (comma-joined when several)
    module_path: str
    source: str
    via: str = ""       # for gradients/relevance: the consumer whose backward produced it
    via_module_path: str = ""
    via_source: str = ""

    def __str__(self) -> str:
        where = f"{self.module_path or '<top>'} ({short_source(self.source)})"
        text = f"{self.stage} of {self.node} ({self.op}) is {self.kind} — {where}"
        if self.via:
            text += f"; produced by the backward of {self.via} in {self.via_module_path or '<top>'} " \
                    f"({short_source(self.via_source)})"
        return text


@dataclass
class Provenance:
    """The first non-finite value (forward), gradient and relevance (backward); None where all are finite."""

    value: Finding | None = None
    gradient: Finding | None = None
    relevance: Finding | None = None
    checked_values: int = 0
    checked_edges: int = 0

    @property
    def ok(self) -> bool:
        return self.value is None and self.gradient is None and self.relevance is None

    @property
    def first(self) -> Finding | None:
        """The earliest finding: a forward value before any backward one."""
        return self.value or self.gradient or self.relevance


def _finding(stage: str, node: fx.Node, kind: str, via: fx.Node | None = None) -> Finding:
    found = Finding(stage, node.name, op_name(original_call(node)[0]) if node.op == "call_function" else node.op,
                    kind, module_path(node), model_source(node))
    if via is not None:
        found.via = via.name
        found.via_module_path = module_path(via)
        found.via_source = model_source(via)
    return found


def locate(gm: fx.GraphModule, recorder: Recorder) -> Provenance:
    """The first non-finite value, gradient and relevance among the taps of ``recorder``."""
    nodes = {n.name: n for n in gm.graph.nodes}
    output = next(n for n in gm.graph.nodes if n.op == "output")
    result = Provenance()
    values = [(rec.value_order, key) for key, rec in recorder.records.items() if rec.value_order is not None]
    grads = [(rec.grad_order, key) for key, rec in recorder.records.items() if rec.grad_order is not None]
    rels = [(rec.relevance_order, key) for key, rec in recorder.records.items() if rec.relevance_order is not None]
    result.checked_values = sum(1 for s in recorder.specs.values() if s.value_only)
    result.checked_edges = sum(1 for s in recorder.specs.values() if not s.value_only)
    if values:
        spec = recorder.specs[min(values)[1]]
        result.value = _finding("forward value", nodes[spec.node], recorder.records[spec.key].value_kind)
    for stage, found, attr in (("backward gradient", grads, "grad_kind"), ("relevance", rels, "relevance_kind")):
        if not found:
            continue
        spec = recorder.specs[min(found)[1]]
        consumer = output if spec.consumer in (None, OUTPUT) else nodes[spec.consumer]
        finding = _finding(stage, nodes[spec.node], getattr(recorder.records[spec.key], attr), consumer)
        if stage == "backward gradient":
            result.gradient = finding
        else:
            result.relevance = finding
    return result
