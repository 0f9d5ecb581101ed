"""PNG heatmap with matplotlib (Agg canvas, no pyplot state): tokens as a coloured horizontal strip."""

from __future__ import annotations

import os

from ..attribution import Attribution
from .common import normalized, rgb, target_label, text_rgb


def save_png(attribution: Attribution, path: str | os.PathLike[str], *, line_chars: int = 90,
             score_label: str = "logit", dpi: int = 150) -> None:
    """Write the heatmap of every row to ``path`` as PNG; long rows wrap after ``line_chars`` characters.

    Raises ``ImportError`` naming the package when matplotlib is not installed.
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.cm import ScalarMappable
        from matplotlib.colors import LinearSegmentedColormap, Normalize
        from matplotlib.figure import Figure
        from matplotlib.patches import Rectangle
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("save_png needs matplotlib: pip install matplotlib (or the [viz] extra)") from exc

    # Lay out every row: (line, x start, width in characters, text, normalized value).
    blocks: list[tuple[str, float, list[list[tuple[float, float, str, float]]]]] = []
    for row in range(len(attribution)):
        pairs, scale = normalized(attribution, row)
        lines: list[list[tuple[float, float, str, float]]] = [[]]
        x = 0.0
        for token, _, value in pairs:
            shown = token.replace("\n", "⏎") or " "
            width = max(len(shown), 1) + 0.4
            if x + width > line_chars and lines[-1]:
                lines.append([])
                x = 0.0
            lines[-1].append((x, width, shown, value))
            x += width
        head = (f"explained {target_label(attribution, row)}, {score_label} "
                f"{float(attribution.target_scores[row]):.3f}, max|R| {scale:.3g}")
        blocks.append((head, scale, lines))

    n_lines = sum(len(lines) + 1.6 for _, _, lines in blocks)
    widest = max((x + w for _, _, lines in blocks for line in lines for x, w, _, _ in line), default=1.0)
    char_in = 0.11
    strip_in, bar_in = 0.42 * n_lines, 0.8  # heights in inches: token strip, colour bar below it
    height = strip_in + bar_in + 0.1
    fig = Figure(figsize=(max(4.0, widest * char_in + 0.6), height), dpi=dpi)
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0.01, bar_in / height, 0.98, strip_in / height))
    ax.set_xlim(-0.2, widest + 0.2)
    ax.set_ylim(n_lines, 0)
    ax.axis("off")
    y = 0.0
    for head, _, lines in blocks:
        ax.text(0, y + 0.5, head, fontsize=9, va="center", ha="left", color="#333333")
        y += 1.2
        for line in lines:
            for x, w, shown, value in line:
                bg = tuple(c / 255 for c in rgb(value))
                fg = tuple(c / 255 for c in text_rgb(value))
                ax.add_patch(Rectangle((x, y + 0.08), w - 0.08, 0.84, facecolor=bg, edgecolor="#dddddd", lw=0.5))
                ax.text(x + w / 2 - 0.04, y + 0.5, shown, fontsize=9, va="center", ha="center", color=fg,
                        family="monospace")
            y += 1.0
        y += 0.4

    cmap = LinearSegmentedColormap.from_list("lxt", [tuple(c / 255 for c in rgb(v)) for v in (-1.0, 0.0, 1.0)])
    cax = fig.add_axes((0.3, 0.45 / height, 0.4, 0.14 / height))
    bar = fig.colorbar(ScalarMappable(Normalize(-1, 1), cmap), cax=cax, orientation="horizontal")
    bar.set_ticks([-1, 0, 1], labels=["−max|R| (against)", "0", "+max|R| (for)"], fontsize=7)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=dpi)
