"""``lxt-fx explain``: explain the next token of each prompt with one backward pass; the relevance of every
input token as a terminal heatmap, and on request HTML, PNG, the tokens × layers trace, LaTeX, PDF, JSON."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from .common import (
    CLIError,
    add_common_options,
    add_prompt_arguments,
    composite_named,
    explain_error,
    json_dump,
    load_model,
    prompts_of,
    target_argument,
    write_outputs,
)

_EXPLAIN_EPILOG = """examples:
  lxt-fx explain "The capital of France is"
  echo "The capital of France is" | lxt-fx explain
  lxt-fx explain --model ./my-llama --prompt "2 + 2 =" --target " 4" --html heat.html --png heat.png
  lxt-fx explain --prompt "Hello world" --prompt "The sky is" --json rows.json   (a batch: one block per row)
  lxt-fx explain --prompt "The capital of France is" --trace trace.png           (tokens × layers)
  lxt-fx explain --context notes.txt --question "Where does Bob live?" --html spans.html
                                        (the answer's next token over the context's sentences, ranked)
"""


def add_parser(sub: Any) -> None:
    """The ``explain`` sub-command's parser, added to ``sub`` (the subparsers of ``lxt-fx``)."""
    ex = sub.add_parser("explain", help="explain the next token of a prompt (terminal heatmap, HTML, PDF, PNG, JSON)",
                        description="Explain one next token of each prompt with one backward pass and show the "
                                    "relevance of every input token.", epilog=_EXPLAIN_EPILOG,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    add_prompt_arguments(ex, many=True)
    ex.add_argument("--target", metavar="TOKEN", default=None,
                    help="next token to explain: one token of the vocabulary such as ' Paris' (mind the leading "
                         "space) or a token id (default: the model's most likely next token)")
    ex.add_argument("--context", metavar="FILE",
                    help="a context file ('-': standard input) to ask --question about: the answer's first token is "
                         "explained and its relevance summed over the context's sentences (ranked table; --html "
                         "writes the ranked, highlighted spans)")
    ex.add_argument("--question", metavar="TEXT", help="the question about --context")
    ex.add_argument("--spans", default="sentences", choices=["sentences", "passages"],
                    help="with --context: sum over sentences (default) or blank-line separated passages")
    ex.add_argument("--pdf", metavar="FILE", help="write a PDF heatmap (needs xelatex or pdflatex)")
    ex.add_argument("--latex", metavar="FILE", help="write the LaTeX source of the heatmap")
    ex.add_argument("--trace", metavar="FILE",
                    help="also capture every block and write the tokens × layers relevance trace (.png or .html)")
    add_common_options(ex)


def _target(text: str | None, tokenizer: Any) -> int | str | None:
    """``None``, an id, or a string checked to be exactly one token (before any graph work)."""
    if text is None:
        return None
    value = target_argument(text)
    if isinstance(value, int):
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


def _with_rows(att: Any, tokenizer: Any, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    from ..render import display_tokens
    from ..render.common import named_tokens

    data = att.to_dict()
    for row in data["rows"]:
        row["text"] = display_tokens(named_tokens(row["tokens"], row["input_ids"]), row["input_ids"], tokenizer)
        row["target_text"] = tokenizer.decode([row["target_id"]]) if row["target_id"] >= 0 else None
    data.update(extra or {})
    return data


def _read(path: str, what: str) -> str:
    try:
        return sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise CLIError(f"{what} {path!r}: no such file", "check the path") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise CLIError(f"cannot read {what} {path!r}: {exc}", "give a UTF-8 text file") from exc


def cmd_context(args: argparse.Namespace, out: Console, status: Console) -> int:
    """``--context FILE --question TEXT``: explain the answer's first token and rank the context's spans."""
    if args.prompt or args.prompt_file or args.prompt_text:
        raise CLIError("--context comes with --question, not with a prompt (PROMPT, --prompt, --prompt-file)",
                       "give one or the other")
    if not args.question or not args.question.strip():
        raise CLIError("--context needs --question TEXT", "say what to ask about the context")
    context = _read(args.context, "--context").strip()
    if not context:
        raise CLIError(f"--context {args.context!r} is empty", "give a file with text")
    target_argument(args.target)
    model, tokenizer = load_model(args.model, status, args.threads)
    from ..explain import explain
    from ..spans import context_prompt
    from ..tracing.errors import LXTError

    target = _target(args.target, tokenizer)
    prompt = context_prompt(tokenizer, context, args.question)
    start = time.perf_counter()
    try:
        with status.status("[bold]explaining the answer's first token over the context (one backward pass) …"):
            att = explain(model, prompt, tokenizer=tokenizer, target=target, composite=composite_named(args.composite))
            spans = att.spans(args.spans, tokenizer=tokenizer, within=context)
    except LXTError as exc:
        raise explain_error(exc) from exc
    status.print(f"explained in {time.perf_counter() - start:.1f} s")
    spans.show(out, k=args.top if args.top > 0 else None)
    title = f"lxt-fx · {args.model} · {args.question}"
    outputs: list[tuple[str, str | None, Any]] = [
        ("JSON", args.json, lambda: json_dump(args.json, {"question": args.question, "prompt": prompt,
                                                           "model_path": args.model, **spans.to_dict()})),
        ("HTML", args.html, lambda: spans.to_html(args.html, title=title)),
        ("PNG", args.png, lambda: att.save_png(args.png, tokenizer=tokenizer, skip_first=args.skip_first)),
    ]
    return write_outputs(outputs, status)


def cmd_explain(args: argparse.Namespace, out: Console, status: Console) -> int:
    if args.context is not None:
        return cmd_context(args, out, status)
    if args.question is not None:
        raise CLIError("--question needs --context FILE", "give the context the question is about")
    prompts = prompts_of(args, "explain")
    target_argument(args.target)  # a negative id is refused before the model loads
    model, tokenizer = load_model(args.model, status, args.threads)
    from ..explain import explain
    from ..render import trace_capture, traces
    from ..tracing.errors import LXTError

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
                          composite=composite_named(args.composite), capture=capture)
    except LXTError as exc:
        raise explain_error(exc) from exc
    status.print(f"explained in {time.perf_counter() - start:.1f} s")
    options: dict[str, Any] = {"tokenizer": tokenizer, "skip_first": args.skip_first}
    from ..render.page import write_text

    att.show(out, top=args.top > 0, k=max(args.top, 1), **options)
    outputs: list[tuple[str, str | None, Any]] = [
        ("JSON", args.json, lambda: json_dump(args.json, _with_rows(att, tokenizer, {"prompts": prompts,
                                                                                    "model_path": args.model}))),
        ("HTML", args.html, lambda: att.to_html(args.html, title=f"lxt-fx · {args.model}", **options)),
        ("PNG", args.png, lambda: att.save_png(args.png, **options)),
        ("trace", args.trace, lambda: traces(att, args.trace, tokenizer=tokenizer, skip_first=args.skip_first)),
        ("LaTeX", args.latex, lambda: write_text(args.latex, att.to_latex(**options))),
        ("PDF", args.pdf, lambda: att.save_pdf(args.pdf, **options)),
    ]
    return write_outputs(outputs, status)
