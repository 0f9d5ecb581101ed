"""``CheckReport``: everything :func:`lxt_fx.check` found, as rich tables, self-contained HTML, networkx.

Rendered three ways from the same rows: ``__rich__`` (print it with ``rich.print`` or a ``Console``),
``_repr_html_`` (Jupyter shows it; the string is a complete fragment with its own CSS, no scripts, so it
also renders from a file) and ``to_networkx()`` (one graph node per fx node). :meth:`CheckReport.blocks`
is the condensed per-block view both renderings lead with.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from ..render.tables import STYLE, escape, html_table
from ..rewrite import RewriteReport
from .conservation import ATOL, CAUSE_HELP, CAUSES, Conservation, Verdict
from .coverage import KINDS, CoverageRow, counts, short_source
from .opacity import OpacityRow
from .provenance import Provenance

if TYPE_CHECKING:
    import networkx as nx

TOLERANCE = 1e-4  # zero-bias mode: unaccounted / |score| below this (plus ATOL·Σ|R|) passes: Conservation.verdict


@dataclass
class GraphNode:
    """One fx node of the captured graph, for :meth:`CheckReport.to_networkx`."""

    name: str
    op: str            # fx op: placeholder, get_attr, call_function, call_module, output
    target: str
    module_path: str
    rule: str
    on_path: bool
    kind: str          # the coverage kind for call_function nodes, else the fx op
    block: int | None
    inputs: tuple[str, ...] = ()


@dataclass
class BlockRow:
    """The condensed view of one stretch of the graph (embeddings, a block, the head, the target)."""

    label: str
    path_ops: int
    rules: dict[str, int]
    unhandled: int
    below: float | None
    above: float | None
    lost: float | None
    by_cause: dict[str, float]


@dataclass
class CheckReport:
    """The answer to "does my LXT implementation make sense?" for one model, composite and input."""

    model_class: str
    composite: str
    target: str
    score: float
    coverage: list[CoverageRow]
    opacity: list[OpacityRow]
    conservation: Conservation
    zero_bias: Conservation | None
    provenance: Provenance
    graph_nodes: list[GraphNode] = field(default_factory=list)
    seconds: float = 0.0
    tolerance: float = TOLERANCE
    rewrite: RewriteReport | None = None  # the rewrite report of the graph that was checked

    # ---- verdicts ---------------------------------------------------------------------------------------

    @property
    def unhandled(self) -> list[CoverageRow]:
        """Relevance-path ops that are non-linear and got no rule."""
        return [r for r in self.coverage if r.kind == "UNHANDLED"]

    @property
    def opaque(self) -> bool:
        """Every decided rule is a rule call in the recompiled code, and nothing else is."""
        return all(r.ok and not r.problem for r in self.opacity)

    @property
    def verdict(self) -> Verdict | None:
        """Zero-bias mode's :meth:`~.conservation.Conservation.verdict` at :attr:`tolerance` (None if not
        run): ``closes`` (verified), ``loss`` / ``gain`` (unexplained), ``non-finite`` or ``score ~0``."""
        return None if self.zero_bias is None else self.zero_bias.verdict(self.tolerance, ATOL)

    @property
    def verified(self) -> bool:
        """The books close in zero-bias mode (False when it was not run or cannot judge)."""
        verdict = self.verdict
        return verdict is not None and verdict.verified

    @property
    def conserves(self) -> bool | None:
        """Zero-bias mode: the gap is explained by known causes (:attr:`verdict`; None if not run or the
        score is ~0 so it cannot judge)."""
        verdict = self.verdict
        if verdict is None or verdict.status == "score ~0":
            return None
        return verdict.verified

    @property
    def ok(self) -> bool:
        """No UNHANDLED op, every rule opaque, everything finite, and (if run) zero-bias bookkeeping closes."""
        return not self.unhandled and self.opaque and self.provenance.ok and self.conserves is not False

    def checks(self) -> list[tuple[str, bool | None, str]]:
        """``(check, passed, detail)`` for the summary table (``None``: informative only)."""
        on_path = counts(self.coverage, on_path_only=True)
        total = sum(on_path.values())
        off = counts(self.coverage)["off-path"]
        cov = (f"{total} ops on the relevance path or ruled: {on_path['rule']} rule, {on_path['linear']} linear, "
               f"{on_path['selection']} selection, {on_path['UNHANDLED']} UNHANDLED ({off} off-path)")
        bad = [r for r in self.opacity if not r.ok or r.problem]
        opa = (f"{len(self.opacity) - len(bad)}/{len(self.opacity)} decided rules are rule calls in the "
               "recompiled code" + (f"; {bad[0].name}: {bad[0].problem}" if bad else ""))
        c = self.conservation
        causes = c.by_cause()
        con = (f"input ΣR {_num(c.input_sum)} of score {_num(c.score)} ({_pct(c.input_sum, c.score)}); "
               "lost to " + ", ".join(f"{k} {_num(v)}" for k, v in causes.items() if k != "target" and
                                      (abs(v) > 1e-6 * max(abs(c.score), 1e-30) or k == "softmax")))
        rows: list[tuple[str, bool | None, str]] = [("coverage", not self.unhandled, cov),
                                                    ("rule opacity", self.opaque, opa),
                                                    ("conservation", None, con)]
        if self.zero_bias is not None:
            z = self.zero_bias
            zc = z.by_cause()
            known = ", ".join(f"{k} {_num(v)}" for k, v in zc.items() if k not in ("other", "target")
                              and (abs(v) > 1e-6 * max(abs(z.score), 1e-30) or k == "softmax"))
            rows.append(("zero-bias", self.conserves,
                         f"|input − score|/|score| = {_sci(z.relative_gap)}; explained by {known}; "
                         f"unexplained {_sci(z.relative(z.unexplained))} of |score| "
                         f"(tolerance {_sci(self.tolerance)}); verdict: {self.verdict.reason}"))
        p = self.provenance
        fin = (f"every value ({p.checked_values} nodes), gradient and relevance ({p.checked_edges} edges) finite"
               if p.ok else str(p.first))
        rows.append(("finiteness", p.ok, fin))
        return rows

    # ---- the condensed per-block view -------------------------------------------------------------------

    def blocks(self, conservation: Conservation | None = None) -> list[BlockRow]:
        """One row per stretch of the graph: relevance-path ops, rules, UNHANDLED, ΣR in/out, losses."""
        conservation = conservation if conservation is not None else self.conservation
        out = []
        for seg in conservation.segments:
            rows = [r for r in self.coverage if r.segment == seg.label and r.kind != "off-path"]
            rules: dict[str, int] = {}
            for r in self.coverage:  # one per decision (stop rules sit off the path; regions count once)
                if r.segment == seg.label and r.kind == "rule" and r.rule and not r.role:
                    rules[r.rule] = rules.get(r.rule, 0) + 1
            out.append(BlockRow(seg.label, len(rows), rules, sum(r.kind == "UNHANDLED" for r in rows),
                                seg.below, seg.above, seg.lost, dict(seg.by_cause)))
        return out

    # ---- exports ----------------------------------------------------------------------------------------

    def to_networkx(self) -> nx.DiGraph:
        """The captured graph: one node per fx node (attributes ``op``, ``target``, ``module_path``,
        ``rule``, ``on_path``, ``kind``, ``block``, ``absorbed`` where measured), one edge per data flow."""
        absorbed = {leak.name: leak.absorbed for leak in self.conservation.leaks}
        import networkx as nx  # imported on use: ~0.15 s at start-up otherwise

        graph = nx.DiGraph(model=self.model_class, composite=self.composite)
        for n in self.graph_nodes:
            graph.add_node(n.name, op=n.op, target=n.target, module_path=n.module_path, rule=n.rule,
                           on_path=n.on_path, kind=n.kind, block=-1 if n.block is None else n.block,
                           absorbed=absorbed.get(n.name, 0.0))
        for n in self.graph_nodes:
            for src in n.inputs:
                graph.add_edge(src, n.name)
        return graph

    def to_dict(self) -> dict[str, Any]:
        """Plain Python (JSON-ready) summary."""
        return {
            "model": self.model_class, "composite": self.composite, "target": self.target, "score": self.score,
            "ok": self.ok, "verified": self.verified, "verdict": None if self.verdict is None else self.verdict.reason,
            "checks": [{"check": c, "passed": p, "detail": d} for c, p, d in self.checks()],
            "unhandled": [{"node": r.name, "op": r.op, "module_path": r.module_path, "source": r.source}
                          for r in self.unhandled],
            "blocks": [vars(b) for b in self.blocks()],
            "zero_bias_blocks": [vars(b) for b in self.blocks(self.zero_bias)] if self.zero_bias else None,
        }

    def __str__(self) -> str:
        console = Console(width=120, record=True, color_system=None, force_terminal=False, file=_Null())
        console.print(self)
        return console.export_text().rstrip()

    # ---- rich -------------------------------------------------------------------------------------------

    def __rich__(self) -> Group:
        parts: list[Any] = [Text(self.title(), style="bold"), self._checks_table()]
        if self.unhandled:
            parts.append(_coverage_table(self.unhandled, "UNHANDLED ops on the relevance path", style="red"))
        bad = [r for r in self.opacity if not r.ok or r.problem]
        if bad:
            parts.append(_opacity_table(bad))
        scale = abs(self.score)
        parts.append(_blocks_table(self.blocks(), "per block: relevance entering (in) and leaving (out) "
                                   "each stretch, and what it lost", scale))
        parts.append(_leaks_table(self.conservation, 8))
        if self.zero_bias is not None:
            if _same_bookkeeping(self.conservation, self.zero_bias):
                parts.append(Text("zero-bias mode: same bookkeeping as above (no bias on the relevance path, "
                                  "no rule used its ε)", style="dim"))
            else:
                parts.append(_blocks_table(self.blocks(self.zero_bias), "zero-bias mode (biases and ε zeroed in "
                                           "a copy of the graph): per block", abs(self.zero_bias.score),
                                           compact=True))
        if not self.provenance.ok:
            parts.append(_provenance_table(self.provenance))
        return Group(*parts)

    def title(self) -> str:
        """The report's one-line heading: model class, composite, target and score, seconds taken."""
        return (f"lxt-fx check · {self.model_class} · composite {self.composite} · {self.target} = "
                f"{_num(self.score)} · {self.seconds:.1f} s")

    def _checks_table(self) -> Table:
        table = Table(title="checks", title_justify="left", show_lines=False)
        table.add_column("check")
        table.add_column("", justify="center")
        table.add_column("detail", overflow="fold")
        for name, passed, detail in self.checks():
            mark = Text("✓", style="green") if passed else Text("✗", style="bold red") if passed is False \
                else Text("·", style="dim")
            table.add_row(name, mark, Text(detail))
        return table

    # ---- HTML -------------------------------------------------------------------------------------------

    def _repr_html_(self) -> str:
        parts = [f"<div class='lxt-check'>{STYLE}", f"<h3>{escape(self.title())}</h3>"]
        rows = []
        for name, passed, detail in self.checks():
            mark = "<span class='ok'>✓</span>" if passed else (
                "<span class='bad'>✗</span>" if passed is False else "·")
            rows.append([escape(name), mark, escape(detail)])
        parts.append(html_table("checks", ["check", "", "detail"], rows))
        if self.unhandled:
            parts.append(html_table("UNHANDLED ops on the relevance path", ["node", "op", "module path",
                                     "source"], [[escape(r.name), escape(r.op), escape(r.module_path or "<top>"),
                                                  escape(short_source(r.source))] for r in self.unhandled], cls="bad"))
        bad = [r for r in self.opacity if not r.ok or r.problem]
        if bad:
            parts.append(html_table("rule opacity failures", ["node", "rule", "problem"],
                                     [[escape(r.name), escape(r.rule), escape(r.problem)] for r in bad], cls="bad"))
        parts.append(_html_blocks(self.blocks(), "per block: relevance entering (in) and leaving (out) each "
                                  "stretch, and what it lost", abs(self.score)))
        leaks = self.conservation.top(8)
        parts.append(html_table("largest losses by node", ["node", "op", "cause", "absorbed", "module path"],
                                 [[escape(x.name), escape(x.op), escape(x.cause), _num(x.absorbed),
                                   escape(x.module_path or "<top>")] for x in leaks]))
        if self.zero_bias is not None and not _same_bookkeeping(self.conservation, self.zero_bias):
            parts.append(_html_blocks(self.blocks(self.zero_bias), "zero-bias mode: per block",
                                      abs(self.zero_bias.score)))
        if not self.provenance.ok:
            parts.append(html_table("non-finite tensors", ["stage", "finding"],
                                     [[escape(f.stage), escape(str(f))] for f in _findings(self.provenance)], cls="bad"))
        on_path = [r for r in self.coverage if r.kind != "off-path"]
        shown = on_path[:MAX_HTML_ROWS]
        more = f" (first {MAX_HTML_ROWS} of {len(on_path)})" if len(on_path) > MAX_HTML_ROWS else ""
        parts.append("<details><summary>every relevance-path op" + escape(more) + "</summary>")
        parts.append(html_table("", ["node", "op", "kind", "rule", "module path", "source"],
                                 [[escape(r.name), escape(r.op), f"<span class='k-{escape(r.kind)}'>{escape(r.kind)}</span>",
                                   escape(r.rule), escape(r.module_path or "<top>"), escape(short_source(r.source))]
                                  for r in shown]))
        parts.append("</details>")
        causes = "".join(f"<li><b>{escape(k)}</b>: {escape(v)}</li>" for k, v in CAUSE_HELP.items())
        parts.append(f"<details><summary>causes</summary><ul>{causes}</ul></details></div>")
        return "\n".join(parts)


MAX_HTML_ROWS = 600


class _Null:
    def write(self, _: str) -> int:
        return 0

    def flush(self) -> None:
        pass


def short_op(op: str) -> str:
    """``aten.scaled_dot_product_attention.default`` → ``scaled_dot_product_attention``."""
    return op.removeprefix("aten.").removesuffix(".default")


def _num(x: float | None) -> str:
    if x is None:
        return ""
    return f"{x:+.4g}" if abs(x) >= 1e-3 or x == 0 else f"{x:+.2e}"


def _sci(x: float) -> str:
    return f"{x:.1e}"


def _pct(part: float, whole: float) -> str:
    return f"{100 * part / whole:.1f}%" if whole else "n/a"


def _rules_text(rules: dict[str, int]) -> str:
    return " ".join(k if v == 1 else f"{k}×{v}" for k, v in sorted(rules.items()))


def _findings(p: Provenance) -> list:
    return [f for f in (p.value, p.gradient, p.relevance) if f is not None]


def _coverage_table(rows: Sequence[CoverageRow], title: str, style: str = "") -> Table:
    table = Table(title=title, title_justify="left", title_style=style or None)
    for col in ("node", "op", "kind", "module path", "source"):
        table.add_column(col, overflow="fold")
    for r in rows:
        table.add_row(r.name, short_op(r.op), Text(r.kind, style="bold red" if r.kind == "UNHANDLED" else ""),
                      r.module_path or "<top>", short_source(r.source))
    return table


def _opacity_table(rows: Iterable[OpacityRow]) -> Table:
    table = Table(title="rule opacity failures", title_justify="left", title_style="red")
    for col in ("node", "rule", "problem"):
        table.add_column(col, overflow="fold")
    for r in rows:
        table.add_row(r.name, r.rule, r.problem)
    return table


def _shown_causes(rows: list[BlockRow], scale: float) -> list[str]:
    """The cause columns worth a column: softmax and other always, the rest where any block has one."""
    return [c for c in CAUSES if c in ("softmax", "other") or
            any(abs(b.by_cause.get(c, 0.0)) > 1e-6 * scale for b in rows)]


def _same_bookkeeping(a: Conservation, b: Conservation) -> bool:
    scale = max(abs(a.score), 1e-30)
    return abs(a.score - b.score) <= 1e-6 * scale and all(
        abs(x.below - y.below) <= 1e-6 * scale and abs(x.above - y.above) <= 1e-6 * scale
        for x, y in zip(a.segments, b.segments, strict=True))


def _blocks_table(rows: list[BlockRow], title: str, scale: float, compact: bool = False) -> Table:
    table = Table(title=title, title_justify="left")
    table.add_column("stretch", no_wrap=True)
    if not compact:
        table.add_column("ops", justify="right")
        table.add_column("UNHANDLED", justify="right")
    table.add_column("ΣR in", justify="right", no_wrap=True)
    table.add_column("ΣR out", justify="right", no_wrap=True)
    table.add_column("lost", justify="right", no_wrap=True)
    causes = _shown_causes(rows, scale)
    for cause in causes:
        table.add_column(cause, justify="right", no_wrap=True)
    for b in rows:
        cells = [b.label]
        if not compact:
            cells += [str(b.path_ops) if b.label != "target" else "",
                      Text(str(b.unhandled), style="bold red") if b.unhandled else "0" if b.label != "target"
                      else ""]
        cells += [_num(b.below), _num(b.above), _num(b.lost)]
        cells += [_num(b.by_cause[c]) if c in b.by_cause else "" for c in causes]
        table.add_row(*cells)
    return table


def _leaks_table(conservation: Conservation, k: int) -> Table:
    table = Table(title=f"largest losses by node (top {k} by |absorbed|)", title_justify="left")
    table.add_column("node", no_wrap=True)
    table.add_column("op", overflow="ellipsis", max_width=22, no_wrap=True)
    table.add_column("cause")
    table.add_column("absorbed", justify="right", no_wrap=True)
    table.add_column("module path", no_wrap=True)
    for x in conservation.top(k):
        table.add_row(x.name, short_op(x.op), x.cause, _num(x.absorbed), x.module_path or "<top>")
    return table


def _provenance_table(p: Provenance) -> Table:
    table = Table(title="non-finite tensors (first of each kind)", title_justify="left", title_style="red")
    for col in ("stage", "node", "op", "kind", "module path", "source", "backward of"):
        table.add_column(col, overflow="fold")
    for f in _findings(p):
        table.add_row(f.stage, f.node, short_op(f.op), f.kind, f.module_path or "<top>", short_source(f.source),
                      f"{f.via} ({f.via_module_path or '<top>'})" if f.via else "")
    return table


def _html_blocks(rows: list[BlockRow], caption: str, scale: float) -> str:
    causes = _shown_causes(rows, scale)
    header = ["stretch", "path ops", "rules", "UNHANDLED", "ΣR in", "ΣR out", "lost", *causes]
    body = []
    for b in rows:
        body.append([escape(b.label), str(b.path_ops), escape(_rules_text(b.rules)),
                     f"<span class='bad'>{b.unhandled}</span>" if b.unhandled else "0",
                     _num(b.below), _num(b.above), _num(b.lost),
                     *[_num(b.by_cause[c]) if c in b.by_cause else "" for c in causes]])
    return html_table(caption, header, body)


__all__ = ["BlockRow", "CheckReport", "GraphNode", "KINDS"]
