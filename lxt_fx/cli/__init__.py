"""``lxt-fx``: explain a model's next token or its generated text from the command line.

    lxt-fx explain --model smollm2 --prompt "The capital of France is" --html out.html
    lxt-fx generate --model smollm2 --prompt "The capital of France is" --max-new-tokens 8 --per-token
    lxt-fx check --model smollm2
    lxt-fx evaluate --model smollm2 --data cloze --limit 8

Every failure of every sub-command is one line on stderr, ``lxt-fx: error: <what> (hint: <what to do>)``,
and a non-zero exit status: 2 for input that cannot be used (unknown model, missing or corrupt file, a
target that is not one token, any :class:`~lxt_fx.LXTError`, …), 1 when a requested output could not be
written (e.g. no LaTeX engine for ``--pdf``) or for an unexpected failure (its type is named). ``--debug``
(anywhere on the command line) prints the traceback before that line.

This package holds the entry point (:func:`main`), the one-line error handling and the steps the
sub-commands share (loading a model, writing outputs); each sub-command is one module: ``explain``,
``generate``, ``check``, ``evaluate``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
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
    from ..tracing.errors import LXTError

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
    from .. import __version__

    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--debug", action="store_true", help="on failure, print the traceback before the "
                        "one-line error (any command)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    from . import explain, generate

    explain.add_parser(sub)
    generate.add_parser(sub)
    from . import attribute_dataset

    attribute_dataset.add_parser(sub)
    sub.add_parser("check", help="does the rewrite make sense? coverage, opacity, conservation, NaN "
                                 "provenance (lxt-fx check --help)", add_help=False)
    sub.add_parser("evaluate", help="perturbation faithfulness (MoRF/LeRF/ABPC) of attribution methods "
                                    "(lxt-fx evaluate --help)", add_help=False)
    sub.add_parser("index-features", help="top snippets per neuron of a place over a corpus (resumable)",
                   add_help=False)
    sub.add_parser("neuron", help="HTML card of one neuron of a feature index", add_help=False)
    sub.add_parser("circuit", help="attribution graph of the next token: heads, MLPs and the relevance between "
                                   "them (HTML, JSON)", add_help=False)
    return parser


# ---- shared steps ------------------------------------------------------------------------------------------


def _check_model_argument(name: str) -> None:
    """Fail fast (before importing the model stack) on a model argument that cannot be loaded."""
    from ..models import BUILTIN

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
    from ..models import ModelNotAvailableError, NotCausalLMError, load

    start = time.perf_counter()
    try:
        with status.status(f"[bold]loading {name} …"), _quiet_hf():
            model, tokenizer = load(name)
    except NotCausalLMError as exc:
        raise CLIError(str(exc), "explain it from Python with lxt_fx.explain (see the message); the sub-commands "
                       "take causal LMs") from exc
    except ModelNotAvailableError as exc:
        raise CLIError(str(exc), "see 'lxt-fx explain --help' for the model argument") from exc
    except Exception as exc:  # noqa: BLE001 - a corrupt config, weights or tokenizer file, whatever raises
        raise CLIError(f"cannot load {name!r}: {type(exc).__name__}: {exc}",
                       "a local model directory needs config.json, the weights and the tokenizer files") from exc
    if tokenizer is None:
        raise CLIError(f"{name!r} has no tokenizer", "save the tokenizer into the model directory")
    status.print(f"loaded {type(model).__name__} from {name} in {time.perf_counter() - start:.1f} s")
    return model, tokenizer


def load_model(name: str, status: Console, threads: int | None = None) -> tuple[Any, Any]:
    """The ``--model`` argument checked (a one-line error before the model stack is imported), torch's CPU
    threads set to ``threads`` (when given) and the model loaded with its tokenizer: the steps every
    sub-command that loads a model takes."""
    _check_model_argument(name)
    if threads:
        import torch

        torch.set_num_threads(threads)
    return _load(name, status)


def target_argument(text: str | None) -> int | str | None:
    """A ``--target`` value: None, a token id when it is exactly an integer (a negative one is refused by a
    one-line :class:`CLIError`), else the token text as given — ``" 4"`` (with its space) is the token " 4",
    as a tokenizer writes it after "2 + 2 =", not the id 4."""
    if text is not None and re.fullmatch(r"[+-]?\d+", text):
        value = int(text)
        if value < 0:
            raise CLIError(f"--target {text} is a negative token id", "give a token id ≥ 0, or the token "
                           "itself as text (e.g. --target ' Paris')")
        return value
    return text


def standalone_main(run: Callable[[list[str]], int], argv: Sequence[str] | None, debug: bool) -> int:
    """Entry of a sub-command that parses its own arguments (``check``, ``evaluate``, ``index-features``,
    ``neuron``): ``--debug`` taken out of ``argv`` (default ``sys.argv[1:]``), then ``run(rest)`` with every
    failure as one line (:func:`run_guarded`)."""
    args, flag = pop_debug(sys.argv[1:] if argv is None else argv)
    return run_guarded(lambda: run(args), debug or flag)


def _composite(name: str | None) -> Any:
    if name is None:
        return None
    from .. import composites

    return getattr(composites, name)


def _write(kind: str, path: str, console: Console, write: Any) -> None:
    """Run ``write()`` for an output file, turning failures into one-line errors."""
    from ..render import LatexError, LatexNotFoundError

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
    from ..targets import TargetError

    name = type(exc).__name__
    if isinstance(exc, TargetError):
        return CLIError(f"{name}: {exc}", "give --target as one token of the vocabulary or its id")
    if isinstance(exc, ValueError):  # an input or option that cannot be used: the message names it
        return CLIError(f"{name}: {exc}", "change what the message names; --debug shows the traceback")
    return CLIError(f"{name}: {exc}", "run 'lxt-fx check --model MODEL' for the rewrite and check reports")


# ---- the entry point ---------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``lxt-fx`` with ``argv`` (default ``sys.argv[1:]``); returns the exit status. Every failure is
    one line on stderr (see the module docstring); ``--debug`` anywhere adds the traceback."""
    args_list, debug = pop_debug(sys.argv[1:] if argv is None else argv)
    if args_list and args_list[0] == "check":
        from .check import check_main

        return check_main(args_list[1:], debug=debug)
    if args_list and args_list[0] == "evaluate":
        from .evaluate import evaluate_main

        return evaluate_main(args_list[1:], debug=debug)
    if args_list and args_list[0] in ("index-features", "neuron"):  # lxt_fx.features (index_features.py, neuron.py)
        from .index_features import index_features_main
        from .neuron import neuron_main

        return {"index-features": index_features_main, "neuron": neuron_main}[args_list[0]](args_list[1:], debug=debug)
    if args_list and args_list[0] == "circuit":  # lxt_fx.features.circuit (circuit.py)
        from .circuit import circuit_main

        return circuit_main(args_list[1:], debug=debug)
    return run_guarded(lambda: _main(args_list), debug)


def _main(args_list: list[str]) -> int:
    args = build_parser().parse_args(args_list)
    if args.command is None:
        build_parser().print_help()
        return 2
    from . import attribute_dataset, explain, generate

    command = {"explain": explain.cmd_explain, "generate": generate.cmd_generate,
               "attribute-dataset": attribute_dataset.cmd_attribute_dataset}[args.command]
    return command(args, Console(), Console(stderr=True))

