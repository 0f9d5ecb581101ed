"""The steps the ``lxt-fx`` sub-commands share: the one-line error (:class:`CLIError`) and its handling, the
common options, loading a model, parsing ``--target``, writing the outputs."""

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

from .process import resume_collection

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


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line with a hint (and exit status 2)."""

    def error(self, message: str) -> NoReturn:
        raise CLIError(message, f"see {self.prog} --help")


# ---- the common options --------------------------------------------------------------------------------------------


def add_common_options(p: argparse.ArgumentParser) -> None:
    """The options of ``explain`` and ``generate``: model, composite, outputs, table size, threads."""
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


# ---- shared steps ------------------------------------------------------------------------------------------


def check_model_argument(name: str) -> None:
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
        resume_collection()  # the startup is over (lxt-fx's own process paused the garbage collector)
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
    check_model_argument(name)
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


def add_prompt_arguments(p: argparse.ArgumentParser, many: bool) -> None:
    """The prompt of ``explain`` / ``generate``, given one of three ways: positionally, as ``--prompt``
    (repeatable when ``many``: a batch), or on standard input (piped, or ``-`` as the prompt); ``--prompt-file``."""
    p.add_argument("prompt_text", nargs="*", metavar="PROMPT",
                   help="the text (quote it); '-' or piped standard input: read it from there")
    p.add_argument("--prompt", action="append" if many else "store", metavar="TEXT",
                   help="the text, as an option" + ("; repeat for a batch (one block per prompt)" if many else ""))
    p.add_argument("--prompt-file", metavar="FILE", help="read the prompt from FILE ('-': standard input)")


def _stdin_is_piped() -> bool:
    """Whether standard input is a pipe or a file (not a terminal, nothing, or a test's captured stream)."""
    import stat

    try:
        mode = os.fstat(sys.stdin.fileno()).st_mode
    except (AttributeError, OSError, ValueError):  # no stdin, or one without a file descriptor (pytest)
        return False
    return stat.S_ISFIFO(mode) or stat.S_ISREG(mode)


def _read_prompt(source: str) -> str:
    """The text of ``--prompt-file`` / ``-`` (standard input), its trailing newlines dropped."""
    try:
        text = sys.stdin.read() if source == "-" else Path(source).read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise CLIError(f"--prompt-file {source!r}: no such file", "check the path") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise CLIError(f"cannot read --prompt-file {source!r}: {exc}", "give a UTF-8 text file") from exc
    return text.rstrip("\n")


def prompts_of(args: argparse.Namespace, command: str) -> list[str]:
    """The prompts of ``args`` from exactly one source: the positional PROMPT, ``--prompt``, ``--prompt-file``,
    or (when none of them is given) piped standard input. A one-line :class:`CLIError` when none is given,
    when two sources are given, when an unquoted prompt arrives as several words, or for an empty prompt."""
    positional = list(args.prompt_text or [])
    option = args.prompt if isinstance(args.prompt, list) else [] if args.prompt is None else [args.prompt]
    given = [name for name, used in (("PROMPT", positional), ("--prompt", option), ("--prompt-file", args.prompt_file))
             if used]
    example = f'lxt-fx {command} "The capital of France is"'
    if len(given) > 1:
        raise CLIError(f"the prompt is given twice ({' and '.join(given)})", f"give it once, e.g. {example}")
    if len(positional) > 1:
        raise CLIError(f"{len(positional)} words given as separate prompts {positional[:4]}"
                       f"{' …' if len(positional) > 4 else ''}", f"quote the prompt: {example}"
                       + ("; repeat --prompt for a batch" if command == "explain" else ""))
    if positional == ["-"]:
        prompts = [_read_prompt("-")]
    elif positional or option:
        prompts = positional or option
    elif args.prompt_file:
        prompts = [_read_prompt(args.prompt_file)]
    elif _stdin_is_piped():
        prompts = [_read_prompt("-")]
    else:
        raise CLIError("no prompt given", f"give it as {example}, as --prompt TEXT, or on standard input")
    empty = [i for i, p in enumerate(prompts) if not p.strip()]
    if empty:
        what = f"prompt {empty[0] + 1}" if len(prompts) > 1 else "the prompt"
        raise CLIError(f"{what} is empty", "give at least one token of text")
    return prompts


def standalone_main(run: Callable[[list[str]], int], argv: Sequence[str] | None, debug: bool) -> int:
    """Entry of a sub-command that parses its own arguments (``check``, ``evaluate``, ``index-features``,
    ``neuron``): ``--debug`` taken out of ``argv`` (default ``sys.argv[1:]``), then ``run(rest)`` with every
    failure as one line (:func:`run_guarded`)."""
    args, flag = pop_debug(sys.argv[1:] if argv is None else argv)
    return run_guarded(lambda: run(args), debug or flag)


def composite_named(name: str | None) -> Any:
    """The composite of ``lxt_fx.composites`` named by ``--composite`` (None: the model's registered one)."""
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


def write_outputs(outputs: list[tuple[str, str | None, Any]], console: Console) -> int:
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


def json_dump(path: str, data: Any) -> None:
    """Write ``data`` as indented UTF-8 JSON to ``path`` (its folder created)."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=1, ensure_ascii=False)
        f.write("\n")


def explain_error(exc: Exception) -> CLIError:
    """A failure of ``explain`` / ``generate`` as a one-line :class:`CLIError` with the hint that fits it."""
    from ..targets import TargetError

    name = type(exc).__name__
    if isinstance(exc, TargetError):
        return CLIError(f"{name}: {exc}", "give --target as one token of the vocabulary or its id")
    if isinstance(exc, ValueError):  # an input or option that cannot be used: the message names it
        return CLIError(f"{name}: {exc}", "change what the message names; --debug shows the traceback")
    return CLIError(f"{name}: {exc}", "run 'lxt-fx check --model MODEL' for the rewrite and check reports")


