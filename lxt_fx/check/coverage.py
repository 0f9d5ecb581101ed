"""Coverage: what happens to relevance at every ``call_function`` node of the captured graph.

Each node gets one kind, read off the rewrite's own plan (:func:`lxt_fx.rewrite.plan`) and op tables
(:mod:`lxt_fx.ops`) — nothing is decided twice:

* ``rule`` — the composite decided a rule for it (including ``stop`` rules, whose output then carries none);
* ``UNHANDLED`` — on the relevance path, non-linear in its carrying inputs, and no rule: the plan's
  ``unhandled`` list. Relevance through it is the plain gradient, which is not what any LRP rule says;
* ``selection`` — piecewise linear (index, top-k, max, where, masked fill, …): routes relevance, no rule;
* ``linear`` — linear in its carrying inputs (views, sums, Linear/addmm/conv with constant weights, a
  product or a division with one carrying operand): plain GxI is already ε-LRP with ε → 0;
* ``off-path`` — carries no relevance to the explained output (masks, positions, RoPE tables, the
  variance feeding a detached norm scale, asserts): only constants for the relevance path.
"""

from __future__ import annotations

import operator
import os
from dataclasses import dataclass

from torch import fx
from torch._ops import ops as _ops

from ..ops import LINEAR, PRODUCTS, SELECTION, op_name, packet
from ..rewrite import Plan
from ..taps import original_call, rule_calls
from ..tracing.meta import block_index, module_class, module_path, source_line

aten = _ops.aten



def model_source(node: fx.Node) -> str:
    """``file:line`` of the model code that created ``node`` (see :func:`~lxt_fx.tracing.meta.source_line`)."""
    return source_line(node)


def short_source(source: str) -> str:
    """A source location without its installation prefix (``transformers/models/…/modeling_llama.py:258``)
    or the working directory."""
    if "site-packages/" in source:
        return source.rsplit("site-packages/", 1)[1]
    cwd = os.getcwd() + os.sep
    return source[len(cwd):] if source.startswith(cwd) else source

KINDS = ("rule", "linear", "selection", "off-path", "UNHANDLED")


@dataclass
class CoverageRow:
    """One ``call_function`` node: its kind, why, and where it comes from."""

    name: str
    op: str
    kind: str
    rule: str
    why: str
    module_path: str
    module_class: str
    source: str
    block: int | None
    carrying: tuple[int, ...] = ()
    segment: str = ""
    role: str = ""  # "member": inside a region rule; "call": the node calling a region's rule


def _why_linear(target: object) -> str:
    p = packet(target)
    if target is operator.getitem:
        return "picks one output of a multi-output op"
    if p in PRODUCTS:
        return f"{op_name(p)} with one carrying factor (the other is a constant)"
    if p is aten.div:
        return "divided by a constant"
    if p in LINEAR:
        return "linear in its carrying inputs"
    return "linear (no rule needed in GxI form)"


def classify(gm: fx.GraphModule, the_plan: Plan) -> list[CoverageRow]:
    """One row per ``call_function`` node of ``gm`` (the captured graph, rewritten or not), in graph order."""
    unhandled = set(the_plan.unhandled)
    regions = getattr(the_plan, "regions", {})
    absorbed = getattr(the_plan, "absorbed", set())
    callers = {c.name: name for name, c in rule_calls(gm, the_plan).items() if c.name != name}
    by_name = {n.name: n for n in gm.graph.nodes}
    region_at = {module_path(by_name[out]): out for out in regions if out in by_name}  # one region a module
    region_of = {name: region_at.get(module_path(by_name[name]), "") for name in absorbed if name in by_name}
    rows: list[CoverageRow] = []
    for node in gm.graph.nodes:
        if node.op != "call_function":
            continue
        target = original_call(node)[0]
        carrying = the_plan.carrying.get(node.name, ())
        decided = the_plan.decisions.get(node.name)
        rule = decided[0].name if decided else ""
        if node.name in callers:
            out = callers[node.name]
            rule = the_plan.decisions[out][0].name
            kind, why = "rule", f"rule call of the region ending at {out}: reroutes its backward to " \
                                f"{regions.get(out, '?')}"
        elif region_of.get(node.name) in the_plan.decisions:
            out = region_of[node.name]
            rule = the_plan.decisions[out][0].name
            kind, why = "rule", f"inside the region ending at {out} (its backward is bypassed)"
        elif decided:
            kind = "rule"
            why = (f"{decided[0]!r}: relevance stops here" if decided[0].stops
                   else f"{decided[0]!r} on carrying input(s) {list(carrying)}")
        elif node.name in unhandled:
            kind, why = "UNHANDLED", "non-linear in a carrying input and no composite entry fits it"
        elif node.name not in the_plan.on_path:
            kind = "off-path"
            why = ("carries relevance that never reaches the output" if carrying
                   else "depends on no relevance input")
        elif packet(target) in SELECTION:
            kind, why = "selection", "piecewise linear: routes relevance unchanged"
        else:
            kind, why = "linear", _why_linear(target)
        role = "call" if node.name in callers else "member" if node.name in region_of else ""
        rows.append(CoverageRow(node.name, op_name(target), kind, rule, why, module_path(node),
                                module_class(node), model_source(node), block_index(node), carrying,
                                role=role))
    return rows


def counts(rows: list[CoverageRow], on_path_only: bool = False) -> dict[str, int]:
    """How many rows of each kind (every kind present, 0 included)."""
    out = dict.fromkeys(KINDS, 0)
    for row in rows:
        if not on_path_only or row.kind != "off-path":
            out[row.kind] += 1
    return out
