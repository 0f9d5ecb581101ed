"""``lxt-fx check --model MODEL``: print the rewrite report and the check report for one prompt.

MODEL is a built-in name (``smollm2``, the default) or a local model directory (see :func:`lxt_fx.models.load`),
given with ``--model`` like every other sub-command, or positionally (``lxt-fx check MODEL``).
Exit status: 0 when every check passes, 1 when one fails (an UNHANDLED op, a rule that is not opaque, a
non-finite tensor, zero-bias bookkeeping that does not close) or ``--html`` could not be written, 2 when
the model or input cannot be used. Every failure is one line on stderr (``--debug``: with the traceback).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

DEFAULT_PROMPT = "The capital of France is"


def parser() -> argparse.ArgumentParser:
    """The argument parser of ``lxt-fx check`` (usage errors are one line with a hint)."""
    from .common import DEFAULT_MODEL, Parser

    p = Parser(prog="lxt-fx check", description="Does my LXT implementation make sense? "
                "Coverage, rule opacity, conservation bookkeeping and NaN/Inf provenance.")
    p.add_argument("model", nargs="?", default=None, metavar="MODEL", help="the model, positionally (as --model)")
    p.add_argument("--model", dest="model_option", default=None, metavar="PATH|NAME",
                   help=f"built-in model name (smollm2) or a local model directory (default {DEFAULT_MODEL})")
    p.add_argument("--prompt", default=DEFAULT_PROMPT, help=f"text to explain (default {DEFAULT_PROMPT!r})")
    p.add_argument("--target", default=None, help="next token to explain: a one-token string or an id "
                                                  "(default: the model's argmax)")
    p.add_argument("--composite", default=None, help="attnlrp or cp_lrp (default: the one registered for "
                                                     "the model type, else attnlrp)")
    p.add_argument("--no-zero-bias", action="store_true", help="skip the zero-bias bookkeeping pass")
    p.add_argument("--html", default=None, metavar="FILE", help="also write the check report as HTML")
    p.add_argument("--width", type=int, default=None, help="terminal width for the tables")
    p.add_argument("--debug", action="store_true", help="on failure, print the traceback before the error line")
    return p


def check_main(argv: Sequence[str] | None = None, debug: bool = False) -> int:
    """Run ``lxt-fx check`` with ``argv`` (without the program and sub-command names); returns the exit
    status. Every failure is one line on stderr, ``lxt-fx: error: … (hint: …)``; ``--debug`` (or
    ``debug=True``) prints the traceback first."""
    from .common import standalone_main

    return standalone_main(_check, argv, debug)


def _check(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    from rich.console import Console

    from .. import composites
    from ..check import check
    from ..render.rewrite_report import rewrite_rich
    from .common import DEFAULT_MODEL, CLIError, load_model, target_argument

    if args.model is not None and args.model_option is not None and args.model != args.model_option:
        raise CLIError(f"two models given: {args.model!r} and --model {args.model_option!r}",
                       "give the model once, as --model PATH|NAME")
    model_name = args.model_option or args.model or DEFAULT_MODEL
    console = Console(width=args.width)
    composite = None
    if args.composite is not None:
        composite = getattr(composites, args.composite, None)
        if not isinstance(composite, composites.Composite):
            raise CLIError(f"unknown composite {args.composite!r}", "use --composite attnlrp or cp_lrp")
    if args.html and not Path(args.html).absolute().parent.is_dir():  # fail before the minutes of work
        raise CLIError(f"cannot write HTML {args.html!r}: folder {str(Path(args.html).absolute().parent)!r} "
                       "does not exist", "create the folder first, or give --html a path in an existing one")
    target = target_argument(args.target)
    model, tokenizer = load_model(model_name, Console(stderr=True, width=args.width))
    with console.status("checking …"):
        report = check(model, args.prompt, composite=composite, target=target, tokenizer=tokenizer,
                       zero_bias=not args.no_zero_bias)
    console.print(f"prompt: {args.prompt!r}")
    if report.rewrite is not None:
        console.print(rewrite_rich(report.rewrite))
    console.print(report)
    if args.html:
        try:
            with open(args.html, "w", encoding="utf-8") as f:
                f.write("<!doctype html><meta charset='utf-8'><title>lxt-fx check</title>\n")
                f.write(report._repr_html_())
        except OSError as exc:
            raise CLIError(f"cannot write HTML {args.html!r}: {exc.strerror or exc}",
                           "check the folder exists and is writable", code=1) from exc
        console.print(f"wrote {args.html}")
    return 0 if report.ok else 1
