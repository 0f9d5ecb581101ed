"""The neuron card: one self-contained HTML page per neuron — its top snippets by activation and by relevance
with the firing token highlighted, its stats, and (given a prompt) its conditional heatmap."""

from __future__ import annotations

import html
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..render.common import unknown_id

if TYPE_CHECKING:
    from .index import FeatureIndex, Snippet

__all__ = ["NeuronCard", "index_html"]

_STYLE = ("body{font-family:system-ui,sans-serif;margin:1.5em;max-width:60em}"
          "h1{font-size:1.3em}h2{font-size:1.05em;margin-top:1.4em}"
          ".snip{font-family:ui-monospace,monospace;font-size:.9em;margin:.3em 0;white-space:pre-wrap}"
          ".fire{background:#ffb347;border-radius:3px;font-weight:bold}.val{color:#666;margin-right:.6em}"
          "table{border-collapse:collapse}td,th{padding:.2em .7em;border-bottom:1px solid #ddd;text-align:left}")


def _piece(token: str | None) -> str:
    if token is None:  # an id the tokenizer does not know (an index written before names were kept)
        return unknown_id("?")
    return token.replace("Ġ", " ").replace("▁", " ").replace("Ċ", "⏎")


def _snippet_html(s: Snippet) -> str:
    parts = []
    for i, tok in enumerate(s.tokens):
        text = html.escape(_piece(tok))
        parts.append(f'<span class="fire" title="position {i}">{text}</span>' if i == s.position else text)
    return f'<div class="snip"><span class="val">{s.value:+.3g}</span>{"".join(parts)}</div>'


def _heatmap_html(att: Any, row: int = 0) -> str:
    """Tokens of ``row`` coloured by relevance (red positive, blue negative, scaled to the row's max |R|)."""
    pairs = att.row(row)
    scale = max((abs(v) for _, v in pairs), default=0.0) or 1.0
    spans = []
    for tok, v in pairs:
        a = min(abs(v) / scale, 1.0)
        colour = f"rgba(220,30,30,{a:.2f})" if v >= 0 else f"rgba(30,80,220,{a:.2f})"
        spans.append(f'<span style="background:{colour}" title="{v:+.4g}">{html.escape(_piece(tok))}</span>')
    return f'<div class="snip">{"".join(spans)}</div>'


@dataclass
class NeuronCard:
    """One neuron of a :class:`~lxt_fx.features.index.FeatureIndex`, renderable as HTML; ``conditional``: an
    ``Attribution`` from :func:`lxt_fx.features.conditional` for this neuron (optional)."""

    index: FeatureIndex
    neuron: int
    conditional: Any = None

    def to_html(self, path: str | os.PathLike[str] | None = None) -> str:
        """The card as one self-contained HTML document (no scripts, no external files); written to ``path``."""
        ix, n = self.index, self.neuron
        stats = "".join(f"<tr><th>{html.escape(k)}</th><td>{v:.4g}</td></tr>" for k, v in ix.stats(n).items())
        body = [f"<h1>neuron {n} of <code>{html.escape(ix.place)}</code></h1>",
                f"<p>model {html.escape(str(ix.meta.get('model', '')))}, {len(ix.tokens)} snippets of ≤ "
                f"{ix.meta.get('length')} tokens; relevance for the model's own next-token predictions.</p>",
                f"<table>{stats}</table>"]
        for by in ("activation", "relevance"):
            body.append(f"<h2>top snippets by {by}</h2>")
            body += [_snippet_html(s) for s in ix.top(n, by=by)]
        if self.conditional is not None:
            tid = int(self.conditional.target_ids[0])
            target = (self.conditional.target_tokens or [None])[0]
            if target is None:
                target = unknown_id(tid) if tid >= 0 else "a function of the outputs"
            body.append(f"<h2>conditional heatmap: relevance for {html.escape(_piece(str(target)))!s} flowing "
                        f"through this neuron</h2>")
            body.append(_heatmap_html(self.conditional))
        page = (f"<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>neuron {n}</title>"
                f"<style>{_STYLE}</style></head><body>{''.join(body)}</body></html>")
        if path is not None:
            with open(path, "w", encoding="utf-8") as f:
                f.write(page)
        return page

    def _repr_html_(self) -> str:
        return self.to_html()


def index_html(ix: FeatureIndex, k: int = 10) -> str:
    """A short HTML table of the index: the ``k`` neurons with the largest mean relevance and their top snippet."""
    rows = []
    for n, mean in ix.ranked(k):
        best = ix.top(n, by="relevance", k=1)
        rows.append(f"<tr><td>{n}</td><td>{mean:+.3g}</td><td>{_snippet_html(best[0]) if best else ''}</td></tr>")
    return (f"<div><b>FeatureIndex</b> of <code>{html.escape(ix.place)}</code>: {ix.neurons} neurons, "
            f"{len(ix.tokens)} snippets<table><tr><th>neuron</th><th>mean relevance</th><th>top snippet</th></tr>"
            f"{''.join(rows)}</table></div>")
