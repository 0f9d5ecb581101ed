"""Renderers for :class:`lxt_fx.rewrite.RewriteReport`: rich tables, self-contained HTML, networkx.

Written as plain functions of the report so the rewrite module stays free of rendering (render sits below
rewrite and knows the report and the rewritten graph only by type);
``RewriteReport.__rich__``, ``_repr_html_`` and ``to_networkx`` call them. Each leads with the condensed
per-block view: which rules landed in which block, and the UNHANDLED ops with their module path and source
line.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from rich.console import Group
from rich.table import Table
from rich.text import Text
from torch import fx

from ..tracing.meta import BLOCK_PATH, module_path
from .tables import STYLE, escape, html_table

if TYPE_CHECKING:
    import networkx as nx

    from ..rewrite import NodeRow, RewriteReport
    from ..session import Rewritten

_NUMBER = re.compile(r"(?<=\.)\d+(?=\.|$)")


def block_of(path: str) -> str:
    """``block i`` for a module path inside a repeated block (``model.layers.7.mlp`` → ``block 7``), else
    ``outside blocks``."""
    match = BLOCK_PATH.search(path)
    return f"block {int(match.group(1))}" if match else "outside blocks"


def compress_paths(paths: list[str]) -> str:
    """Module paths with their block numbers folded: ``model.layers.*.mlp.act_fn ×30``."""
    groups: dict[str, int] = {}
    for path in paths:
        key = _NUMBER.sub("*", path or "<top>")
        groups[key] = groups.get(key, 0) + 1
    return ", ".join(f"{k} ×{v}" if v > 1 else k for k, v in groups.items())


def per_block(report: RewriteReport, fold: bool = True) -> list[tuple[str, dict[str, int], int]]:
    """``(block, {rule: count}, unhandled count)`` in order of first appearance; with ``fold``, runs of
    consecutive blocks with the same rules and UNHANDLED count become one row (``blocks 0–29``)."""
    order: dict[str, tuple[dict[str, int], list[NodeRow]]] = {}
    for row in report.rewritten:
        rules, _ = order.setdefault(block_of(row.module_path), ({}, []))
        rules[row.rule] = rules.get(row.rule, 0) + 1
    for row in report.unhandled:
        order.setdefault(block_of(row.module_path), ({}, []))[1].append(row)
    rows = [(block, rules, len(bad)) for block, (rules, bad) in order.items()]
    if not fold:
        return rows
    folded: list[tuple[str, dict[str, int], int]] = []
    first = last = None
    for block, rules, bad in rows:
        number = int(block.split()[1]) if block.startswith("block ") else None
        prev = folded[-1] if folded else None
        if (number is not None and prev is not None and last is not None and number == last + 1
                and prev[1] == rules and prev[2] == bad):
            last = number
            folded[-1] = (f"blocks {first}–{last}", rules, bad)
            continue
        first = last = number
        folded.append((block, rules, bad))
    return folded


def rules_text(counts: dict[str, int]) -> str:
    return " ".join(k if v == 1 else f"{k}×{v}" for k, v in sorted(counts.items()))


def _rules(report: RewriteReport) -> list[tuple[str, str, int, str]]:
    """``(rule, op, count, module paths)`` per (rule, op)."""
    groups: dict[tuple[str, str], list[str]] = {}
    for row in report.rewritten:
        groups.setdefault((row.rule, row.op), []).append(row.module_path)
    return [(rule, op, len(paths), compress_paths(paths)) for (rule, op), paths in groups.items()]


def summary(report: RewriteReport) -> str:
    """The one-line header."""
    return (f"lxt-fx rewrite · {report.model_class} · composite {report.composite} · {len(report.rewritten)} "
            f"nodes rewritten, {len(report.unhandled)} UNHANDLED · {report.path_nodes}/{report.graph_nodes} nodes "
            f"on the relevance path · capture {report.capture_seconds:.1f} s, rewrite {report.rewrite_seconds:.1f} s")


def rewrite_rich(self: RewriteReport) -> Group:
    """``RewriteReport.__rich__``: summary, rules by op and module, per-block view, UNHANDLED ops."""
    parts: list[Any] = [Text(summary(self), style="bold red" if self.unhandled else "bold")]
    rules = Table(title="rules applied", title_justify="left")
    for col in ("rule", "op", "nodes", "module paths"):
        rules.add_column(col, justify="right" if col == "nodes" else "left", overflow="fold")
    for rule, op, n, paths in _rules(self):
        rules.add_row(rule, op, str(n), paths)
    parts.append(rules)
    blocks = Table(title="per block", title_justify="left")
    blocks.add_column("block")
    blocks.add_column("rules")
    blocks.add_column("UNHANDLED", justify="right")
    for block, counts, bad in per_block(self):
        blocks.add_row(block, rules_text(counts),
                       Text(str(bad), style="bold red") if bad else "0")
    parts.append(blocks)
    if self.unhandled:
        table = Table(title="UNHANDLED: non-linear relevance-path ops without a rule", title_justify="left",
                      title_style="bold red")
        for col in ("node", "op", "module path", "class", "source"):
            table.add_column(col, overflow="fold")
        for r in self.unhandled:
            table.add_row(r.name, r.op, r.module_path or "<top>", r.module_class, r.source)
        parts.append(table)
    return Group(*parts)


def rewrite_html(self: RewriteReport) -> str:
    """``RewriteReport._repr_html_``: the same tables as a self-contained HTML fragment (no scripts)."""
    parts = [f"<div class='lxt-check'>{STYLE}", f"<h3>{escape(summary(self))}</h3>"]
    parts.append(html_table("rules applied", ["rule", "op", "nodes", "module paths"],
                             [[escape(r), escape(o), str(n), escape(p)] for r, o, n, p in _rules(self)]))
    parts.append(html_table("per block", ["block", "rules", "UNHANDLED"],
                             [[escape(b), escape(rules_text(c)),
                               f"<span class='bad'>{n}</span>" if n else "0"] for b, c, n in per_block(self)]))
    if self.unhandled:
        parts.append(html_table("UNHANDLED: non-linear relevance-path ops without a rule",
                                 ["node", "op", "module path", "class", "source"],
                                 [[escape(r.name), escape(r.op), escape(r.module_path or "<top>"), escape(r.module_class),
                                   escape(r.source)] for r in self.unhandled], cls="bad"))
    rows = [[escape(r.name), escape(r.op), escape(r.rule), escape(r.module_path or "<top>"), escape(r.source)]
            for r in self.rewritten]
    parts.append("<details><summary>every rewritten node</summary>")
    parts.append(html_table("", ["node", "op", "rule", "module path", "source"], rows))
    parts.append("</details></div>")
    return "\n".join(parts)


def rewrite_networkx(self: RewriteReport, graph: Rewritten | fx.GraphModule | None = None) -> nx.DiGraph:
    """``RewriteReport.to_networkx``.

    With ``graph`` (the :class:`~lxt_fx.session.Rewritten` or rewritten ``GraphModule`` the report came
    from): one node per fx node (``op``, ``target``, ``module_path``, ``rule``, ``on_path`` — known only
    from a ``Rewritten``, else None), data-flow edges. Without it — the report alone holds no graph — one
    node per reported node (``kind`` ``rewritten``/``unhandled``) under a tree of module-path nodes
    (named ``module:<path>``, ``kind`` ``module``, edges parent → child)."""
    import networkx as nx  # imported on use: ~0.15 s at start-up otherwise

    out = nx.DiGraph(model=self.model_class, composite=self.composite)
    if graph is not None:
        plain = isinstance(graph, fx.GraphModule)  # else a Rewritten: its .module and .plan (the relevance path)
        gm = graph if plain else graph.module
        on_path = None if plain else graph.plan.on_path
        rules = {r.name: r.rule for r in self.rewritten}
        unhandled = {r.name for r in self.unhandled}
        for node in gm.graph.nodes:
            rule = node.meta.get("lxt_rule")
            out.add_node(node.name, op=node.op, target=str(getattr(node.target, "__name__", node.target)),
                         module_path=module_path(node), rule=rules.get(node.name, rule.name if rule else ""),
                         on_path=None if on_path is None else node.name in on_path,
                         unhandled=node.name in unhandled)
        for node in gm.graph.nodes:
            for src in node.all_input_nodes:
                out.add_edge(src.name, node.name)
        return out
    for kind, rows in (("rewritten", self.rewritten), ("unhandled", self.unhandled)):
        for r in rows:
            out.add_node(r.name, kind=kind, op=r.op, module_path=r.module_path, rule=r.rule, source=r.source,
                         on_path=kind == "unhandled" or None)
            parts = r.module_path.split(".") if r.module_path else []
            for i in range(len(parts)):
                child, above = _module_node(parts[: i + 1]), _module_node(parts[:i])
                out.add_node(above, kind="module")
                out.add_node(child, kind="module")
                out.add_edge(above, child)
            out.add_node(_module_node(parts), kind="module")
            out.add_edge(_module_node(parts), r.name)
    return out


def _module_node(parts: list[str]) -> str:
    return "module:" + (".".join(parts) or "<top>")
