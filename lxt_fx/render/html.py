"""Self-contained HTML heatmap: inline CSS, one ``<span>`` per token with its colour and relevance."""

from __future__ import annotations

import os
from html import escape

from ..attribution import Attribution
from .common import hex_colour, normalized, report_summary, rgb, target_label, text_rgb

_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
.row { margin: 1.2em 0; }
.head { font-size: 0.95em; margin-bottom: 0.4em; }
.text { font-family: ui-monospace, monospace; font-size: 1.05em; line-height: 1.9; }
.tok { white-space: pre; padding: 0.15em 0.05em; border-radius: 3px; }
.legend { display: flex; align-items: center; gap: 0.5em; font-size: 0.85em; margin-top: 0.6em; }
.bar { width: 16em; height: 0.9em; border: 1px solid #ccc;
       background: linear-gradient(to right, %(neg)s, #ffffff, %(pos)s); }
.report { font-size: 0.8em; color: #555; margin-top: 1.5em; }
"""


def _span(token: str, relevance: float, value: float) -> str:
    style = f"background:{hex_colour(rgb(value))};color:{hex_colour(text_rgb(value))}"
    return f'<span class="tok" style="{style}" title="{relevance:.6g}">{escape(token)}</span>'


def to_html(attribution: Attribution, path: str | os.PathLike[str] | None = None, *,
            title: str = "lxt-fx relevance", score_label: str = "logit") -> str:
    """The heatmap of every row as one self-contained HTML page; written to ``path`` too when given.

    Each token is a ``<span>`` whose background is its relevance normalized by the row's max|R| (blue
    negative, white zero, red positive) and whose ``title`` is its relevance.
    """
    css = _CSS % {"neg": hex_colour(rgb(-1.0)), "pos": hex_colour(rgb(1.0))}
    rows = []
    for row in range(len(attribution)):
        pairs, scale = normalized(attribution, row)
        score = float(attribution.target_scores[row])
        spans = "".join(_span(t, r, v) for t, r, v in pairs)
        rows.append(
            f'<div class="row"><div class="head">explained: <b>{escape(target_label(attribution, row))}</b> '
            f"&nbsp; {escape(score_label)} {score:.4f} &nbsp; Σ relevance {sum(r for _, r, _ in pairs):.4f}"
            f'</div><div class="text">{spans}</div>'
            f'<div class="legend"><span>{-scale:+.3g}</span><span class="bar"></span><span>{scale:+.3g}</span>'
            "<span>blue: against the target · red: for it · hover a token for its relevance</span></div></div>")
    page = (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>'
            f"<style>{css}</style></head><body><h1>{escape(title)}</h1>{''.join(rows)}"
            f'<div class="report">{escape(report_summary(attribution))}</div></body></html>\n')
    if path is not None:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            f.write(page)
    return page
