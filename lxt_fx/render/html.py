"""Self-contained HTML heatmap: inline CSS, no scripts, no external assets (works offline); one ``<span>``
per token with its colour, its relevance on hover (``title``); one block per row of a batch. Pixel
relevance becomes a grid of coloured cells. Every style is scoped under ``.lxt`` so a fragment can be shown
inside a notebook without touching the page around it."""

from __future__ import annotations

import os
from collections.abc import Sequence
from html import escape
from typing import TYPE_CHECKING, Any

import torch

from .common import (
    NO_TOKENS,
    Row,
    has_maps,
    has_tokens,
    hex_colour,
    is_image,
    report_summary,
    rgb,
    rows,
    scale_note,
    text_rgb,
)
from .mixed import mixed_html
from .page import css, full_page, write_text

if TYPE_CHECKING:
    from ..attribution import Attribution



def cell_style(value: float) -> str:
    """Inline style: background for a value in [-1, 1] and a readable text colour on it."""
    return f"background:{hex_colour(rgb(value))};color:{hex_colour(text_rgb(value))}"


def _legend(scale: float, note: str) -> str:
    return (f'<div class="legend"><span>{-scale:+.3g}</span><span class="bar"></span><span>{scale:+.3g}</span>'
            f"<span>blue: against the target · red: for it · {escape(note)} · hover a token for its "
            "relevance</span></div>")


def _row_html(view: Row, score_label: str) -> str:
    parts = []
    index = 0
    for name, tokens in view.segments:
        if name:
            parts.append(f'<span class="seg">{escape(name)}:</span>')
        for token in tokens:
            marked = view.mark_from is not None and index >= view.mark_from
            cls = "tok mark" if marked else "tok"
            parts.append(f'<span class="{cls}" style="{cell_style(token.value)}" '
                         f'title="{token.relevance:.6g}">{escape(token.shown)}</span>')
            if "\n" in token.text:
                parts.append("<br>")
            index += 1
        if name:
            parts.append("<br>")
    return (f'<div class="row"><div class="head">explained: <b>{escape(view.label)}</b> &nbsp; '
            f"{escape(score_label)} {view.score:.4f} &nbsp; Σ relevance {view.total:.4f}</div>"
            f'<div class="text">{"".join(parts)}</div>{_legend(view.scale, scale_note(view))}</div>')


def _image_html(attribution: Attribution, row: int, score_label: str, cells: int = 64) -> str:
    rel = attribution.relevance[row].detach().float()
    h, w = rel.shape
    gh, gw = min(h, cells), min(w, cells)
    small = torch.nn.functional.adaptive_avg_pool2d(rel[None, None], (gh, gw))[0, 0]
    scale = float(rel.abs().max())
    norm = (small / (scale or 1.0)).clamp(-1, 1).tolist()
    values = small.tolist()
    grid = "".join(f'<div style="background:{hex_colour(rgb(v))}" title="{r:.4g}"></div>'
                   for vs, rs in zip(norm, values, strict=True) for v, r in zip(vs, rs, strict=True))
    tid = int(attribution.target_ids[row])
    label = f"class {tid}" if tid >= 0 else "a function of the outputs"
    return (f'<div class="row"><div class="head">explained: <b>{escape(label)}</b> &nbsp; {escape(score_label)} '
            f"{float(attribution.target_scores[row]):.4f} &nbsp; Σ relevance {float(rel.sum()):.4f} &nbsp; "
            f"({h}×{w} pixels, shown as {gh}×{gw} cells)</div>"
            f'<div class="grid" style="grid-template-columns: repeat({gw}, 6px)">{grid}</div>'
            f"{_legend(scale, 'colours scaled by max|R|')}</div>")


def to_html(attribution: Attribution, path: str | os.PathLike[str] | None = None, *, tokenizer: Any = None,
            skip_first: bool = False, title: str = "lxt-fx relevance", score_label: str = "logit",
            labels: Sequence[str] | None = None, mark_from: Sequence[int | None] | int | None = None,
            fragment: bool = False) -> str:
    """The heatmap of every row as one self-contained HTML page; written to ``path`` too when given.

    Each token is a ``<span class="tok">`` whose background is its relevance normalized to [-1, 1] (blue
    negative, white zero, red positive) and whose ``title`` (shown on hover) is its relevance. ``tokenizer``
    shows tokens as the text they decode to; ``skip_first`` leaves the first token out of the colour scale;
    ``fragment=True`` gives a ``<style>`` plus ``<div>`` to embed (e.g. in a notebook) instead of a page.
    """
    if is_image(attribution):
        blocks = [_image_html(attribution, r, score_label) for r in range(len(attribution))]
    elif not has_tokens(attribution):  # audio (or other) maps, no tokens
        blocks = [f'<div class="row">{mixed_html(attribution, r)}</div>' if has_maps(attribution) else
                  f'<div class="row">{escape(NO_TOKENS.format(model=attribution.report.model_class))}</div>'
                  for r in range(len(attribution))]
    else:
        views = rows(attribution, tokenizer=tokenizer, skip_first=skip_first, labels=labels, mark_from=mark_from)
        blocks = [_row_html(view, score_label) for view in views]
    body = (f'<div class="lxt"><h1>{escape(title)}</h1>{"".join(blocks)}'
            f'<div class="report">{escape(report_summary(attribution))}</div></div>')
    page = full_page(body, title) if not fragment else f"<style>{css()}</style>{body}"
    if path is not None:
        write_text(path, page)
    return page
