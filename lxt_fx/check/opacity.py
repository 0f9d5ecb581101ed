"""Rule opacity: proof that every rule the composite decided on is a rule call in the recompiled graph.

A rule that is traced through (inlined into ATen ops) or dropped loses its custom backward and silently
gives plain gradients. For every decision of the plan this checks, on the module that actually runs:

1. the graph still has the node, as a ``call_function`` whose target is the rule's own GxI function
   (``rule.gxi(op, carrying)[0]``) with the original ATen op as its first argument and the rule's
   parameters as keyword arguments;
2. the recompiled Python code (``gm.code``, what ``forward`` executes) assigns that node from a call of a
   global name that resolves, in ``forward``'s globals, to that very function object;
3. no node calls a rule function that the plan did not decide (nothing extra was rewritten).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from torch import fx

from ..ops import op_name
from ..rewrite import Plan
from ..taps import rule_calls
from ..tracing.meta import module_path

_ASSIGN = re.compile(r"^\s*(\w+) = ([\w.]+)\(")


@dataclass
class OpacityRow:
    """One decided rule and whether it is present, opaque, in the code that runs."""

    name: str
    rule: str
    function: str
    module_path: str
    in_graph: bool
    in_code: bool
    problem: str = ""

    @property
    def ok(self) -> bool:
        return self.in_graph and self.in_code and not self.problem


def code_calls(gm: fx.GraphModule) -> dict[str, str]:
    """``{assigned name: called global}`` for every ``name = fn(...)`` line of ``gm``'s generated code."""
    calls = {}
    for line in gm.code.splitlines():
        match = _ASSIGN.match(line)
        if match:
            calls[match.group(1)] = match.group(2)
    return calls


def _fn_name(fn: object) -> str:
    return f"{getattr(fn, '__module__', '')}.{getattr(fn, '__qualname__', repr(fn))}"


def prove(gm: fx.GraphModule, the_plan: Plan) -> list[OpacityRow]:
    """One row per decided node (see the module docstring), then one per undecided rule call found."""
    nodes = {n.name: n for n in gm.graph.nodes}
    calls = code_calls(gm)
    scope = gm.forward.__globals__
    rows: list[OpacityRow] = []
    rule_functions = set()
    regions = getattr(the_plan, "regions", {})
    callers = rule_calls(gm, the_plan)
    for name, (rule, carrying) in the_plan.decisions.items():
        node = nodes.get(name)
        region = name in regions
        caller = callers.get(name)
        original = None if node is None or region else node.meta.get("lxt_original_target")
        fn, extra = rule.gxi(original if not region else (node.target if node is not None else None), carrying)
        rule_functions.add(fn)
        row = OpacityRow(name, rule.name, _fn_name(fn), module_path(node) if node is not None else "", False,
                         False)
        if node is None:
            row.problem = "node missing from the rewritten graph"
        elif caller is None or caller.op != "call_function" or caller.target is not fn:
            row.problem = (f"no node calls the rule function after region output {name}" if region else
                           f"node calls {op_name(node.target)}, not the rule function")
        elif region and (caller.args[0].name != regions[name] or caller.args[1] is not node
                         or any(u is not caller for u in node.users)):
            row.problem = "the region's rule call does not read its input and output, or is bypassed"
        elif not region and (not node.args or node.args[0] is not original):
            row.problem = "the original op is not the rule call's first argument"
        elif any(caller.kwargs.get(k) != v for k, v in extra.items()):
            row.problem = f"rule parameters {extra} not passed"
        else:
            row.in_graph = True
        if region and caller is not None:
            row.name = f"{name} → {caller.name}"
        called = calls.get(caller.name if caller is not None else name)
        if called is None:
            row.problem = row.problem or "no assignment of this node in the generated code"
        elif scope.get(called) is not fn:
            row.problem = row.problem or f"the code calls {called}, which is not {_fn_name(fn)}"
        else:
            row.in_code = True
        rows.append(row)
    expected = {c.name for c in callers.values()}
    for node in gm.graph.nodes:
        if node.op == "call_function" and node.target in rule_functions and node.name not in expected:
            rows.append(OpacityRow(node.name, "?", _fn_name(node.target), module_path(node), True, True,
                                   "a rule call the plan did not decide"))
    return rows
