"""PNG heatmaps with matplotlib (the ``viz`` extra; an Agg canvas, no pyplot state): tokens as coloured
boxes with wrapping lines, one block per row; pixel relevance as an image; an overlay of pixel relevance
on the input image."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from .common import RenderError, has_maps, has_tokens, is_image, rgb, rows, text_rgb
from .figure import image_array, matplotlib_parts, save_figure
from .mixed import save_mixed_png

if TYPE_CHECKING:
    from ..attribution import Attribution


def save_png(attribution: Attribution, path: str | os.PathLike[str], *, tokenizer: Any = None,
             skip_first: bool = False, labels: Sequence[str] | None = None, line_chars: int = 90,
             score_label: str = "logit", dpi: int = 150) -> None:
    """Write the heatmap of every row to ``path`` as PNG; long rows wrap after ``line_chars`` characters.

    Pixel relevance ``[batch, H, W]`` is drawn as one image per row (see also :func:`save_image_overlay`).
    Raises ``ImportError`` naming the package when matplotlib is not installed.
    """
    parts = matplotlib_parts()
    if is_image(attribution):
        _save_pixels(attribution, path, parts, dpi, score_label)
        return
    if not has_tokens(attribution) and has_maps(attribution):  # audio (or other) maps, no tokens
        save_mixed_png(attribution, path, dpi=dpi)
        return
    Rectangle = parts["Rectangle"]

    # Lay out every row: (head, [lines of (x start, width in characters, text, normalized value)]).
    blocks: list[tuple[str, list[list[tuple[float, float, str, float]]]]] = []
    for view in rows(attribution, tokenizer=tokenizer, skip_first=skip_first, labels=labels):
        lines: list[list[tuple[float, float, str, float]]] = [[]]
        x = 0.0
        for name, tokens in view.segments:
            if name:
                if lines[-1]:
                    lines.append([])
                x = 0.0
                lines[-1].append((x, len(name) + 2.0, name + ":", float("nan")))
                x += len(name) + 2.0
            for token in tokens:
                shown = token.shown
                width = max(len(shown), 1) + 0.4
                if x + width > line_chars and lines[-1]:
                    lines.append([])
                    x = 0.0
                lines[-1].append((x, width, shown, token.value))
                x += width
                if "\n" in token.text:
                    lines.append([])
                    x = 0.0
        note = ", first token left out of the scale" if view.skip_first else ""
        head = f"explained {view.label}, {score_label} {view.score:.3f}, max|R| {view.scale:.3g}{note}"
        blocks.append((head, [line for line in lines if line]))

    n_lines = sum(len(lines) + 1.6 for _, lines in blocks)
    widest = max((x + w for _, lines in blocks for line in lines for x, w, _, _ in line), default=1.0)
    widest = max(widest, max(len(head) * 0.85 for head, _ in blocks))
    char_in = 0.11
    strip_in, bar_in = 0.42 * n_lines, 0.8  # heights in inches: token strip, colour bar below it
    height = strip_in + bar_in + 0.1
    fig = parts["Figure"](figsize=(max(4.0, widest * char_in + 0.6), height), dpi=dpi)
    parts["Canvas"](fig)
    ax = fig.add_axes((0.01, bar_in / height, 0.98, strip_in / height))
    ax.set_xlim(-0.2, widest + 0.2)
    ax.set_ylim(n_lines, 0)
    ax.axis("off")
    y = 0.0
    for head, lines in blocks:
        ax.text(0, y + 0.5, head, fontsize=9, va="center", ha="left", color="#333333")
        y += 1.2
        for line in lines:
            for x, w, shown, value in line:
                if value != value:  # a segment name (nan value): plain bold text
                    ax.text(x, y + 0.5, shown, fontsize=9, va="center", ha="left", weight="bold")
                    continue
                bg = tuple(c / 255 for c in rgb(value))
                fg = tuple(c / 255 for c in text_rgb(value))
                ax.add_patch(Rectangle((x, y + 0.08), w - 0.08, 0.84, facecolor=bg, edgecolor="#dddddd", lw=0.5))
                ax.text(x + w / 2 - 0.04, y + 0.5, shown, fontsize=9, va="center", ha="center", color=fg,
                        family="monospace")
            y += 1.0
        y += 0.4

    cax = fig.add_axes((0.3, 0.45 / height, 0.4, 0.14 / height))
    bar = fig.colorbar(parts["ScalarMappable"](parts["Normalize"](-1, 1), parts["cmap"]), cax=cax,
                       orientation="horizontal")
    bar.set_ticks([-1, 0, 1], labels=["−max|R| (against)", "0", "+max|R| (for)"], fontsize=7)
    save_figure(fig, path, dpi)


def _save_pixels(attribution: Attribution, path: str | os.PathLike[str], parts: dict[str, Any], dpi: int,
                 score_label: str) -> None:
    n = len(attribution)
    fig = parts["Figure"](figsize=(3.2 * n, 3.6), dpi=dpi)
    parts["Canvas"](fig)
    for r in range(n):
        ax = fig.add_subplot(1, n, r + 1)
        rel = attribution.relevance[r].detach().float()
        scale = float(rel.abs().max()) or 1.0
        ax.imshow((rel / scale).numpy(), cmap=parts["cmap"], vmin=-1, vmax=1, interpolation="nearest")
        ax.set_title(f"class {int(attribution.target_ids[r])}, {score_label} "
                     f"{float(attribution.target_scores[r]):.3f}", fontsize=8)
        ax.axis("off")
    save_figure(fig, path, dpi)


def save_image_overlay(attribution: Attribution, path: str | os.PathLike[str], image: Any, *, row: int = 0,
                       alpha: float = 0.6, dpi: int = 150, score_label: str = "logit") -> None:
    """Write three panels to ``path``: the input ``image``, its pixel relevance (normalized to [-1, 1] by
    ``max|R|``) and the relevance laid over a grey copy of the image, opacity growing with ``|R|``.

    ``image``: what the model saw or the original picture (any size: the relevance is resized to it
    bilinearly), as a PIL image, a numpy array or a tensor (see :func:`image_array`).
    """
    if not is_image(attribution):
        raise RenderError("save_image_overlay needs pixel relevance [batch, H, W] from an image model; this "
                          "attribution is token relevance: use save_png / to_html")
    if not 0 <= row < len(attribution):
        raise RenderError(f"row {row} does not exist: the attribution has {len(attribution)} row(s)")
    import numpy as np

    parts = matplotlib_parts()
    picture = image_array(image)
    h, w = picture.shape[:2]
    rel = attribution.relevance[row].detach().float()
    if tuple(rel.shape) != (h, w):
        rel = torch.nn.functional.interpolate(rel[None, None], size=(h, w), mode="bilinear", align_corners=False)[0, 0]
    scale = float(rel.abs().max()) or 1.0
    norm = (rel / scale).clamp(-1, 1).numpy()
    colours = parts["cmap"]((norm + 1) / 2)[..., :3]
    grey = np.repeat(picture.mean(-1, keepdims=True), 3, axis=-1)
    weight = alpha * np.abs(norm)[..., None]
    blended = (1 - weight) * grey + weight * colours

    fig = parts["Figure"](figsize=(9.6, 3.7), dpi=dpi)
    parts["Canvas"](fig)
    titles = ["image", f"relevance (max|R| {scale:.3g})", "overlay"]
    for k, (panel, title) in enumerate(zip([picture, norm, blended], titles, strict=True)):
        ax = fig.add_subplot(1, 3, k + 1)
        if k == 1:
            ax.imshow(panel, cmap=parts["cmap"], vmin=-1, vmax=1, interpolation="nearest")
        else:
            ax.imshow(np.clip(panel, 0, 1), interpolation="nearest")
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    tid = int(attribution.target_ids[row])
    fig.suptitle(f"explained {'class ' + str(tid) if tid >= 0 else 'a function of the outputs'}, "
                 f"{score_label} {float(attribution.target_scores[row]):.3f}", fontsize=9)
    save_figure(fig, path, dpi)
