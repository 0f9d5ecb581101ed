"""Attribution graphs: the most relevant components and the relevance flowing between them.

One forward through the rewritten (LRP) graph with a :class:`~lxt_fx.features.patching.Probe` after every
candidate component's node, one backward from the explained score: component ``c`` has relevance
``R_c = Σ_{i∈c} a_i · ∂̃m/∂a_i`` (AttnLRP's modified gradient ``∂̃``, summed over its channels and positions).
Nodes are the components with the largest ``|R_c|``, taken until they hold ``coverage`` of ``Σ_c |R_c|`` (at
most ``max_nodes``).

Edges come from conditional relevance (as in :func:`lxt_fx.features.conditional`): for node ``B`` the backward
restarts at ``B``'s output with its modified gradient masked to ``B``'s channels, ``g_B ⊙ m_B``, and runs down
to every earlier node ``A`` and the input. ``R_{A←B} = Σ_{i∈A} a_i · ∂̃(g_B ⊙ m_B)/∂a_i`` is the part of
``B``'s relevance that reaches ``A``'s output, and the edge ``A → B`` carries the share ``R_{A←B} / R_B``. The
same restart gives ``B``'s token relevance (its "top tokens"). Incoming edges of each node are pruned to the
largest ones that hold ``coverage`` of its ``Σ_A |R_{A←B}|``.

The result converts to a ``networkx.DiGraph``, to JSON, and to a self-contained HTML page (inline SVG and JS,
no network): click a node to see its top tokens and its patching score.
"""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from ..composites.registry import resolve_composite
from ..explain import model_call, model_device, token_strings
from ..render.common import display_tokens
from ..session import check_model, embed, input_embeddings, rewritten_graph
from ..targets import as_target
from ..tracing.modes import in_eval_mode
from .components import Component, find_components
from .patching import PlaceError, _run, _score, patching, probed_graph

__all__ = ["CircuitEdge", "CircuitGraph", "CircuitNode", "attribution_graph"]

OUTPUT = "output"


@dataclass
class CircuitNode:
    """One component in the graph: its ``label`` (``L3.H2``, ``L5.MLP``), relevance ``R_c``, its share of the
    explained score's relevance, its top tokens ``[(token, relevance)]`` (the input relevance that flows
    through it) and its patching score (RelP, when a corrupted input was given)."""

    id: str
    kind: str
    layer: int | None
    relevance: float
    share: float
    top_tokens: list[tuple[str, float]] = field(default_factory=list)
    patching: float | None = None


@dataclass
class CircuitEdge:
    """``source → target``: ``share`` of the target's relevance that reaches the source's output
    (``relevance`` in absolute units); the target ``"output"`` is the explained score."""

    source: str
    target: str
    share: float
    relevance: float


@dataclass
class CircuitGraph:
    """Nodes, edges, the explained score and the tokens of the input."""

    nodes: list[CircuitNode]
    edges: list[CircuitEdge]
    score: float
    tokens: list[str]
    coverage: float

    def to_networkx(self) -> Any:
        """A ``networkx.DiGraph``: node attributes as in :class:`CircuitNode`, edge attributes ``share`` and
        ``relevance``; the explained score is the node ``"output"``."""
        import networkx as nx

        g = nx.DiGraph()
        g.add_node(OUTPUT, kind="output", relevance=self.score, share=1.0)
        for n in self.nodes:
            g.add_node(n.id, **{k: v for k, v in asdict(n).items() if k != "id"})
        for e in self.edges:
            g.add_edge(e.source, e.target, share=e.share, relevance=e.relevance)
        return g

    def to_dict(self) -> dict[str, Any]:
        """Plain data (JSON-ready)."""
        return {"score": self.score, "tokens": self.tokens, "coverage": self.coverage,
                "nodes": [asdict(n) for n in self.nodes], "edges": [asdict(e) for e in self.edges]}

    def to_json(self) -> str:
        """The graph as JSON text (:meth:`to_dict`)."""
        return json.dumps(self.to_dict(), indent=1)

    def to_html(self, title: str = "Attribution graph") -> str:
        """A self-contained page: the graph as inline SVG (layers bottom to top, edge width ∝ share), and a
        panel that shows a clicked node's relevance, top tokens and patching score. No external resources."""
        return _html(self, title)


def _top_tokens(rel: Tensor, tokens: list[str], k: int) -> list[tuple[str, float]]:
    order = torch.argsort(rel.abs(), descending=True)[:k]
    return [(f"{tokens[i].strip() or tokens[i]}@{int(i)}", float(rel[i])) for i in order]


def _keep_by_coverage(values: Sequence[float], coverage: float, limit: int) -> list[int]:
    """Indices of the largest ``|values|`` that hold ``coverage`` of their sum (at most ``limit``)."""
    total = sum(abs(v) for v in values)
    order = sorted(range(len(values)), key=lambda i: -abs(values[i]))
    kept, acc = [], 0.0
    for i in order:
        if len(kept) >= limit or (total > 0 and acc >= coverage * total) or values[i] == 0:
            break
        kept.append(i)
        acc += abs(values[i])
    return kept


def _mask(c: Component, like: Tensor) -> Tensor:
    m = torch.zeros_like(like).reshape(like.shape[0], -1, like.shape[-1])
    channels = slice(c.start, c.stop) if c.start is not None else slice(None)
    if c.position is None:
        m[:, :, channels] = 1.0
    else:
        m[:, c.position, channels] = 1.0
    return m.reshape(like.shape)


def _sum(c: Component, r: Tensor) -> float:
    return float((r * _mask(c, r)).sum(dtype=torch.float64))


@in_eval_mode
def attribution_graph(model: nn.Module, inputs: Any, *, tokenizer: Any = None, target: Any = None,
                      corrupt: Any = None, components: Sequence[str] | Sequence[Component] = ("heads", "mlp"),
                      layers: Sequence[int] | None = None, coverage: float = 0.8, max_nodes: int = 16,
                      top_tokens: int = 5, composite: Any = None) -> CircuitGraph:
    """The attribution graph of ``target`` (as in :func:`lxt_fx.explain`) for one input (see the module
    docstring): nodes are the components (kinds as in :func:`~lxt_fx.features.patching.patching`) that hold
    ``coverage`` of ``Σ|R_c|`` (at most ``max_nodes``); edge ``A → B`` is the share of ``B``'s relevance that
    reaches ``A``'s output, from conditional relevance; each node's incoming edges are pruned to ``coverage``
    of their ``Σ|R|``. With ``corrupt`` (an input of the same length), each node also carries its RelP score."""
    model = check_model(model)
    if not 0 < coverage <= 1:
        raise PlaceError(f"coverage={coverage}: give the share of |R| the graph must hold, in (0, 1]")
    comp = resolve_composite(composite, model)
    goal = as_target(target)
    call = model_call(model, inputs, tokenizer=tokenizer)
    if set(call) != {"input_ids", "attention_mask"} or call["input_ids"].shape[0] != 1:
        raise PlaceError("attribution_graph takes one text or one row of input_ids")
    ids, mask = call["input_ids"].to(model_device(model)), call["attention_mask"].to(model_device(model))
    with torch.no_grad():
        base = embed(input_embeddings(model), ids, model).detach()
    with torch.enable_grad():
        graph = rewritten_graph(model, comp, {"inputs_embeds": base.requires_grad_(True), "attention_mask": mask}, {})
    base = base.detach()
    if components and all(isinstance(c, Component) for c in components):
        comps = list(components)
    else:
        comps = find_components(graph, model, [components] if isinstance(components, str) else list(components),
                                ids.shape[1], layers)
    nodes = sorted({c.node for c in comps})
    gm, probes = probed_graph(graph, nodes, lrp=True)
    order = {n.name: i for i, n in enumerate(gm.graph.nodes)}
    tokens = display_tokens(token_strings(ids[0], tokenizer), ids[0].tolist(), tokenizer)
    for p in probes.values():
        p.keep = True
    try:
        with torch.enable_grad():
            leaf = base.clone().requires_grad_(True)
            score, _ = _score(_run(gm, leaf, mask), goal, mask, None, tokenizer)
            held = {n: probes[n].last for n in nodes}
            values = {n: probes[n].value for n in nodes}
            if any(h is None for h in held.values()):
                raise PlaceError("a component carries no gradient from the input: nothing flows through it")
            grads = dict(zip(nodes, torch.autograd.grad(score.sum(), [held[n] for n in nodes], retain_graph=True,
                                                        allow_unused=True), strict=True))
            rel = {n: values[n] * (torch.zeros_like(values[n]) if grads[n] is None else grads[n]) for n in nodes}
            r_comp = [_sum(c, rel[c.node]) for c in comps]
            kept = [comps[i] for i in _keep_by_coverage(r_comp, coverage, max_nodes)]
            total = float(score.detach().sum())
            out_nodes, edges = [], []
            for b in kept:
                g_b = grads[b.node] * _mask(b, grads[b.node])
                r_b = _sum(b, rel[b.node])
                upstream = [n for n in nodes if order[n] < order[b.node]]
                got = torch.autograd.grad(held[b.node], [held[n] for n in upstream] + [leaf], grad_outputs=g_b,
                                          retain_graph=True, allow_unused=True)
                token_rel = (leaf.detach() * got[-1]).sum(-1)[0] if got[-1] is not None else torch.zeros(len(tokens))
                incoming = []
                for a in kept:
                    if a.node in upstream and got[upstream.index(a.node)] is not None:
                        incoming.append((a, _sum(a, values[a.node] * got[upstream.index(a.node)])))
                for i in _keep_by_coverage([r for _, r in incoming], coverage, len(incoming)):
                    a, r = incoming[i]
                    edges.append(CircuitEdge(a.label, b.label, r / r_b if r_b else 0.0, r))
                edges.append(CircuitEdge(b.label, OUTPUT, r_b / total if total else 0.0, r_b))
                out_nodes.append(CircuitNode(b.label, b.kind, b.layer, r_b, r_b / total if total else 0.0,
                                             _top_tokens(token_rel.float(), tokens, top_tokens)))
    finally:
        for p in probes.values():
            p.keep, p.last, p.value = False, None, None
    if corrupt is not None:
        est = patching(model, inputs, corrupt, tokenizer=tokenizer, target=target, components=kept,
                       methods=("relp",), composite=composite)
        for n, s in zip(out_nodes, est.scores["relp"].tolist(), strict=True):
            n.patching = s
    return CircuitGraph(out_nodes, edges, total, tokens, coverage)


# ---- the HTML view ------------------------------------------------------------------------------------


_SCRIPT = """
const data = JSON.parse(document.getElementById('graph-data').textContent);
const panel = document.getElementById('panel');
function show(id) {
  const n = data.nodes.find(x => x.id === id);
  document.querySelectorAll('.node').forEach(e => e.classList.toggle('sel', e.dataset.id === id));
  if (!n) { panel.innerHTML = '<b>output</b><br>score ' + data.score.toFixed(4); return; }
  const esc = s => s.replace(/[&<>"]/g, c => ({'&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;'}[c]));
  let h = '<b>' + esc(n.id) + '</b> (' + n.kind + ')<br>relevance ' + n.relevance.toFixed(4) +
          ' (' + (100 * n.share).toFixed(1) + ' % of the score)<br>patching score (RelP): ' +
          (n.patching === null ? 'n/a (no corrupted input)' : n.patching.toFixed(4)) +
          '<br><br><b>top tokens</b><table>';
  for (const [t, r] of n.top_tokens) h += '<tr><td>' + esc(t) + '</td><td>' + r.toFixed(4) + '</td></tr>';
  h += '</table><br><b>inputs</b><ul>';
  for (const e of data.edges.filter(e => e.target === n.id))
    h += '<li>' + esc(e.source) + ': ' + (100 * e.share).toFixed(1) + ' %</li>';
  panel.innerHTML = h + '</ul>';
}
document.querySelectorAll('.node').forEach(e => e.addEventListener('click', () => show(e.dataset.id)));
if (location.hash) show(decodeURIComponent(location.hash.slice(1)));  // page.html#L3.H2 opens that node
"""


def _html(g: CircuitGraph, title: str) -> str:
    layers = sorted({n.layer for n in g.nodes if n.layer is not None})
    rows: dict[Any, list[CircuitNode]] = {}
    for n in g.nodes:
        rows.setdefault(n.layer, []).append(n)
    width, row_h = 760, 70
    height = row_h * (len(layers) + 2) + 20
    pos: dict[str, tuple[float, float]] = {OUTPUT: (width / 2, 30)}
    for r, layer in enumerate(sorted(rows, key=lambda v: -1 if v is None else v)):
        members = rows[layer]
        y = height - 40 - r * row_h
        shift = ((r % 3) - 1) * 90 if len(members) == 1 else 0  # lone nodes staggered: edges do not run through
        for i, n in enumerate(members):
            pos[n.id] = ((i + 1) * width / (len(members) + 1) + shift, y)
    top = max((abs(e.share) for e in g.edges), default=1.0) or 1.0
    parts = []
    for e in g.edges:
        (x1, y1), (x2, y2) = pos[e.source], pos[e.target]
        color = "#c0392b" if e.relevance >= 0 else "#2c6fbb"
        parts.append(f'<line x1="{x1:.0f}" y1="{y1:.0f}" x2="{x2:.0f}" y2="{y2:.0f}" stroke="{color}" '
                     f'stroke-opacity="0.6" stroke-width="{1 + 7 * abs(e.share) / top:.1f}">'
                     f'<title>{html.escape(e.source)} → {html.escape(e.target)}: {100 * e.share:.1f} %</title></line>')
    for n in [CircuitNode(OUTPUT, "output", None, g.score, 1.0)] + g.nodes:
        x, y = pos[n.id]
        fill = "#f5b7b1" if n.relevance >= 0 else "#aed6f1"
        parts.append(f'<g class="node" data-id="{html.escape(n.id)}" style="cursor:pointer">'
                     f'<rect x="{x - 42:.0f}" y="{y - 14:.0f}" width="84" height="28" rx="6" fill="{fill}" '
                     f'stroke="#333"/><text x="{x:.0f}" y="{y + 5:.0f}" text-anchor="middle" '
                     f'font-size="12">{html.escape(n.id)}</text></g>')
    data = json.dumps(g.to_dict()).replace("</", "<\\/")
    text = html.escape("".join(g.tokens))
    return f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;margin:12px}} #wrap{{display:flex;gap:16px}}
#panel{{min-width:260px;border:1px solid #ccc;padding:8px;font-size:13px}}
.node.sel rect{{stroke:#000;stroke-width:3}} td{{padding:0 8px}}</style></head>
<body><h3>{html.escape(title)}</h3><p style="font-size:13px">input: {text}<br>explained score {g.score:.4f};
nodes hold {100 * g.coverage:.0f} % of Σ|R| (or the node limit); edge width ∝ share of the upper node's relevance
that reaches the lower one. Click a node.</p>
<div id="wrap"><svg width="{width}" height="{height}" xmlns="http://www.w3.org/2000/svg">{''.join(parts)}</svg>
<div id="panel">click a node</div></div>
<script type="application/json" id="graph-data">{data}</script>
<script>{_SCRIPT}</script></body></html>
"""
