"""Terminal heatmap with rich: tokens on a red (for) / blue (against) background, legend, top tokens."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table
from rich.text import Text

from ..attribution import Attribution
from .common import normalized, report_summary, rgb, target_label, text_rgb, token_text


def _style(value: float) -> str:
    bg, fg = rgb(value), text_rgb(value)
    return f"rgb({fg[0]},{fg[1]},{fg[2]}) on rgb({bg[0]},{bg[1]},{bg[2]})"


def heatmap(attribution: Attribution, row: int = 0) -> Text:
    """The tokens of row ``row`` as one rich ``Text``, each on its relevance colour."""
    text = Text()
    for token, _, value in normalized(attribution, row)[0]:
        text.append(token, style=_style(value))
    return text


def legend(scale: float, width: int = 21) -> Text:
    """A colour bar from ``-scale`` to ``+scale``."""
    text = Text(f"{-scale:+.3g} ")
    for k in range(width):
        text.append(" ", style=_style(-1.0 + 2.0 * k / (width - 1)))
    text.append(f" {scale:+.3g}  (")
    text.append("against", style="bold rgb(33,102,172)")
    text.append(" / ")
    text.append("for", style="bold rgb(178,24,43)")
    text.append(" the target, scaled by max|R|)")
    return text


def top_table(attribution: Attribution, row: int = 0, k: int = 5) -> Table:
    """The ``k`` most relevant tokens of row ``row``."""
    table = Table(title=f"top {k} tokens", title_justify="left")
    table.add_column("#", justify="right")
    table.add_column("token")
    table.add_column("relevance", justify="right")
    table.add_column("share of Σ|R|", justify="right")
    total = sum(abs(v) for _, v in attribution.row(row)) or 1.0
    for rank, (token, value) in enumerate(attribution.top(k, row), start=1):
        table.add_row(str(rank), repr(token_text(token)), f"{value:+.4f}", f"{abs(value) / total:.1%}")
    return table


def show(attribution: Attribution, console: Console | None = None, *, score_label: str = "logit",
         k: int = 5) -> None:
    """Print every row of ``attribution``: heatmap, legend, explained token and score, top-``k`` table,
    and the one-line rewrite summary."""
    console = console if console is not None else Console()
    for row in range(len(attribution)):
        pairs, scale = normalized(attribution, row)
        score = float(attribution.target_scores[row])
        total = sum(v for _, v, _ in pairs)
        if len(attribution) > 1:
            console.rule(f"row {row}")
        console.print(Text.assemble(("explained: ", "bold"), target_label(attribution, row),
                                    f"   {score_label} {score:.4f}   Σ relevance {total:.4f}"))
        console.print(heatmap(attribution, row))
        console.print(legend(scale))
        console.print(top_table(attribution, row, k))
    console.print(Text.assemble(("rewrite: ", "bold"), report_summary(attribution)))
