"""``python -m lxt_fx.demo``: explain SmolLM2's next token for a prompt, show it in the terminal, and write
``demo/heatmap.html`` and ``demo/heatmap.png``."""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
import time
from collections.abc import Sequence

from rich.console import Console

DEFAULT_PROMPT = "The capital of France is"


def parse_target(text: str | None) -> int | str | None:
    """``None`` (argmax), an int id when ``text`` is all digits, else the one-token string itself."""
    if text is None:
        return None
    return int(text) if text.strip().isdigit() else text


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lxt_fx.demo", description=__doc__)
    parser.add_argument("--prompt", default=DEFAULT_PROMPT, help=f"text to explain (default {DEFAULT_PROMPT!r})")
    parser.add_argument("--target", default=None,
                        help="next token to explain: a one-token string such as ' Paris', or a token id "
                             "(default: the model's argmax)")
    parser.add_argument("--out", default="demo", help="folder for heatmap.html and heatmap.png (default demo/)")
    parser.add_argument("--skip-first", action="store_true",
                        help="leave the first (attention-sink) token out of the colour scale")
    parser.add_argument("--trace", action="store_true",
                        help="also capture every block and write the tokens × layers relevance trace to trace.png")
    args = parser.parse_args(argv)

    import torch

    from . import explain
    from .models import ModelNotAvailableError, load
    from .render import save_png, show, to_html, trace_capture
    from .tracing import LXTError

    console = Console()
    start = time.perf_counter()
    try:
        # The spinner says what is happening; transformers' own progress bars (stderr) would fight it.
        with console.status("[bold]loading SmolLM2-135M-Instruct (dequantizing the GGUF weights)…"), \
                contextlib.redirect_stderr(io.StringIO()):
            model, tokenizer = load("smollm2", dtype=torch.float32)
    except ModelNotAvailableError as exc:
        console.print(f"[red]cannot run the demo:[/red] {exc}")
        return 1
    console.print(f"loaded {type(model).__name__} in {time.perf_counter() - start:.1f} s")

    start = time.perf_counter()
    try:
        with console.status("[bold]capturing, rewriting and explaining (the first call exports the graph)…"):
            attribution = explain(model, args.prompt, tokenizer=tokenizer, target=parse_target(args.target),
                                  capture=trace_capture(model) if args.trace else None)
    except LXTError as exc:
        console.print(f"[red]{type(exc).__name__}:[/red] {exc}")
        return 1
    report = attribution.report
    console.print(f"explained in {time.perf_counter() - start:.1f} s (capture {report.capture_seconds:.1f} s, "
                  f"rewrite {report.rewrite_seconds:.1f} s, both once per model)\n")
    console.print(f"[bold]prompt:[/bold] {args.prompt!r}")
    options = {"tokenizer": tokenizer, "skip_first": args.skip_first}
    show(attribution, console, **options)

    html_path = os.path.join(args.out, "heatmap.html")
    to_html(attribution, html_path, title=f"lxt-fx AttnLRP · SmolLM2-135M · {args.prompt!r}", **options)
    console.print(f"wrote {html_path}")
    png_path = os.path.join(args.out, "heatmap.png")
    try:
        save_png(attribution, png_path, **options)
    except ImportError as exc:
        console.print(f"[yellow]skipped {png_path}:[/yellow] {exc}")
        return 0
    console.print(f"wrote {png_path}")
    if args.trace:
        trace_path = os.path.join(args.out, "trace.png")
        attribution.trace(trace_path, tokenizer=tokenizer, skip_first=args.skip_first)
        console.print(f"wrote {trace_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
