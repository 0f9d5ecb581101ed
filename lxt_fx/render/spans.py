"""Spans (sentences, passages, turns) ranked and highlighted: a terminal view (rich) and an HTML page.

A span's colour is its relevance divided by the largest ``|relevance|`` of any span (the usual diverging
palette: red for the target, blue against); inside a span, each token keeps its own colour on the token
scale (hover a token for its relevance in the HTML page)."""

from __future__ import annotations

import os
from html import escape
from typing import TYPE_CHECKING

from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from .common import hex_colour, rgb, shown, text_rgb
from .html import cell_style
from .page import page, write_text

if TYPE_CHECKING:
    from ..spans import SpanAttribution


def _scale(values: list[float]) -> float:
    return max((abs(v) for v in values), default=0.0) or 1.0


def _style(value: float) -> str:
    bg, fg = rgb(value), text_rgb(value)
    return f"rgb({fg[0]},{fg[1]},{fg[2]}) on rgb({bg[0]},{bg[1]},{bg[2]})"


def _snippet(text: str, width: int = 70) -> str:
    one = " ".join(text.split())
    return one if len(one) <= width else one[: width - 1] + "…"


def ranked_table(spans: SpanAttribution, k: int | None = None) -> Table:
    """The spans ranked by relevance: rank, label, relevance, share of Σ|R| over the spans, text."""
    ranked = spans.ranked()[:k] if k is not None else spans.ranked()
    total = sum(abs(v) for v in spans.relevance) or 1.0
    scale = _scale(spans.relevance)
    table = Table(title=f"spans ranked for {spans.target!r} (score {spans.score:.4f})", title_justify="left")
    for name, justify in (("#", "right"), ("span", "left"), ("relevance", "right"), ("share", "right"),
                          ("text", "left")):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for rank, (label, value, text) in enumerate(ranked, start=1):
        table.add_row(str(rank), label, Text(f"{value:+.4f}", style=_style(value / scale)),
                      f"{abs(value) / total:.1%}", _snippet(text))
    return table


def highlighted_text(spans: SpanAttribution) -> Text:
    """The whole text, each span on the colour of its relevance (text outside every span plain)."""
    scale = _scale(spans.relevance)
    out = Text()
    pos = 0
    for k in sorted(range(len(spans.spans)), key=lambda k: spans.spans[k].start):
        span = spans.spans[k]
        if span.start < pos:
            continue
        out.append(spans.text[pos:span.start])
        out.append(spans.text[span.start:span.end], style=_style(spans.relevance[k] / scale))
        pos = span.end
    out.append(spans.text[pos:])
    return out


def show_spans(spans: SpanAttribution, console: Console | None = None, k: int | None = None) -> None:
    """Print the ranked table (the top ``k``, default all) and the highlighted text."""
    console = console if console is not None else Console()
    note = (f"Σ spans {sum(spans.relevance):+.4f}, outside the spans {spans.outside:+.4f}, "
            f"total {spans.total:+.4f}")
    console.print(Group(ranked_table(spans, k), Text(note, style="dim"), highlighted_text(spans)))


def _span_block(spans: SpanAttribution, k: int, rank: int, scale: float, token_scale: float) -> str:
    span = spans.spans[k]
    tokens = []
    for (a, b), owner, value in zip(spans.offsets, spans.token_span, spans.token_relevance, strict=True):
        if owner != k:
            continue
        a, b = max(a, span.start), min(b, span.end)
        tokens.append(f'<span class="tok" style="{cell_style(value / token_scale)}" title="{value:.6g}">'
                      f"{escape(shown(spans.text[a:b]))}</span>")
    value = spans.relevance[k]
    colour = hex_colour(rgb(value / scale))
    return (f'<div class="row" style="border-left: 0.6em solid {colour}; padding-left: 0.6em">'
            f'<div class="head">#{rank} &nbsp; <b>{escape(span.label)}</b> &nbsp; relevance {value:+.4f}</div>'
            f'<div class="text">{"".join(tokens)}</div></div>')


def spans_html(spans: SpanAttribution, path: str | os.PathLike[str] | None = None,
               title: str = "lxt-fx: relevance per span") -> str:
    """The spans ranked, most relevant first, each as a block framed in its span colour with its tokens on
    their own colours inside; then the whole text with every span highlighted. Written to ``path`` when
    given; returns the page."""
    scale = _scale(spans.relevance)
    token_scale = _scale(spans.token_relevance)
    order = sorted(range(len(spans.spans)), key=lambda k: spans.relevance[k], reverse=True)
    blocks = "".join(_span_block(spans, k, rank, scale, token_scale) for rank, k in enumerate(order, start=1))
    whole, pos = [], 0
    for k in sorted(range(len(spans.spans)), key=lambda k: spans.spans[k].start):
        span = spans.spans[k]
        if span.start < pos:
            continue
        whole.append(escape(spans.text[pos:span.start]))
        whole.append(f'<span style="{cell_style(spans.relevance[k] / scale)}" title="{escape(span.label)}: '
                     f'{spans.relevance[k]:.6g}">{escape(spans.text[span.start:span.end])}</span>')
        pos = span.end
    whole.append(escape(spans.text[pos:]))
    body = (f"<h1>{escape(title)}</h1><div class='head'>explained: <b>{escape(repr(spans.target))}</b> &nbsp; "
            f"score {spans.score:.4f} &nbsp; Σ spans {sum(spans.relevance):+.4f} &nbsp; outside the spans "
            f"{spans.outside:+.4f}</div>{blocks}<h1>the text</h1>"
            f'<div class="text" style="white-space: pre-wrap">{"".join(whole)}</div>')
    html = page(body, title)
    if path is not None:
        write_text(path, html)
    return html
