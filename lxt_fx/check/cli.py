"""``lxt-fx check MODEL``: print the rewrite report and the check report for one prompt.

MODEL is a built-in name (``smollm2``) or a local model directory (see :func:`lxt_fx.models.load`).
Exit status: 0 when every check passes, 1 when one fails (an UNHANDLED op, a rule that is not opaque, a
non-finite tensor, zero-bias bookkeeping that does not close), 2 when the model or input cannot be used.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

DEFAULT_PROMPT = "The capital of France is"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lxt-fx check", description="Does my LXT implementation make sense? "
                                "Coverage, rule opacity, conservation bookkeeping and NaN/Inf provenance.")
    p.add_argument("model", help="built-in model name (smollm2) or a local model directory")
    p.add_argument("--prompt", default=DEFAULT_PROMPT, help=f"text to explain (default {DEFAULT_PROMPT!r})")
    p.add_argument("--target", default=None, help="next token to explain: a one-token string or an id "
                                                  "(default: the model's argmax)")
    p.add_argument("--composite", default=None, help="attnlrp or cp_lrp (default: the one registered for "
                                                     "the model type, else attnlrp)")
    p.add_argument("--no-zero-bias", action="store_true", help="skip the zero-bias bookkeeping pass")
    p.add_argument("--html", default=None, metavar="FILE", help="also write the check report as HTML")
    p.add_argument("--width", type=int, default=None, help="terminal width for the tables")
    return p


def check_main(argv: Sequence[str] | None = None) -> int:
    """Run ``lxt-fx check`` with ``argv`` (without the program and sub-command names); returns the exit
    status."""
    args = parser().parse_args(argv)
    from rich.console import Console

    from .. import composites
    from ..models import ModelNotAvailableError, load
    from ..tracing.errors import LXTError
    from . import check
    from .render_report import rewrite_rich

    console = Console(width=args.width)
    err = Console(stderr=True, width=args.width)
    composite = None
    if args.composite is not None:
        composite = getattr(composites, args.composite, None)
        if not isinstance(composite, composites.Composite):
            err.print(f"unknown composite {args.composite!r}: use attnlrp or cp_lrp")
            return 2
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # the spinner says what is happening
    try:
        with console.status(f"loading {args.model} …"):
            model, tokenizer = load(args.model)
    except (ModelNotAvailableError, OSError, ValueError) as exc:
        err.print(f"cannot load {args.model!r}: {exc}")
        return 2
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    target = args.target
    if target is not None and target.strip().isdigit():
        target = int(target)
    try:
        with console.status("checking …"):
            report = check(model, args.prompt, composite=composite, target=target, tokenizer=tokenizer,
                           zero_bias=not args.no_zero_bias)
    except LXTError as exc:
        err.print(f"{type(exc).__name__}: {exc}")
        return 2
    console.print(f"prompt: {args.prompt!r}")
    if report.rewrite is not None:
        console.print(rewrite_rich(report.rewrite))
    console.print(report)
    if args.html:
        with open(args.html, "w", encoding="utf-8") as f:
            f.write("<!doctype html><meta charset='utf-8'><title>lxt-fx check</title>\n")
            f.write(report._repr_html_())
        console.print(f"wrote {args.html}")
    return 0 if report.ok else 1


def main() -> None:  # pragma: no cover - console entry for ``python -m lxt_fx.check.cli``
    sys.exit(check_main(sys.argv[1:]))


if __name__ == "__main__":  # pragma: no cover
    main()
