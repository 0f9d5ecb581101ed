"""Mixed inputs side by side: text tokens, image patches and audio frames from one explanation.

Each modality is normalized by the largest |R| over all of them (one shared scale, so their colours compare:
a red patch and a red token carry about the same relevance), on the same diverging palette as the other
renderers. ``modality_maps`` gives the normalized values every renderer draws.
"""

from __future__ import annotations

import html
import os
import textwrap
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from rich.console import Console, Group
from rich.text import Text

from .common import RenderError, hex_colour, named_tokens, rgb, token_text
from .figure import image_array, matplotlib_parts
from .page import page, write_text

if TYPE_CHECKING:
    from ..attribution import Attribution


@dataclass
class ModalityMaps:
    """Row ``row`` of a mixed attribution, every map divided by ``scale`` (the largest absolute relevance over all of them)."""

    tokens: list[tuple[str, float]]   # (token text, normalized relevance)
    patches: torch.Tensor | None      # [H/p, W/p] in [-1, 1]
    frames: torch.Tensor | None       # [frames] in [-1, 1]
    scale: float
    totals: dict[str, float]          # Σ relevance per modality (not normalized)


def modality_maps(attribution: Attribution, row: int = 0) -> ModalityMaps:
    """The normalized maps of row ``row``; :class:`RenderError` when it holds no image or audio relevance."""
    if attribution.image_relevance is None and attribution.audio_relevance is None:
        raise RenderError("this attribution has no image_relevance / audio_relevance: explain with images=... or "
                          "audio=..., or use show / to_html / save_png for token relevance")
    if not 0 <= row < len(attribution.target_scores):
        raise RenderError(f"row {row} does not exist: the attribution has {len(attribution.target_scores)} row(s)")
    keep = attribution.attention_mask[row].bool() if attribution.attention_mask.numel() else None
    values = attribution.relevance[row][keep].float() if keep is not None and keep.any() else torch.zeros(0)
    patches = None if attribution.image_relevance is None else attribution.image_relevance[row].float()
    frames = None if attribution.audio_relevance is None else attribution.audio_relevance[row].float()
    every = [t.abs().max() for t in (values, patches, frames) if t is not None and t.numel()]
    scale = float(max(every)) if every else 0.0
    div = scale if scale > 0 else 1.0
    totals = {"text": float(values.sum())} if values.numel() else {}
    if patches is not None:
        totals["image"] = float(patches.sum())
    if frames is not None:
        totals["audio"] = float(frames.sum())
    tokens = [(token_text(t), max(-1.0, min(1.0, float(v) / div)))
              for t, v in zip(attribution.tokens[row] if values.numel() else [], values.tolist(), strict=True)]
    return ModalityMaps(tokens, None if patches is None else (patches / div).clamp(-1, 1),
                        None if frames is None else (frames / div).clamp(-1, 1), scale, totals)


def _title(attribution: Attribution, row: int, maps: ModalityMaps) -> str:
    tid = int(attribution.target_ids[row])
    what = f"id {tid}" if tid >= 0 else "a function of the outputs"
    if attribution.target_tokens and tid >= 0:
        what = repr(token_text(named_tokens(attribution.target_tokens[row:row + 1], [tid])[0]))
    sums = ", ".join(f"Σ{k} {v:+.3g}" for k, v in maps.totals.items())
    return f"explained {what}, score {float(attribution.target_scores[row]):.3f}; {sums}; max|R| {maps.scale:.3g}"


def show_mixed(attribution: Attribution, console: Any = None, row: int = 0) -> None:
    """Print text tokens, the patch grid (two character cells per patch) and the audio frames, coloured."""
    console = console or Console()
    console.print(mixed_renderable(attribution, row))


def mixed_renderable(attribution: Attribution, row: int = 0) -> Group:
    """What :func:`show_mixed` prints for row ``row``, as one rich renderable."""
    maps = modality_maps(attribution, row)
    lines: list[Text] = [Text(_title(attribution, row, maps))]
    if maps.tokens:
        text = Text("text:  ")
        for token, value in maps.tokens:
            text.append(token, style=_style(value))
        lines.append(text)
    if maps.patches is not None:
        lines.append(Text(f"image ({maps.patches.shape[0]}×{maps.patches.shape[1]} patches):"))
        for line in maps.patches.tolist():
            text = Text("  ")
            for value in line:
                text.append("  ", style=_style(value))
            lines.append(text)
    if maps.frames is not None:
        text = Text(f"audio ({maps.frames.numel()} frames): ")
        for value in maps.frames.tolist():
            text.append(" ", style=_style(value))
        lines.append(text)
    return Group(*lines)


def _style(value: float) -> str:
    r, g, b = rgb(value)
    return f"on rgb({r},{g},{b})"


def to_mixed_html(attribution: Attribution, path: str | os.PathLike[str] | None = None, row: int = 0) -> str:
    """A self-contained HTML page: tokens, the patch grid as a table of coloured cells (relevance in each
    cell's title), the audio frames as a strip; written to ``path`` when given."""
    text = page(mixed_html(attribution, row), "lxt-fx: mixed-input relevance")
    if path is not None:
        write_text(path, text)
    return text


def mixed_html(attribution: Attribution, row: int = 0) -> str:
    """The body of :func:`to_mixed_html` for row ``row`` (its own ``<style>`` included), to embed in a page."""
    maps = modality_maps(attribution, row)
    parts = [f"<p>{html.escape(_title(attribution, row, maps))}</p>"]
    if maps.tokens:
        spans = "".join(f'<span class="tok" style="background:{hex_colour(rgb(v))}" title="{v:.4g}">'
                        f"{html.escape(t)}</span>" for t, v in maps.tokens)
        parts.append(f'<div class="modality"><b>text</b> {spans}</div>')
    if maps.patches is not None:
        cells = "".join("<tr>" + "".join(f'<td style="background:{hex_colour(rgb(v))}" title="{v:.4g}"></td>'
                                         for v in line) + "</tr>" for line in maps.patches.tolist())
        parts.append(f'<div class="modality"><b>image</b><table class="patches">{cells}</table></div>')
    if maps.frames is not None:
        cells = "".join(f'<td style="background:{hex_colour(rgb(v))}" title="{v:.4g}"></td>'
                        for v in maps.frames.tolist())
        parts.append(f'<div class="modality"><b>audio</b><table class="frames"><tr>{cells}</tr></table></div>')
    style = ("<style>.modality{display:inline-block;vertical-align:top;margin:0 1.5em 1em 0}"
             ".tok{padding:0 1px;font-family:monospace}.patches td{width:18px;height:18px}"
             ".frames td{width:6px;height:24px}table{border-collapse:collapse}</style>")
    return style + "".join(parts)


def save_mixed_png(attribution: Attribution, path: str | os.PathLike[str], image: Any = None, *, row: int = 0,
                   dpi: int = 120) -> None:
    """PNG with one panel per modality, side by side: the tokens as coloured boxes, the patch grid (over a
    grey copy of ``image`` when given, any size), the audio frames as a strip; one shared colour scale."""
    import numpy as np

    maps = modality_maps(attribution, row)
    parts = matplotlib_parts()
    panels = [k for k, m in (("text", maps.tokens), ("image", maps.patches), ("audio", maps.frames))
              if m is not None and len(m)]
    fig = parts["Figure"](figsize=(3.6 * len(panels), 3.4), dpi=dpi)
    parts["Canvas"](fig)
    for k, kind in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), k + 1)
        ax.axis("off")
        if kind == "text":
            ax.set_title("text tokens", fontsize=9)
            for i, (token, value) in enumerate(maps.tokens):
                y = 1 - (i + 1) / (len(maps.tokens) + 1)
                ax.text(0.05, y, f"{token!s}  {value:+.2f}", fontsize=8, family="monospace", va="center",
                        bbox={"facecolor": tuple(c / 255 for c in rgb(value)), "edgecolor": "none", "pad": 1.5})
        elif kind == "image":
            grid = maps.patches.numpy()
            ax.set_title(f"image patches ({grid.shape[0]}×{grid.shape[1]})", fontsize=9)
            if image is not None:
                picture = image_array(image)
                grey = np.repeat(picture.mean(-1, keepdims=True), 3, axis=-1)
                ax.imshow(np.clip(grey, 0, 1), extent=(0, 1, 0, 1))
                ax.imshow(grid, cmap=parts["cmap"], vmin=-1, vmax=1, alpha=0.65, extent=(0, 1, 0, 1),
                          interpolation="nearest")
            else:
                ax.imshow(grid, cmap=parts["cmap"], vmin=-1, vmax=1, interpolation="nearest")
        else:
            frames = maps.frames.numpy()[None, :]
            ax.set_title(f"audio frames ({frames.shape[1]})", fontsize=9)
            ax.imshow(frames, cmap=parts["cmap"], vmin=-1, vmax=1, aspect="auto", interpolation="nearest")
    width = 3.6 * len(panels)  # inches; about 15 characters per inch at 8 pt: the title wraps, never cut
    fig.suptitle(textwrap.fill(_title(attribution, row, maps), max(30, int(width * 15))), fontsize=8)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
