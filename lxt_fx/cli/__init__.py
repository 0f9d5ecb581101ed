"""``lxt-fx``: explain a model's next token or its generated text from the command line.

    lxt-fx explain --model smollm2 --prompt "The capital of France is" --html out.html
    lxt-fx generate --model smollm2 --prompt "The capital of France is" --max-new-tokens 8 --per-token
    lxt-fx check smollm2
    lxt-fx evaluate --model smollm2 --data cloze --limit 8

Every failure of every sub-command is one line on stderr, ``lxt-fx: error: <what> (hint: <what to do>)``,
and a non-zero exit status: 2 for input that cannot be used (unknown model, missing or corrupt file, a
target that is not one token, any :class:`~lxt_fx.LXTError`, …), 1 when a requested output could not be
written (e.g. no LaTeX engine for ``--pdf``) or for an unexpected failure (its type is named). ``--debug``
(anywhere on the command line) prints the traceback before that line.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, NoReturn

from rich.console import Console

PROG = "lxt-fx"
DEFAULT_MODEL = "smollm2"


class CLIError(Exception):
    """A failure to report as one line: what went wrong, a hint, and the exit status."""

    def __init__(self, message: str, hint: str = "", code: int = 2) -> None:
        super().__init__(message)
        self.hint, self.code = hint, code

    def line(self, prog: str = PROG) -> str:
        text = " ".join(str(self).split())  # one line, whatever the message held
        return f"{prog}: error: {text}" + (f" (hint: {self.hint})" if self.hint else "")


def pop_debug(argv: Sequence[str]) -> tuple[list[str], bool]:
    """``(argv without --debug, whether --debug was there)``."""
    args = list(argv)
    return [a for a in args if a != "--debug"], "--debug" in args


def as_cli_error(exc: BaseException) -> CLIError:
    """Any exception as a one-line :class:`CLIError`: named lxt-fx errors and unreadable files are bad
    input (exit status 2); anything else is an unexpected failure (1) whose type is named."""
    from .tracing.errors import LXTError

    if isinstance(exc, CLIError):
        return exc
    what = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, LXTError):
        return CLIError(what, "the message says what to change; --debug shows the traceback")
    if isinstance(exc, OSError):
        return CLIError(what, "check the path exists and is readable (or writable)")
    return CLIError(what, "run again with --debug for the traceback; if the model runs eagerly with this "
                    "input, report it as an lxt-fx bug", code=1)


def run_guarded(command: Callable[[], int], debug: bool = False, prog: str = PROG) -> int:
    """Run ``command()`` and return its exit status; any exception becomes one line on stderr and a
    non-zero status (with ``debug``, its traceback is printed first). ``--help``/usage exits pass through."""
    err = Console(stderr=True, soft_wrap=True, highlight=False)
    try:
        return int(command())
    except SystemExit as exc:  # argparse --help / --version
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    except KeyboardInterrupt:
        err.print(f"{prog}: interrupted", markup=False)
        return 130
    except Exception as exc:  # noqa: BLE001 - the CLI's promise: one line for every failure
        error = as_cli_error(exc)
        if debug:
            err.print("".join(traceback.format_exception(exc)).rstrip(), markup=False)
        err.print(error.line(prog), markup=False)
        return error.code


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line with a hint (and exit status 2)."""

    def error(self, message: str) -> NoReturn:
        raise CLIError(message, f"see {self.prog} --help")


# ---- the parser --------------------------------------------------------------------------------------------

_EXPLAIN_EPILOG = """examples:
  lxt-fx explain --prompt "The capital of France is"
  lxt-fx explain --model ./my-llama --prompt "2 + 2 =" --target " 4" --html heat.html --png heat.png
  lxt-fx explain --prompt "Hello world" --prompt "The sky is" --json rows.json   (a batch: one block per row)
  lxt-fx explain --prompt "The capital of France is" --trace trace.png           (tokens × layers)
"""
_GENERATE_EPILOG = """The model generates greedily as it is; then ONE backward pass explains the sum of the generated
tokens' logits (each at the position that predicted it). --per-token adds one map per generated token,
in the same batch and the same single backward pass.

examples:
  lxt-fx generate --prompt "The capital of France is" --max-new-tokens 8
  lxt-fx generate --prompt "Name a colour." --chat --max-new-tokens 6 --per-token --html gen.html
"""


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=DEFAULT_MODEL, metavar="PATH|NAME",
                   help=f"built-in model name (smollm2) or a local model directory (default {DEFAULT_MODEL})")
    p.add_argument("--composite", default=None, choices=["attnlrp", "cp_lrp"],
                   help="LRP composite (default: the one registered for the model type, else attnlrp)")
    p.add_argument("--skip-first", action="store_true",
                   help="leave the first (attention-sink) token out of the colour scale")
    p.add_argument("--html", metavar="FILE", help="write a self-contained HTML heatmap")
    p.add_argument("--png", metavar="FILE", help="write a PNG heatmap (needs matplotlib, the [viz] extra)")
    p.add_argument("--json", metavar="FILE", help="write tokens, relevance and targets as JSON")
    p.add_argument("--top", type=int, default=5, metavar="K", help="rows of the top-tokens table (0: none)")
    p.add_argument("--threads", type=int, default=None, metavar="N", help="torch CPU threads")
    p.add_argument("--debug", action="store_true", help="on failure, print the traceback before the error line")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``lxt-fx`` (``check`` and ``evaluate`` parse their own arguments)."""
    parser = _Parser(prog=PROG, description="AttnLRP relevance for HuggingFace transformers, by rewriting the "
                     "captured torch.fx graph. Everything runs offline.",
                     epilog="run 'lxt-fx COMMAND --help' for the options of each command",
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    from . import __version__

    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--debug", action="store_true", help="on failure, print the traceback before the "
                        "one-line error (any command)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    ex = sub.add_parser("explain", help="explain the next token of a prompt (terminal heatmap, HTML, PDF, PNG, JSON)",
                        description="Explain one next token of each prompt with one backward pass and show the "
                                    "relevance of every input token.", epilog=_EXPLAIN_EPILOG,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    ex.add_argument("--prompt", action="append", metavar="TEXT",
                    help="text to explain; repeat for a batch (one block per prompt)")
    ex.add_argument("--prompt-file", metavar="FILE", help="read the prompt from FILE ('-': standard input)")
    ex.add_argument("--target", metavar="TOKEN", default=None,
                    help="next token to explain: one token of the vocabulary such as ' Paris' (mind the leading "
                         "space) or a token id (default: the model's most likely next token)")
    ex.add_argument("--pdf", metavar="FILE", help="write a PDF heatmap (needs xelatex or pdflatex)")
    ex.add_argument("--latex", metavar="FILE", help="write the LaTeX source of the heatmap")
    ex.add_argument("--trace", metavar="FILE",
                    help="also capture every block and write the tokens × layers relevance trace (.png or .html)")
    _common(ex)

    gen = sub.add_parser("generate", help="generate greedily, then explain the generated span with one backward",
                         description="Generate a continuation greedily with the untouched model, then explain "
                                     "the generated span with one backward pass.", epilog=_GENERATE_EPILOG,
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    gen.add_argument("--prompt", required=True, metavar="TEXT", help="text to continue")
    gen.add_argument("--max-new-tokens", type=int, default=16, metavar="N", help="tokens to generate (default 16)")
    gen.add_argument("--per-token", action="store_true", help="also show one map per generated token")
    gen.add_argument("--chat", action="store_true", help="wrap the prompt in the tokenizer's chat template")
    _common(gen)

    sub.add_parser("check", help="does the rewrite make sense? coverage, opacity, conservation, NaN "
                                 "provenance (lxt-fx check --help)", add_help=False)
    sub.add_parser("evaluate", help="perturbation faithfulness (MoRF/LeRF/ABPC) of attribution methods "
                                    "(lxt-fx evaluate --help)", add_help=False)
    return parser


# ---- shared steps ------------------------------------------------------------------------------------------


def _check_model_argument(name: str) -> None:
    """Fail fast (before importing the model stack) on a model argument that cannot be loaded."""
    from .models import BUILTIN

    if name.lower() in BUILTIN:
        return
    path = Path(name)
    if path.is_dir():
        return
    builtin = ", ".join(BUILTIN)
    if path.exists():
        raise CLIError(f"--model {name!r} is a file, not a model directory",
                       f"pass the folder holding config.json and the tokenizer, or a built-in name ({builtin})")
    if os.sep in name or name.startswith(".") or (os.altsep and os.altsep in name):
        raise CLIError(f"--model {name!r}: no such directory",
                       f"check the path, or use a built-in name ({builtin})")
    raise CLIError(f"unknown model {name!r}: not a built-in name nor an existing directory",
                   f"built-in names: {builtin}; or pass the path of a local model directory")


@contextlib.contextmanager
def _quiet_hf() -> Iterator[None]:
    """transformers' own progress bars and warnings off (the rich status says what is happening)."""
    from transformers.utils import logging as hf_logging

    bars, verbosity = hf_logging.is_progress_bar_enabled(), hf_logging.get_verbosity()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def _load(name: str, status: Console) -> tuple[Any, Any]:
    from .models import ModelNotAvailableError, load

    start = time.perf_counter()
    try:
        with status.status(f"[bold]loading {name} …"), _quiet_hf():
            model, tokenizer = load(name)
    except ModelNotAvailableError as exc:
        raise CLIError(str(exc), "see 'lxt-fx explain --help' for the model argument") from exc
    except Exception as exc:  # noqa: BLE001 - a corrupt config, weights or tokenizer file, whatever raises
        raise CLIError(f"cannot load {name!r}: {type(exc).__name__}: {exc}",
                       "a local model directory needs config.json, the weights and the tokenizer files") from exc
    if tokenizer is None:
        raise CLIError(f"{name!r} has no tokenizer", "save the tokenizer into the model directory")
    status.print(f"loaded {type(model).__name__} from {name} in {time.perf_counter() - start:.1f} s")
    return model, tokenizer


def _composite(name: str | None) -> Any:
    if name is None:
        return None
    from . import composites

    return getattr(composites, name)


def _target(text: str | None, tokenizer: Any) -> int | str | None:
    """``None``, an id, or a string checked to be exactly one token (before any graph work)."""
    if text is None:
        return None
    if text.strip().isdigit():
        value = int(text)
        size = len(tokenizer) if hasattr(tokenizer, "__len__") else None
        if size is not None and value >= size:
            raise CLIError(f"--target id {value} is outside the vocabulary of {size}", "give an id below the "
                           "vocabulary size, or the token as text")
        return value
    pieces = tokenizer.encode(text, add_special_tokens=False)
    if len(pieces) != 1:
        names = tokenizer.convert_ids_to_tokens(pieces)
        raise CLIError(f"--target {text!r} is {len(pieces)} tokens {names}, not one",
                       f"give one token, e.g. --target {tokenizer.decode(pieces[:1])!r}, or a token id "
                       f"(--target {pieces[0] if pieces else 0})")
    return text


def _prompts(args: argparse.Namespace) -> list[str]:
    prompts = list(args.prompt or [])
    if args.prompt_file:
        try:
            text = sys.stdin.read() if args.prompt_file == "-" else Path(args.prompt_file).read_text(encoding="utf-8")
        except FileNotFoundError as exc:
            raise CLIError(f"--prompt-file {args.prompt_file!r}: no such file", "check the path") from exc
        except (OSError, UnicodeDecodeError) as exc:
            raise CLIError(f"cannot read --prompt-file {args.prompt_file!r}: {exc}", "give a UTF-8 text file") from exc
        prompts.append(text.rstrip("\n"))
    if not prompts:
        raise CLIError("no prompt given", "pass --prompt TEXT (repeatable) or --prompt-file FILE")
    empty = [i for i, p in enumerate(prompts) if not p.strip()]
    if empty:
        raise CLIError(f"prompt {empty[0] + 1} is empty", "give at least one token of text")
    return prompts


def _write(kind: str, path: str, console: Console, write: Any) -> None:
    """Run ``write()`` for an output file, turning failures into one-line errors."""
    from .render import LatexError, LatexNotFoundError

    try:
        write()
    except LatexNotFoundError as exc:
        raise CLIError(str(exc).split(":")[0], "install TeX Live (apt-get install texlive-xetex), or use "
                       "--latex FILE and compile it elsewhere", code=1) from exc
    except LatexError as exc:
        raise CLIError(str(exc), "write the source with --latex FILE and look at the LaTeX log", code=1) from exc
    except ImportError as exc:
        raise CLIError(f"cannot write {kind} {path!r}: {exc}", "pip install matplotlib (the [viz] extra)",
                       code=1) from exc
    except OSError as exc:
        raise CLIError(f"cannot write {kind} {path!r}: {exc.strerror or exc}", "check the folder exists and is "
                       "writable", code=1) from exc
    console.print(f"wrote {path}")


def _write_all(outputs: list[tuple[str, str | None, Any]], console: Console) -> int:
    """Write every requested output; a failure does not stop the others. Each failure is one line on
    stderr; the exit status is the worst one (0 when all were written)."""
    code = 0
    for kind, path, write in outputs:
        if not path:
            continue
        try:
            _write(kind, path, console, write)
        except CLIError as exc:
            Console(stderr=True, soft_wrap=True, highlight=False).print(exc.line(), markup=False)
            code = max(code, exc.code)
    return code


def _json_dump(path: str, data: Any) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=1, ensure_ascii=False)
        f.write("\n")


def _explain_error(exc: Exception) -> CLIError:
    from .targets import TargetError

    name = type(exc).__name__
    if isinstance(exc, TargetError):
        return CLIError(f"{name}: {exc}", "give --target as one token of the vocabulary or its id")
    return CLIError(f"{name}: {exc}", "run 'lxt-fx check MODEL' for the rewrite and check reports")


def _with_rows(att: Any, tokenizer: Any, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    from .render import display_tokens
    from .render.common import named_tokens

    data = att.to_dict()
    for row in data["rows"]:
        row["text"] = display_tokens(named_tokens(row["tokens"], row["input_ids"]), row["input_ids"], tokenizer)
        row["target_text"] = tokenizer.decode([row["target_id"]]) if row["target_id"] >= 0 else None
    data.update(extra or {})
    return data


# ---- commands ----------------------------------------------------------------------------------------------


def cmd_explain(args: argparse.Namespace, out: Console, status: Console) -> int:
    prompts = _prompts(args)
    _check_model_argument(args.model)
    import torch

    from .explain import explain
    from .render import trace_capture
    from .tracing.errors import LXTError

    if args.threads:
        torch.set_num_threads(args.threads)
    model, tokenizer = _load(args.model, status)
    target = _target(args.target, tokenizer)
    capture = None
    if args.trace:
        try:
            capture = trace_capture(model)
        except LXTError as exc:
            raise CLIError(str(exc), "drop --trace for this model") from exc
    what = f"{len(prompts)} prompts" if len(prompts) > 1 else "the prompt"
    start = time.perf_counter()
    try:
        with status.status(f"[bold]capturing, rewriting and explaining {what} (one backward pass) …"):
            att = explain(model, prompts if len(prompts) > 1 else prompts[0], tokenizer=tokenizer, target=target,
                          composite=_composite(args.composite), capture=capture)
    except LXTError as exc:
        raise _explain_error(exc) from exc
    status.print(f"explained in {time.perf_counter() - start:.1f} s")
    options: dict[str, Any] = {"tokenizer": tokenizer, "skip_first": args.skip_first}
    from .render.html import write_text

    att.show(out, top=args.top > 0, k=max(args.top, 1), **options)
    outputs: list[tuple[str, str | None, Any]] = [
        ("JSON", args.json, lambda: _json_dump(args.json, _with_rows(att, tokenizer, {"prompts": prompts,
                                                                                    "model_path": args.model}))),
        ("HTML", args.html, lambda: att.to_html(args.html, title=f"lxt-fx · {args.model}", **options)),
        ("PNG", args.png, lambda: att.save_png(args.png, **options)),
        ("trace", args.trace, lambda: att.trace(args.trace, tokenizer=tokenizer, skip_first=args.skip_first)),
        ("LaTeX", args.latex, lambda: write_text(args.latex, att.to_latex(**options))),
        ("PDF", args.pdf, lambda: att.save_pdf(args.pdf, **options)),
    ]
    return _write_all(outputs, status)


def cmd_generate(args: argparse.Namespace, out: Console, status: Console) -> int:
    if args.max_new_tokens < 1:
        raise CLIError(f"--max-new-tokens {args.max_new_tokens}", "generate at least one token")
    if not args.prompt.strip():
        raise CLIError("the prompt is empty", "give at least one token of text")
    _check_model_argument(args.model)
    import torch
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from .generate import generate_and_explain
    from .tracing.errors import LXTError

    if args.threads:
        torch.set_num_threads(args.threads)
    model, tokenizer = _load(args.model, status)
    progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), console=status, transient=True)
    start = time.perf_counter()
    try:
        with progress:
            task = progress.add_task("generating", total=args.max_new_tokens)
            explaining = progress.add_task("explaining (one backward)", total=1, visible=False)

            def on_token(token: int) -> None:
                progress.advance(task)
                if progress.tasks[task].completed >= args.max_new_tokens:
                    progress.update(explaining, visible=True)

            result = generate_and_explain(model, tokenizer, args.prompt, args.max_new_tokens,
                                          per_token=args.per_token, chat=args.chat,
                                          composite=_composite(args.composite), on_token=on_token)
            progress.update(explaining, completed=1, visible=True)
    except LXTError as exc:
        raise _explain_error(exc) from exc
    status.print(f"generated {len(result.generated_ids)} token(s) and explained them in "
                 f"{time.perf_counter() - start:.1f} s")
    out.print(f"[bold]prompt:[/bold] {args.prompt!r}")
    out.print(f"[bold]generated:[/bold] {result.text!r}")
    options: dict[str, Any] = {"tokenizer": tokenizer, "skip_first": args.skip_first}
    mark = result.prompt_length
    result.attribution.show(out, labels=result.labels, mark_from=mark, top=args.top > 0, k=max(args.top, 1),
                            **options)
    if result.per_token is not None:
        result.per_token.show(out, labels=result.per_token_labels, mark_from=mark, top=False, **options)
    both = result.attribution if result.per_token is None else _stack(result)
    labels = result.labels + result.per_token_labels
    outputs: list[tuple[str, str | None, Any]] = [
        ("JSON", args.json, lambda: _json_dump(args.json, result.to_dict())),
        ("HTML", args.html, lambda: both.to_html(args.html, labels=labels, mark_from=mark,
                                                 title=f"lxt-fx generate · {args.model}", **options)),
        ("PNG", args.png, lambda: both.save_png(args.png, labels=labels, **options)),
    ]
    return _write_all(outputs, status)


def _stack(result: Any) -> Any:
    """The span row and the per-token rows as one Attribution (for one HTML page / PNG)."""
    import torch

    from .attribution import Attribution

    a, b = result.attribution, result.per_token
    return Attribution(torch.cat([a.relevance, b.relevance]), a.tokens + b.tokens,
                       torch.cat([a.input_ids, b.input_ids]), torch.cat([a.attention_mask, b.attention_mask]),
                       torch.cat([a.target_ids, b.target_ids]), torch.cat([a.target_scores, b.target_scores]),
                       torch.cat([a.positions, b.positions]), a.report)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``lxt-fx`` with ``argv`` (default ``sys.argv[1:]``); returns the exit status. Every failure is
    one line on stderr (see the module docstring); ``--debug`` anywhere adds the traceback."""
    args_list, debug = pop_debug(sys.argv[1:] if argv is None else argv)
    if args_list and args_list[0] == "check":
        from .check.cli import check_main

        return check_main(args_list[1:], debug=debug)
    if args_list and args_list[0] == "evaluate":
        from .cli_evaluate import evaluate_main

        return evaluate_main(args_list[1:], debug=debug)
    return run_guarded(lambda: _main(args_list), debug)


def _main(args_list: list[str]) -> int:
    args = build_parser().parse_args(args_list)
    if args.command is None:
        build_parser().print_help()
        return 2
    command = {"explain": cmd_explain, "generate": cmd_generate}[args.command]
    return command(args, Console(), Console(stderr=True))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
