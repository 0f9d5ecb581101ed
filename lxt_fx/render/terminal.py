"""Terminal heatmap with rich: tokens on a red (for) / blue (against) background, a legend, the top tokens;
one block per row of a batch. Pixel relevance is drawn with half blocks (two pixels per character cell)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from rich.console import Console, Group, RenderableType
from rich.table import Table
from rich.text import Text

from .common import (
    NO_TOKENS,
    Row,
    check_labels,
    has_maps,
    has_tokens,
    is_image,
    report_summary,
    rgb,
    rows,
    scale_note,
    text_rgb,
)

if TYPE_CHECKING:
    from ..attribution import Attribution


def _style(value: float, underline: bool = False) -> str:
    bg, fg = rgb(value), text_rgb(value)
    return f"{'underline ' if underline else ''}rgb({fg[0]},{fg[1]},{fg[2]}) on rgb({bg[0]},{bg[1]},{bg[2]})"


def row_text(view: Row) -> Text:
    """The tokens of one normalized row as one rich ``Text``: each token on its colour; a newline token
    shows ``⏎`` and breaks the line; marked tokens (``view.mark_from`` on) are underlined."""
    text = Text()
    index = 0
    for s, (name, tokens) in enumerate(view.segments):
        if name:
            text.append(f"{name}: ", style="bold")
        for t, token in enumerate(tokens):
            marked = view.mark_from is not None and index >= view.mark_from
            text.append(token.shown, style=_style(token.value, marked))
            if "\n" in token.text and t < len(tokens) - 1:
                text.append("\n")
            index += 1
        if name and s < len(view.segments) - 1:
            text.append("\n")
    return text


def heatmap(attribution: Attribution, row: int = 0, *, tokenizer: Any = None, skip_first: bool = False) -> Text:
    """The tokens of row ``row`` as one rich ``Text``, each on its relevance colour."""
    return row_text(rows(attribution, tokenizer=tokenizer, skip_first=skip_first)[row])


def legend(scale: float, width: int = 21, note: str = "the target, scaled by max|R|") -> Text:
    """A colour bar from ``-scale`` to ``+scale``."""
    text = Text(f"{-scale:+.3g} ")
    for k in range(width):
        text.append(" ", style=_style(-1.0 + 2.0 * k / (width - 1)))
    text.append(f" {scale:+.3g}  (")
    text.append("against", style="bold rgb(33,102,172)")
    text.append(" / ")
    text.append("for", style="bold rgb(178,24,43)")
    text.append(f" {note})")
    return text


def top_table(view: Row, k: int = 5) -> Table:
    """The ``k`` most relevant tokens of one row."""
    table = Table(title=f"top {k} tokens", title_justify="left")
    table.add_column("#", justify="right")
    table.add_column("token")
    table.add_column("relevance", justify="right")
    table.add_column("share of Σ|R|", justify="right")
    tokens = view.tokens
    total = sum(abs(t.relevance) for t in tokens) or 1.0
    ranked = sorted(range(len(tokens)), key=lambda i: tokens[i].relevance, reverse=True)[:k]
    for rank, i in enumerate(ranked, start=1):
        t = tokens[i]
        table.add_row(str(rank), f"{t.text!r} @{i}", f"{t.relevance:+.4f}", f"{abs(t.relevance) / total:.1%}")
    return table


def image_text(relevance: torch.Tensor, width: int = 48) -> Text:
    """Pixel relevance ``[H, W]`` as half-block characters, ``width`` columns wide, normalized by max|R|."""
    rel = relevance.detach().float()
    h, w = rel.shape
    cols = max(1, min(width, w))
    lines = max(1, round(h * cols / w / 2))
    small = torch.nn.functional.adaptive_avg_pool2d(rel[None, None], (2 * lines, cols))[0, 0]
    scale = float(small.abs().max()) or 1.0
    small = (small / scale).clamp(-1, 1).tolist()
    text = Text()
    for y in range(lines):
        for x in range(cols):
            top, bottom = rgb(small[2 * y][x]), rgb(small[2 * y + 1][x])
            text.append("▀", style=f"rgb({top[0]},{top[1]},{top[2]}) on rgb({bottom[0]},{bottom[1]},{bottom[2]})")
        if y < lines - 1:
            text.append("\n")
    return text


def show(attribution: Attribution, console: Console | None = None, *, tokenizer: Any = None,
         skip_first: bool = False, labels: Sequence[str] | None = None,
         mark_from: Sequence[int | None] | int | None = None, score_label: str = "logit", k: int = 5,
         top: bool = True) -> None:
    """Print every row of ``attribution``: explained output and score, the heatmap, a legend, the top-``k``
    table (``top=False`` leaves it out), then the one-line rewrite summary.

    ``tokenizer``: shows tokens as the text they decode to; ``skip_first``: leave the first token out of the
    colour scale; ``labels``: override what each row says it explains; ``mark_from``: underline tokens from
    this index on (e.g. generated ones)."""
    console = console if console is not None else Console()
    console.print(renderable(attribution, tokenizer=tokenizer, skip_first=skip_first, labels=labels,
                             mark_from=mark_from, score_label=score_label, k=k, top=top))


def renderable(attribution: Attribution, *, tokenizer: Any = None, skip_first: bool = False,
               labels: Sequence[str] | None = None, mark_from: Sequence[int | None] | int | None = None,
               score_label: str = "logit", k: int = 5, top: bool = True) -> RenderableType:
    """What :func:`show` prints, as one rich renderable."""
    check_labels(attribution, labels)
    parts: list[RenderableType] = []
    if not is_image(attribution) and not has_tokens(attribution):  # audio (or other) maps, no tokens
        from .mixed import mixed_renderable

        for r in range(len(attribution)):
            if len(attribution) > 1:
                parts.append(Text(f"── row {r} " + "─" * 40, style="dim"))
            parts.append(mixed_renderable(attribution, r) if has_maps(attribution)
                         else Text(NO_TOKENS.format(model=attribution.report.model_class)))
    elif is_image(attribution):
        for r in range(len(attribution)):
            rel = attribution.relevance[r]
            scale = float(rel.abs().max())
            parts.append(Text.assemble(("explained: ", "bold"), labels[r] if labels else _image_label(attribution, r),
                                       f"   {score_label} {float(attribution.target_scores[r]):.4f}   "
                                       f"Σ relevance {float(rel.sum()):.4f}"))
            parts.append(image_text(rel))
            parts.append(legend(scale))
    else:
        views = rows(attribution, tokenizer=tokenizer, skip_first=skip_first, labels=labels, mark_from=mark_from)
        for view in views:
            if len(views) > 1:
                parts.append(Text(f"── row {view.index} " + "─" * 40, style="dim"))
            parts.append(Text.assemble(("explained: ", "bold"), view.label,
                                       f"   {score_label} {view.score:.4f}   Σ relevance {view.total:.4f}"))
            parts.append(row_text(view))
            parts.append(legend(view.scale, note="the target; " + scale_note(view)))
            if top:
                parts.append(top_table(view, k))
    parts.append(Text.assemble(("rewrite: ", "bold"), report_summary(attribution)))
    return Group(*parts)


def _image_label(attribution: Attribution, row: int) -> str:
    tid = int(attribution.target_ids[row])
    return f"class {tid}" if tid >= 0 else "a function of the outputs"
