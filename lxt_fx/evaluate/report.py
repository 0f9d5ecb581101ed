"""Tables and plots of perturbation runs: Markdown, rich console tables, PNG curve plots."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .runner import Run


def _pm(mean: float, se: float, digits: int = 2) -> str:
    if mean is None or math.isnan(mean):
        return "—"
    return f"{mean:.{digits}f} ± {se:.{digits}f}" if not math.isnan(se) else f"{mean:.{digits}f}"


def ranked(run: Run) -> list[str]:
    """Methods by mean ABPC, best first."""
    summary = run.summary()
    return sorted(run.methods, key=lambda m: -summary[m]["abpc"])


def markdown_table(run: Run, reference: str | None = "attnlrp") -> str:
    """Method × ABPC / AUC(MoRF) / AUC(LeRF) (mean ± SE over rows), best first; with ``reference`` in the
    run, a column with the paired difference ``ABPC(reference) − ABPC(method)`` ± SE."""
    summary = run.summary()
    paired = reference in run.methods if reference else False
    head = "| method | N | ABPC ↑ | AUC MoRF ↓ | AUC LeRF ↑ |"
    rule = "|---|---|---|---|---|"
    if paired:
        head += f" {reference} − method (paired) |"
        rule += "---|"
    lines = [head, rule]
    for m in ranked(run):
        s = summary[m]
        line = (f"| {m} | {s['n']} | {_pm(s['abpc'], s['abpc_se'])} | {_pm(s['auc_morf'], s['auc_morf_se'])} | "
                f"{_pm(s['auc_lerf'], s['auc_lerf_se'])} |")
        if paired:
            if m == reference:
                line += " — |"
            else:
                p = run.paired(reference, m)
                z = f" ({p['z']:.1f} SE)" if not math.isnan(p["z"]) else ""
                line += f" {_pm(p['mean'], p['se'])}{z} |"
        lines.append(line)
    return "\n".join(lines)


def console_table(run: Run, title: str, reference: str | None = "attnlrp") -> Any:
    """The Markdown table's content as a ``rich.table.Table``."""
    from rich.table import Table

    summary = run.summary()
    table = Table(title=title)
    for col in ("method", "N", "ABPC ↑", "AUC MoRF ↓", "AUC LeRF ↑"):
        table.add_column(col, justify="left" if col == "method" else "right")
    paired = reference in run.methods if reference else False
    if paired:
        table.add_column(f"{reference} − method", justify="right")
    for m in ranked(run):
        s = summary[m]
        row = [m, str(s["n"]), _pm(s["abpc"], s["abpc_se"]), _pm(s["auc_morf"], s["auc_morf_se"]),
               _pm(s["auc_lerf"], s["auc_lerf_se"])]
        if paired:
            p = run.paired(reference, m) if m != reference else None
            z = "" if p is None or math.isnan(p["z"]) else f" ({p['z']:.1f} SE)"
            row.append("—" if p is None else f"{_pm(p['mean'], p['se'])}{z}")
        table.add_row(*row)
    return table


def plot_curves(runs: Mapping[str, Run], path: str | Path, methods: Sequence[str] | None = None) -> Path | None:
    """One panel per run: mean MoRF (solid) and LeRF (dashed) curve per method. Needs matplotlib;
    returns the path, or ``None`` when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    path = Path(path)
    fig, axes = plt.subplots(1, len(runs), figsize=(5.0 * len(runs) + 2.2, 4.2), squeeze=False)
    colours = plt.get_cmap("tab10")
    order = list(methods or dict.fromkeys(m for run in runs.values() for m in run.methods))
    for ax, (title, run) in zip(axes[0], runs.items(), strict=True):
        curves = run.mean_curves()
        fractions = next(iter(run.curves.values())).fractions.tolist()
        for i, m in enumerate(order):                    # one colour per method across panels
            if m not in curves:
                continue
            ax.plot(fractions, curves[m]["morf"], "-", color=colours(i % 10), label=f"{m} MoRF")
            ax.plot(fractions, curves[m]["lerf"], "--", color=colours(i % 10), label=f"{m} LeRF")
        ax.set_title(f"{title} (N={run.n})")
        ax.set_xlabel("fraction of tokens flipped")
        ax.set_ylabel(f"mean target {run.settings.get('score', 'logit')}")
        ax.grid(alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    seen = dict(zip(labels, handles, strict=True))
    for ax in axes[0][1:]:
        for h, label in zip(*ax.get_legend_handles_labels(), strict=True):
            seen.setdefault(label, h)
    fig.legend(list(seen.values()), list(seen), fontsize=7, loc="center right")
    fig.tight_layout(rect=(0, 0, 1 - 2.0 / (5.0 * len(runs) + 2.2), 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
