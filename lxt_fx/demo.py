"""``python -m lxt_fx.demo``: SmolLM2 answers a question about a short paragraph; every answer token is
explained over everything before it (:func:`lxt_fx.explain_generation`) and the evidence it used is
highlighted in the paragraph: terminal, ``demo/answer.html`` (click an answer token to see its map),
``demo/evidence.png`` (the whole answer's map) and ``demo/matrix.png`` (one row per answer token).

``--prompt TEXT`` explains the next token after one prompt instead (the quickstart): ``demo/heatmap.html``
and ``demo/heatmap.png``."""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

from rich.console import Console

DEFAULT_PROMPT = "The capital of France is"
PARAGRAPH = ("Marie Curie was born in Warsaw in 1867. She moved to Paris in 1891 to study physics at the "
             "Sorbonne. In 1903 she shared the Nobel Prize in Physics, and in 1911 she won a second Nobel Prize, "
             "this time in Chemistry, for discovering polonium and radium.")
QUESTION = "In which city was Marie Curie born?"


def parse_target(text: str | None) -> int | str | None:
    """``None`` (argmax), an int id when ``text`` is all digits, else the one-token string itself."""
    if text is None:
        return None
    return int(text) if text.strip().isdigit() else text


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lxt_fx.demo", description=__doc__)
    parser.add_argument("--prompt", default=None,
                        help=f"explain the next token after this text instead (e.g. {DEFAULT_PROMPT!r})")
    parser.add_argument("--question", default=QUESTION, help=f"question about the paragraph (default {QUESTION!r})")
    parser.add_argument("--max-new-tokens", type=int, default=8, help="answer tokens to generate (default 8)")
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

    from .explain import explain
    from .models import ModelNotAvailableError, load
    from .render import save_png, show, to_html, trace_capture
    from .tracing import LXTError

    console = Console()
    start = time.perf_counter()
    try:
        # The spinner says what is happening; transformers' own progress bars (stderr) would fight it.
        with console.status("[bold]loading SmolLM2-135M-Instruct (the first time: dequantizing the GGUF weights)…"), \
                contextlib.redirect_stderr(io.StringIO()):
            model, tokenizer = load("smollm2", dtype=torch.float32)
    except ModelNotAvailableError as exc:
        console.print(f"[red]cannot run the demo:[/red] {exc}")
        return 1
    console.print(f"loaded {type(model).__name__} in {time.perf_counter() - start:.1f} s")
    if args.prompt is None and args.target is None and not args.trace:
        return question_demo(model, tokenizer, args, console)
    args.prompt = args.prompt if args.prompt is not None else DEFAULT_PROMPT

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


def key_token(gen: Any, tokenizer: Any, question: str) -> int:
    """The answer token to highlight: the first one whose word is in the paragraph but not in the question
    (the fact the answer took from the paragraph); else the last one."""
    for k, token in enumerate(gen.generated_ids):
        word = tokenizer.decode([token]).strip()
        if len(word) > 2 and word in PARAGRAPH and word not in question:
            return k
    return len(gen) - 1


def question_demo(model: Any, tokenizer: Any, args: argparse.Namespace, console: Console) -> int:
    """Answer ``args.question`` about :data:`PARAGRAPH`, explain each answer token, highlight the evidence."""
    from .generation import explain_generation
    from .tracing import LXTError

    prompt = f"{PARAGRAPH}\n\nQuestion: {args.question} Answer in one short sentence."
    start = time.perf_counter()
    try:
        with console.status("[bold]generating the answer, then explaining every answer token (one forward)…"):
            gen = explain_generation(model, prompt, tokenizer=tokenizer, max_new_tokens=args.max_new_tokens,
                                     chat=True)
    except LXTError as exc:
        console.print(f"[red]{type(exc).__name__}:[/red] {exc}")
        return 1
    console.print(f"answered and explained {len(gen)} token(s) in {time.perf_counter() - start:.1f} s\n")
    console.print(f"[bold]paragraph:[/bold] {PARAGRAPH}")
    console.print(f"[bold]question:[/bold] {args.question}")
    console.print(f"[bold]answer:[/bold] {gen.text!r}\n")
    options = {"tokenizer": tokenizer, "skip_first": True}
    k = key_token(gen, tokenizer, args.question)
    piece = tokenizer.decode([gen.generated_ids[k]])
    evidence = gen.to_attribution([k])
    labels = [f"answer token {k + 1} of {len(gen)}: {piece!r} — the word taken from the paragraph"]
    evidence.show(console, labels=labels, mark_from=gen.prompt_length, **options)
    os.makedirs(args.out, exist_ok=True)
    html_path = os.path.join(args.out, "answer.html")
    gen.to_html(html_path, title=f"lxt-fx · SmolLM2 answers: {args.question}", selected=k, **options)
    console.print(f"wrote {html_path} (it opens on answer token {k + 1}; click another to see its evidence)")
    try:
        evidence.save_png(os.path.join(args.out, "evidence.png"), labels=labels, **options)
        gen.save_png(os.path.join(args.out, "matrix.png"), **options)
    except ImportError as exc:
        console.print(f"[yellow]skipped the PNGs:[/yellow] {exc}")
        return 0
    console.print(f"wrote {os.path.join(args.out, 'evidence.png')} and {os.path.join(args.out, 'matrix.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
