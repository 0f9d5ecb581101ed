"""Renderers of a :class:`~lxt_fx.generation.GenerationAttribution` (every generated token over the tokens
before it): one terminal heatmap per generated token, a self-contained HTML page where clicking a generated
token shows its map (inline CSS and script, no external resources: works offline), and the matrix as a PNG.

Each row is scaled by its own max|R| (``skip_first`` leaves the first, attention-sink token out of the
scale), on the palette of every renderer: blue against the token, white zero, red for it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from html import escape
from typing import TYPE_CHECKING, Any

from rich.console import Console

from .common import (
    NEGATIVE,
    POSITIVE,
    RenderError,
    display_tokens,
    hex_colour,
    named_tokens,
    rgb,
    shown,
    text_rgb,
)
from .figure import matplotlib_parts, save_figure
from .page import css, write_text
from .terminal import show

if TYPE_CHECKING:
    from ..generation import GenerationAttribution


def _check_rows(gen: GenerationAttribution, rows: Sequence[int] | None) -> list[int]:
    n = len(gen)
    chosen = list(range(n)) if rows is None else [int(r) for r in rows]
    bad = [r for r in chosen if not -n <= r < n]
    if bad:
        raise RenderError(f"rows {bad} do not exist: this generation has {n} generated token(s) (rows 0…{n - 1})")
    return [r % n for r in chosen]


def scaled(gen: GenerationAttribution, skip_first: bool = False) -> list[list[float]]:
    """Row ``k`` divided by its max|R| over the tokens it saw (``skip_first``: without the first), clipped to
    [-1, 1]; tokens a row did not see are 0."""
    out = []
    for k, row in enumerate(gen.matrix.tolist()):
        seen = row[: gen.prompt_length + k]
        considered = seen[1:] if skip_first and len(seen) > 1 else seen
        scale = max((abs(v) for v in considered), default=0.0) or 1.0
        out.append([max(-1.0, min(1.0, v / scale)) for v in row])
    return out


def show_generation(gen: GenerationAttribution, console: Console | None = None, *, tokenizer: Any = None,
                    skip_first: bool = False, rows: Sequence[int] | None = None, top: bool = False, k: int = 5
                    ) -> None:
    """Print one heatmap per generated token (``rows``: which ones, default all) over the tokens its
    prediction saw, the generated ones underlined; ``top=True`` adds the top-``k`` table of each."""
    chosen = _check_rows(gen, rows)
    att = gen.to_attribution(chosen)
    labels = [gen.labels(tokenizer)[r] for r in chosen]
    show(att, console, tokenizer=tokenizer, skip_first=skip_first, labels=labels, mark_from=gen.prompt_length,
         top=top, k=k)


_SCRIPT = """
(function () {
  var data = JSON.parse(document.getElementById('lxt-data').textContent);
  var toks = document.querySelectorAll('.lxt .gtext .tok');
  var neg = data.neg, pos = data.pos;
  function colour(v) {
    var end = v >= 0 ? pos : neg, a = Math.min(1, Math.abs(v)), c = [];
    for (var i = 0; i < 3; i++) { c.push(Math.round(255 + (end[i] - 255) * a)); }
    return 'rgb(' + c.join(',') + ')';
  }
  function select(k) {
    if (!(k >= 0 && k < data.rows.length)) { return; }
    var seen = data.prompt + k, row = data.rows[k], raw = data.raw[k];
    for (var i = 0; i < toks.length; i++) {
      var t = toks[i];
      t.classList.remove('sel'); t.classList.remove('unseen');
      if (i < seen) {
        t.style.background = colour(row[i]);
        t.style.color = Math.abs(row[i]) > 0.55 ? '#fff' : '#000';
        t.title = 'relevance ' + raw[i].toPrecision(6);
      } else {
        t.style.background = ''; t.style.color = '';
        if (i > seen) { t.classList.add('unseen'); }
        t.title = i === seen ? 'the explained token' : 'not yet generated when this token was predicted';
      }
    }
    toks[seen].classList.add('sel');
    document.getElementById('lxt-label').textContent = data.labels[k];
    document.getElementById('lxt-score').textContent = data.scores[k].toPrecision(6);
  }
  for (var i = data.prompt; i < toks.length; i++) {
    (function (k) { toks[data.prompt + k].addEventListener('click', function () {
      history.replaceState(null, '', '#' + k); select(k); }); })(i - data.prompt);
  }
  var start = parseInt((location.hash || '').slice(1), 10);
  select(isNaN(start) ? data.selected : start);
})();
"""

_CSS = """
.lxt .gtext .gen { cursor: pointer; border-bottom: 2px solid #888; }
.lxt .gtext .unseen { color: #999; background: #f4f4f4; }
.lxt .gtext .sel { outline: 2px solid #111; background: #ffe680 !important; color: #000 !important; }
.lxt .hint { font-size: 0.9em; color: #555; }
"""


def generation_html(gen: GenerationAttribution, path: str | os.PathLike[str] | None = None, *,
                    tokenizer: Any = None, skip_first: bool = False, title: str = "lxt-fx · generation explained",
                    selected: int = 0) -> str:
    """One self-contained HTML page (written to ``path`` too when given): the prompt and the generated text,
    each generated token clickable; clicking token ``k`` (or opening the page with ``#k``) colours the tokens
    before it by their relevance for it and greys out those after it. Generated token ``selected`` (default
    the first) is shown first, also without scripts (its colours are written into the page). The text wraps
    at the page's width; labels show each token as the text it decodes to."""
    (selected,) = _check_rows(gen, [selected])
    pieces = display_tokens(named_tokens(gen.tokens, gen.ids), gen.ids, tokenizer)
    labels = gen.labels(tokenizer)
    values = scaled(gen, skip_first)
    seen = gen.prompt_length + selected
    first = values[selected]
    spans = []
    for i, piece in enumerate(pieces):
        cls = "tok gen" if i >= gen.prompt_length else "tok"
        if i < seen:
            style = f' style="background:{hex_colour(rgb(first[i]))};color:{hex_colour(text_rgb(first[i]))}"'
        else:
            cls += " sel" if i == seen else " unseen" if i > seen else ""
            style = ""
        spans.append(f'<span class="{cls}"{style}>{escape(shown(piece))}</span>')
        if "\n" in piece:
            spans.append("<br>")
    data = {"prompt": gen.prompt_length, "rows": [[round(v, 4) for v in row] for row in values],
            "raw": gen.matrix.tolist(), "labels": labels, "scores": gen.scores.tolist(), "selected": selected,
            "neg": list(NEGATIVE), "pos": list(POSITIVE)}
    payload = json.dumps(data).replace("</", "<\\/")
    body = (f'<div class="lxt"><h1>{escape(title)}</h1>'
            f'<p class="hint">Click a generated (underlined) token to see which tokens before it made the model '
            f"predict it: red for it, blue against it, each map scaled by its own max|R|"
            f"{' (the first token left out of the scale)' if skip_first else ''}; grey tokens came later.</p>"
            f'<div class="head">explained: <b id="lxt-label">{escape(labels[selected])}</b> &nbsp; logit '
            f'<span id="lxt-score">{float(gen.scores[selected]):.6g}</span></div>'
            f'<div class="text gtext">{"".join(spans)}</div>'
            f'<div class="report">{escape(gen.report.composite)} · {escape(gen.report.model_class)} · one forward, '
            f"{len(gen)} backward seeds</div></div>"
            f'<script type="application/json" id="lxt-data">{payload}</script><script>{_SCRIPT}</script>')
    page = (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>'
            f"<style>body {{ margin: 2em; background: #fff; }}{css()}{_CSS}</style></head><body>{body}</body>"
            "</html>\n")
    if path is not None:
        write_text(path, page)
    return page


def save_matrix_png(gen: GenerationAttribution, path: str | os.PathLike[str], *, tokenizer: Any = None,
                    skip_first: bool = False, dpi: int = 150, max_labels: int = 60) -> None:
    """The matrix as a PNG: one row per generated token, one column per token of prompt + generation, each
    row scaled by its own max|R|; cells a row did not see are grey, a line marks where generation starts.
    Column labels are the tokens (every ``len / max_labels``-th when there are more than ``max_labels``)."""
    import numpy as np

    parts = matplotlib_parts()
    values = np.array(scaled(gen, skip_first), dtype=float)
    n, width = values.shape
    unseen = np.arange(width)[None, :] >= (gen.prompt_length + np.arange(n))[:, None]
    shown_values = np.ma.masked_array(values, mask=unseen)
    cmap = parts["cmap"].with_extremes(bad="#e6e6e6")
    pieces = [shown(p) for p in display_tokens(named_tokens(gen.tokens, gen.ids), gen.ids, tokenizer)]
    fig = parts["Figure"](figsize=(min(28.0, 2.0 + 0.16 * width), min(30.0, 1.6 + 0.2 * n)))
    parts["Canvas"](fig)
    ax = fig.add_subplot(1, 1, 1)
    ax.imshow(shown_values, cmap=cmap, vmin=-1, vmax=1, aspect="auto", interpolation="nearest")
    ax.axvline(gen.prompt_length - 0.5, color="#333", linewidth=0.8)
    step = max(1, -(-width // max_labels))
    ax.set_xticks(range(0, width, step))
    ax.set_xticklabels([pieces[i] for i in range(0, width, step)], rotation=90, fontsize=6, family="monospace")
    ystep = max(1, -(-n // max_labels))
    ax.set_yticks(range(0, n, ystep))
    ax.set_yticklabels([pieces[gen.prompt_length + k] for k in range(0, n, ystep)], fontsize=6,
                       family="monospace")
    ax.set_xlabel("context token (prompt | generated)")
    ax.set_ylabel("generated token")
    fig.colorbar(parts["ScalarMappable"](norm=parts["Normalize"](-1, 1), cmap=cmap), ax=ax, fraction=0.03,
                 label="relevance / row max|R|")
    fig.tight_layout()
    save_figure(fig, path, dpi)
