"""The relevance trace: how each token's relevance evolves through the network, tokens × layers.

Block-boundary relevances come from the same single backward pass as the input relevance: explain with
``capture=trace_capture(model)`` (the input embeddings and the output of every block, i.e. the residual
stream entering the next block) and each captured ``x ⊙ grad`` ``[batch, seq, hidden]`` is summed over
the hidden size. Row ``embeddings`` is then the input relevance itself; row ``block i`` the relevance of
the residual stream after block ``i``. By conservation every row sums to roughly the explained score.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from html import escape
from typing import TYPE_CHECKING, Any

import torch
from rich.console import Console, ConsoleOptions, RenderResult
from rich.table import Table
from rich.text import Text
from torch import Tensor, nn

from .common import RenderError, display_tokens, named_tokens, require_tokens, rgb, shown, target_label
from .figure import matplotlib_parts
from .html import cell_style
from .page import page, write_text

if TYPE_CHECKING:
    from ..attribution import Attribution

_BLOCK = re.compile(r"^(.*?)(?:^|\.)((?:layers|layer|h|blocks|block))\.(\d+)$")
EMBEDDINGS = "inputs_embeds"


def block_paths(model: nn.Module) -> list[str]:
    """Module paths of the blocks of ``model``'s longest stack of repeated blocks (``model.layers.0`` …)."""
    stacks: dict[str, list[str]] = {}
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and re.search(r"(?:^|\.)(?:layers|layer|h|blocks|block)$", name):
            stacks[name] = [f"{name}.{k}" for k in range(len(module))]
    if not stacks:
        raise RenderError(f"{type(model).__name__} has no stack of blocks (a ModuleList named layers, layer, h, "
                          "blocks or block): pass the module paths to capture yourself")
    return max(stacks.values(), key=len)


def trace_capture(model: nn.Module) -> list[str]:
    """What to pass to ``explain(..., capture=...)`` for :func:`relevance_trace`: the input embeddings and
    the output of every block."""
    return [EMBEDDINGS, *block_paths(model)]


@dataclass
class Trace:
    """Relevance per token and layer for one row: ``values[l, t]`` is the relevance of token ``t`` at
    layer ``layers[l]`` (``embeddings`` first, then the output of each block)."""

    tokens: list[str]
    layers: list[str]
    values: Tensor
    label: str
    score: float
    normalize: str = "global"
    skip_first: bool = False

    def scales(self) -> Tensor:
        """The max|R| each layer's colours are divided by (one value for all with ``normalize='global'``)."""
        v = self.values[:, 1:] if self.skip_first and self.values.shape[1] > 1 else self.values
        per_layer = v.abs().amax(1) if v.numel() else torch.zeros(len(self.layers))
        if self.normalize == "layer":
            return torch.where(per_layer > 0, per_layer, torch.ones_like(per_layer))
        top = float(per_layer.max()) if per_layer.numel() else 0.0
        return torch.full_like(per_layer, top if top > 0 else 1.0)

    def normalized(self) -> Tensor:
        """``values`` divided by :meth:`scales`, clipped to [-1, 1]."""
        return (self.values / self.scales()[:, None]).clamp(-1, 1)

    def sums(self) -> list[float]:
        """Total relevance per layer (≈ the explained score at every layer, by conservation)."""
        return self.values.sum(1).tolist()

    # ---- renderers ----------------------------------------------------------------------------------------

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        norm = self.normalized().tolist()
        table = Table(title=f"relevance trace for {self.label} (score {self.score:.3f}; colours per "
                            f"{'layer' if self.normalize == 'layer' else 'trace'} max|R|)",
                      title_justify="left", show_edge=False, pad_edge=False, box=None, padding=(0, 0))
        table.add_column("token ", justify="right", no_wrap=True)
        for k in range(len(self.layers)):
            table.add_column("E" if k == 0 else (str(k - 1) if (k - 1) % 5 == 0 else ""), no_wrap=True, width=2)
        for t, token in enumerate(self.tokens):
            cells = []
            for k in range(len(self.layers)):
                r, g, b = rgb(norm[k][t])
                cells.append(Text("  ", style=f"on rgb({r},{g},{b})"))
            table.add_row(Text(f"{shown(token)!r} ", style="bold" if t == 0 else ""), *cells)
        yield table
        yield Text("columns: E = embeddings (input relevance), then the output of each block; "
                   f"Σ per layer from {self.sums()[0]:+.3f} (E) to {self.sums()[-1]:+.3f} (last block)", style="dim")

    def _repr_html_(self) -> str:
        return self.to_html(fragment=True)

    def to_html(self, path: str | os.PathLike[str] | None = None, *, fragment: bool = False) -> str:
        """The trace as an HTML table (tokens across, layers down, last block on top); values on hover."""
        table = self._table_html()
        html = page(table, "lxt-fx relevance trace")
        if fragment:
            from .page import css

            html = f'<style>{css()}</style><div class="lxt">{table}</div>'
        if path is not None:
            write_text(path, html)
        return html

    def _table_html(self) -> str:
        """The heading and the table of :meth:`to_html`."""
        norm = self.normalized().tolist()
        head = "".join(f"<th>{escape(shown(t))}</th>" for t in self.tokens)
        body = []
        for k in reversed(range(len(self.layers))):
            cells = "".join(f'<td style="{cell_style(norm[k][t])}" title="{float(self.values[k, t]):.5g}">'
                            "&nbsp;&nbsp;</td>" for t in range(len(self.tokens)))
            body.append(f"<tr><th>{escape(self.layers[k])}</th>{cells}<td>Σ {self.sums()[k]:+.3f}</td></tr>")
        return (f"<h1>relevance trace: {escape(self.label)} (score {self.score:.4f})</h1>"
                f'<table class="trace"><tr><th></th>{head}<th></th></tr>{"".join(body)}</table>')

    def save_png(self, path: str | os.PathLike[str], *, dpi: int = 150) -> None:
        """The trace as a PNG heatmap: tokens along x, layers along y (embeddings at the bottom)."""
        _save_png([self], path, dpi)

    def _draw(self, ax: Any, parts: dict[str, Any], title: str = "") -> Any:
        """Draw the heatmap into ``ax``; returns the image (for a colour bar)."""
        image = ax.imshow(self.normalized().numpy(), cmap=parts["cmap"], vmin=-1, vmax=1, aspect="auto",
                          origin="lower", interpolation="nearest")
        ax.set_xticks(range(len(self.tokens)), [shown(t) for t in self.tokens], rotation=90, fontsize=7,
                      family="monospace")
        ax.set_yticks(range(len(self.layers)), self.layers, fontsize=6)
        ax.set_title(f"{title}relevance trace for {self.label} (score {self.score:.3f})", fontsize=8, loc="left")
        return image


def _save_png(traces: list[Trace], path: str | os.PathLike[str], dpi: int) -> None:
    """One PNG with the heatmap of every trace, one below the other, and one colour bar."""
    parts = matplotlib_parts()
    widest = max(len(t.tokens) for t in traces)
    heights = [max(3.0, 0.16 * len(t.layers) + 1.8) for t in traces]
    fig = parts["Figure"](figsize=(max(4.0, 0.32 * widest + 2.2), sum(heights)), dpi=dpi)
    parts["Canvas"](fig)
    grid = fig.add_gridspec(len(traces), 1, height_ratios=heights, hspace=0.9, left=0.16, right=0.95,
                            bottom=0.2 / len(traces) + 0.02, top=1 - 0.1 / len(traces))
    for k, one in enumerate(traces):
        title = f"prompt {k + 1} of {len(traces)}: " if len(traces) > 1 else ""
        ax = fig.add_subplot(grid[k, 0])
        bar = fig.colorbar(one._draw(ax, parts, title), ax=ax, fraction=0.04, pad=0.03)
        bar.set_ticks([-1, 0, 1], labels=["−max|R|", "0", "+max|R|"], fontsize=6)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=dpi, bbox_inches="tight")


def _block_latents(latents: dict[str, Tensor]) -> list[tuple[int, str]]:
    """(block index, name) of the captured names that are whole blocks of one stack, in order."""
    by_stack: dict[str, list[tuple[int, str]]] = {}
    for name in latents:
        match = _BLOCK.match(name)
        if match:
            by_stack.setdefault(f"{match.group(1)}.{match.group(2)}", []).append((int(match.group(3)), name))
    if not by_stack:
        return []
    return sorted(max(by_stack.values(), key=len))


def relevance_trace(attribution: Attribution, row: int = 0, *, tokenizer: Any = None, normalize: str = "global",
                    skip_first: bool = False) -> Trace:
    """The tokens × layers relevance of row ``row`` from the captured block-boundary relevances.

    ``normalize``: ``"global"`` (one max|R| for the whole trace) or ``"layer"`` (each layer by its own);
    ``skip_first`` leaves the first token out of the scale.
    """
    require_tokens(attribution, "the relevance trace")
    if normalize not in ("global", "layer"):
        raise RenderError(f"normalize={normalize!r}: use 'global' or 'layer'")
    if not 0 <= row < len(attribution):
        raise RenderError(f"row {row} does not exist: the attribution has {len(attribution)} row(s)")
    latents = attribution.latents or {}
    blocks = _block_latents(latents)
    if not blocks:
        raise RenderError("no block-boundary relevance was captured: explain with "
                          "capture=lxt_fx.render.trace_capture(model) (the input embeddings and every block)")
    keep = attribution.attention_mask[row].bool()
    width = attribution.relevance.shape[1]
    layers, values = [], []
    if EMBEDDINGS in latents:
        layers.append("embeddings")
        values.append(latents[EMBEDDINGS][row].float().reshape(width, -1).sum(-1)[keep])
    else:
        layers.append("input")
        values.append(attribution.relevance[row][keep].float())
    for index, name in blocks:
        latent = latents[name]
        if latent.dim() < 2 or latent.shape[0] != len(attribution) or latent.shape[1] != width:
            continue  # not a [batch, seq, ...] tensor over the input tokens (e.g. a decoder stack)
        layers.append(f"block {index}")
        values.append(latent[row].float().reshape(width, -1).sum(-1)[keep])
    ids = attribution.input_ids[row][keep].tolist()
    tokens = display_tokens(named_tokens(attribution.tokens[row], ids), ids, tokenizer)
    return Trace(tokens, layers, torch.stack(values), target_label(attribution, row, tokenizer),
                 float(attribution.target_scores[row]), normalize, skip_first)


def trace(attribution: Attribution, path: str | os.PathLike[str] | None = None, *, row: int = 0,
          tokenizer: Any = None, normalize: str = "global", skip_first: bool = False,
          console: Console | None = None) -> Trace:
    """:func:`relevance_trace`, written to ``path`` (``.png`` or ``.html``) and/or printed on ``console``."""
    result = relevance_trace(attribution, row, tokenizer=tokenizer, normalize=normalize, skip_first=skip_first)
    _write([result], path, console)
    return result


def traces(attribution: Attribution, path: str | os.PathLike[str] | None = None, *, tokenizer: Any = None,
           normalize: str = "global", skip_first: bool = False, console: Console | None = None) -> list[Trace]:
    """The trace of every row (every prompt of a batch), written to ``path`` as one file (``.png``: one heatmap
    below the other; ``.html``: one table after the other) and/or printed on ``console``."""
    result = [relevance_trace(attribution, r, tokenizer=tokenizer, normalize=normalize, skip_first=skip_first)
              for r in range(len(attribution))]
    _write(result, path, console)
    return result


def _write(result: list[Trace], path: str | os.PathLike[str] | None, console: Console | None) -> None:
    if path is not None:
        suffix = os.path.splitext(str(path))[1].lower()
        if suffix == ".png":
            _save_png(result, path, 150)
        elif suffix in (".html", ".htm"):
            if len(result) == 1:
                result[0].to_html(path)
            else:
                write_text(path, page("".join(t._table_html() for t in result), "lxt-fx relevance traces"))
        else:
            raise RenderError(f"trace path {str(path)!r}: use a .png or .html file name")
    if console is not None:
        for one in result:
            console.print(one)


__all__ = ["Trace", "block_paths", "relevance_trace", "trace", "trace_capture", "traces"]
