"""``lxt-fx evaluate``: perturbation faithfulness (MoRF / LeRF / ABPC) of attribution methods on a dataset.

    lxt-fx evaluate --model smollm2 --data FILE --methods attnlrp,ixg,ig,random --out DIR
    python -m lxt_fx.cli evaluate --model smollm2 --data passages --limit 16 --steps 10 --out results/

``--data``: a JSONL file of passages (``{"text": ...}``; the model explains its own next token after the
first ``--length`` tokens) or of cloze prompts (``{"prompt": ..., "answer": " word"}``; the answer, which
must be one token, is explained — prompts with several-token answers are skipped and counted), or the
shipped sets by name: ``passages``, ``cloze``. Writes ``evaluate.json`` (settings, summary, mean curves,
per-row ABPC and relevance), ``evaluate.md`` (the table) and ``curves.png`` (mean curves; needs
matplotlib) to ``--out``, and prints the table. Exit status: 0 done, 2 bad input (unknown method, empty or
malformed data file, model not available).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path

from ..tracing.errors import LXTError
from .process import resume_collection

PERTURBATIONS = ("zero", "pad", "unk", "mask")

_EPILOG = """--data: a JSONL file of passages ({"text": ...}; the model explains its own next token after the first
--length tokens) or of cloze prompts ({"prompt": ..., "answer": " word"}; the answer, which must be one
token, is explained; prompts with several-token answers are skipped and counted), or a shipped set by name:
passages, cloze.

writes to the --out folder (default evaluate-results/): evaluate.json (settings, summary, mean curves, per-row
ABPC and relevance), evaluate.md (the table) and curves.png (mean curves; needs matplotlib); prints the table.
exit status: 0 done, 2 bad input (an unknown method or option value, an empty or malformed data file, a model
that is not available).

examples:
  lxt-fx evaluate --model smollm2 --data cloze --limit 8
  lxt-fx evaluate --model smollm2 --data FILE.jsonl --methods attnlrp,ixg,ig,random --out results/
"""


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """The description and epilog as written, and each option's default (when it has one) after its help."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default not in (None, False, argparse.SUPPRESS) and "%(default)" not in text:
            text += " (default: %(default)s)"
        return text

    def _split_lines(self, text: str, width: int) -> list[str]:
        import textwrap

        return textwrap.wrap(" ".join(text.split()), width, break_on_hyphens=False)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``lxt-fx evaluate``."""
    from ..evaluate.baselines import method_names
    from .common import Parser

    p = Parser(prog="lxt-fx evaluate", description="Perturbation faithfulness (MoRF / LeRF / ABPC) of attribution "
                "methods on a dataset:\nflip the most (MoRF) or least (LeRF) relevant tokens first and follow the "
                "explained score.", epilog=_EPILOG, formatter_class=_HelpFormatter)
    p.add_argument("--model", default="smollm2", metavar="PATH|NAME",
                   help="built-in name (smollm2) or a local model directory")
    p.add_argument("--data", required=True, metavar="FILE|passages|cloze",
                   help="JSONL file, or 'passages' / 'cloze' for the shipped sets (see below)")
    p.add_argument("--methods", default="attnlrp,ixg,ig,random",
                   help=f"comma-separated, from: {', '.join(method_names())}")
    p.add_argument("--out", default="evaluate-results", metavar="DIR",
                   help="output folder for evaluate.json, evaluate.md and curves.png (created)")
    p.add_argument("--steps", type=int, default=20, metavar="N", help="perturbation steps (equal fractions), ≥ 1")
    p.add_argument("--length", type=int, default=32, metavar="T", help="tokens per passage (passages data), ≥ 1")
    p.add_argument("--limit", type=int, default=None, metavar="N", help="evaluate at most this many rows (≥ 1)")
    p.add_argument("--perturbation", default="zero", metavar="zero|pad|unk|mask|ID",
                   help="what a flipped token becomes: 'zero' (a zero input embedding), the tokenizer's 'pad', "
                        "'unk' or 'mask' token, or a token id ≥ 0")
    p.add_argument("--score", default="logit", choices=["logit", "prob", "logprob"], help="explained score")
    p.add_argument("--ig-steps", type=int, default=32, metavar="N", help="Integrated Gradients steps, ≥ 1")
    p.add_argument("--batch-size", type=int, default=32, metavar="B", help="sequences per forward pass, ≥ 1")
    p.add_argument("--chunk-size", type=int, default=8, metavar="C", help="rows attributed together, ≥ 1")
    p.add_argument("--keep-first", action="store_true", help="never flip the first token (attention sink)")
    p.add_argument("--keep-last", action="store_true", help="never flip the token at the explained position")
    p.add_argument("--seed", type=int, default=0, help="seed of the random baseline")
    p.add_argument("--threads", type=int, default=None, metavar="N", help="torch CPU threads (default: torch's own)")
    p.add_argument("--debug", action="store_true", help="on failure, print the traceback before the error line")
    return p


def _perturbation(value: str) -> str | int:
    """``--perturbation`` checked: one of :data:`PERTURBATIONS` or a token id ≥ 0 (a one-line error otherwise)."""
    from .common import CLIError

    text = value.strip()
    if text in PERTURBATIONS:
        return text
    if text.lstrip("-").isdigit():
        if int(text) < 0:
            raise CLIError(f"--perturbation {value}: a token id must be ≥ 0", "give 'zero', 'pad', 'unk', 'mask' "
                           "or a token id ≥ 0")
        return int(text)
    raise CLIError(f"--perturbation {value!r} is not one of {', '.join(PERTURBATIONS)} nor a token id",
                   "give 'zero' (the default), 'pad', 'unk', 'mask' or a token id ≥ 0")


def _check_options(args: argparse.Namespace) -> str | int:
    """Every option value checked before anything is loaded; returns the perturbation (a name or an id)."""
    from .common import CLIError

    for flag, value in (("--steps", args.steps), ("--length", args.length), ("--ig-steps", args.ig_steps),
                        ("--batch-size", args.batch_size), ("--chunk-size", args.chunk_size),
                        ("--limit", args.limit), ("--threads", args.threads)):
        if value is not None and value < 1:
            raise CLIError(f"{flag} {value}: must be ≥ 1", f"see lxt-fx evaluate --help for {flag}")
    return _perturbation(args.perturbation)


def evaluate_main(argv: Sequence[str] | None = None, debug: bool = False) -> int:
    """Run ``lxt-fx evaluate`` with ``argv`` (without the subcommand); returns the exit status. Every
    failure is one line on stderr, ``lxt-fx: error: … (hint: …)``; ``--debug`` prints the traceback first."""
    from .common import standalone_main

    return standalone_main(_evaluate, argv, debug)


def _evaluate(argv: list[str]) -> int:
    from rich.console import Console

    from .common import CLIError

    args = build_parser().parse_args(argv)
    try:
        return _run(args, Console(stderr=False))
    except FileNotFoundError as exc:
        raise CLIError(f"{exc}", "check the --data path, or use a shipped set: --data passages / cloze") from exc
    except (LXTError, ValueError) as exc:
        raise CLIError(f"{type(exc).__name__}: {exc}", "fix the data file or option named above") from exc


def _run(args: argparse.Namespace, console: object) -> int:
    import torch
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from ..evaluate import data as data_mod
    from ..evaluate.baselines import parse_methods
    from ..evaluate.report import console_table, markdown_table, plot_curves
    from ..evaluate.runner import run, work_units
    from ..models import load

    perturbation = _check_options(args)                 # option values fail before the model loads
    methods = parse_methods(args.methods)               # unknown names too
    items = data_mod.load(args.data)                    # empty / malformed files fail here too
    if args.threads:
        torch.set_num_threads(args.threads)
    console.print(f"loading {args.model} …")
    model, tokenizer = load(args.model)
    resume_collection()  # the startup is over (lxt-fx's own process paused the garbage collector)
    kind = "cloze" if isinstance(items[0], data_mod.ClozeItem) else "passages"
    if kind == "cloze":
        examples, skipped = data_mod.encode_cloze(items, tokenizer, args.limit)
        note = f"{len(skipped)} prompt(s) skipped: answer is not exactly one token"
    else:
        examples, skipped = data_mod.encode_passages(items, tokenizer, args.length, args.limit)
        note = f"{len(skipped)} passage(s) skipped: shorter than {args.length} tokens"
    console.print(f"{kind}: {len(examples)} rows; {note}")
    if not examples:
        raise data_mod.EmptyDataError(f"no usable rows in {args.data} ({note})")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    total = work_units(examples, methods, args.steps, 2, args.ig_steps)
    start = time.perf_counter()
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TimeElapsedColumn(), TimeRemainingColumn(), console=console) as bar:
        task = bar.add_task(f"{kind} × {len(methods)} methods", total=total)
        result = run(model, examples, methods, steps=args.steps, perturbation=perturbation, tokenizer=tokenizer,
                     score=args.score, chunk_size=args.chunk_size, batch_size=args.batch_size,
                     ig_steps=args.ig_steps, seed=args.seed, pad_id=pad_id, skipped=len(skipped),
                     keep_first=args.keep_first, keep_last=args.keep_last,
                     progress=lambda n: bar.advance(task, n))
    seconds = time.perf_counter() - start
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    payload = {"model": args.model, "data": str(args.data), "kind": kind, "seconds": seconds,
               "skipped_note": note, **result.to_dict()}
    payload["settings"]["length"] = args.length if kind == "passages" else None
    (out / "evaluate.json").write_text(json.dumps(payload, indent=1))
    table = markdown_table(result)
    header = (f"# lxt-fx evaluate: {args.model} on {args.data}\n\nN = {result.n} {kind} rows ({note}); "
              f"{args.steps} steps, perturbation {perturbation!r}, score {args.score}; mean ± standard error "
              f"over rows; ABPC = AUC(LeRF) − AUC(MoRF), higher is better. {seconds:.0f} s.\n\n")
    (out / "evaluate.md").write_text(header + table + "\n")
    png = plot_curves({kind: result}, out / "curves.png")
    console.print(console_table(result, f"{args.model} · {kind} · N={result.n} · steps={args.steps}"))
    console.print(f"wrote {out / 'evaluate.json'}, {out / 'evaluate.md'}" + (f", {png}" if png else ""))
    return 0
