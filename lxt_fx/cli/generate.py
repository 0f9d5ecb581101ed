"""``lxt-fx generate``: generate greedily with the untouched model, then explain the generated span with one
backward pass (``--per-token``: one map per generated token, from one forward and batched backward seeds)."""

from __future__ import annotations

import argparse
import time
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
    write_outputs,
)

_GENERATE_EPILOG = """The model generates greedily as it is; then ONE backward pass explains the sum of the generated
tokens' logits (each at the position that predicted it). --per-token explains every generated token over
the tokens before it: one forward of the whole sequence, one backward seed per generated token (batched);
its HTML page lets you click a generated token to see its map, its PNG is the matrix.

examples:
  lxt-fx generate "The capital of France is" --max-new-tokens 8
  lxt-fx generate --prompt "Name a colour." --chat --max-new-tokens 6 --per-token --html gen.html
"""


def add_parser(sub: Any) -> None:
    """The ``generate`` sub-command's parser, added to ``sub`` (the subparsers of ``lxt-fx``)."""
    gen = sub.add_parser("generate", help="generate greedily, then explain the generated span with one backward",
                         description="Generate a continuation greedily with the untouched model, then explain "
                                     "the generated span with one backward pass.", epilog=_GENERATE_EPILOG,
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    add_prompt_arguments(gen, many=False)
    gen.add_argument("--max-new-tokens", type=int, default=16, metavar="N", help="tokens to generate (default 16)")
    gen.add_argument("--per-token", action="store_true", help="also show one map per generated token")
    gen.add_argument("--chat", action="store_true", help="wrap the prompt in the tokenizer's chat template")
    add_common_options(gen)


def cmd_generate(args: argparse.Namespace, out: Console, status: Console) -> int:
    if args.max_new_tokens < 1:
        raise CLIError(f"--max-new-tokens {args.max_new_tokens}", "generate at least one token")
    (prompt,) = prompts_of(args, "generate")
    model, tokenizer = load_model(args.model, status, args.threads)
    if args.chat and not getattr(tokenizer, "chat_template", None):
        raise CLIError(f"--chat: the tokenizer of {args.model!r} has no chat template",
                       "drop --chat, or use a chat model whose tokenizer has one (e.g. --model smollm2)")
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from ..generate import generate_and_explain
    from ..generation import explain_generation
    from ..tracing.errors import LXTError

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

            matrix = None
            if args.per_token:  # one forward of the whole sequence, one backward seed per generated token
                matrix = explain_generation(model, prompt, tokenizer=tokenizer,
                                            max_new_tokens=args.max_new_tokens, chat=args.chat,
                                            composite=composite_named(args.composite), on_token=on_token)
                result = matrix.to_generation(prompt)
            else:
                result = generate_and_explain(model, tokenizer, prompt, args.max_new_tokens, chat=args.chat,
                                              composite=composite_named(args.composite), on_token=on_token)
            progress.update(explaining, completed=1, visible=True)
    except LXTError as exc:
        raise explain_error(exc) from exc
    status.print(f"generated {len(result.generated_ids)} token(s) and explained them in "
                 f"{time.perf_counter() - start:.1f} s")
    out.print(f"[bold]prompt:[/bold] {prompt!r}")
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
        ("JSON", args.json, lambda: json_dump(args.json, result.to_dict() if matrix is None else
                                               {**result.to_dict(), "matrix": matrix.matrix.tolist()})),
        ("HTML", args.html, lambda: both.to_html(args.html, labels=labels, mark_from=mark,
                                                 title=f"lxt-fx generate · {args.model}", **options)
         if matrix is None else matrix.to_html(args.html, title=f"lxt-fx generate · {args.model}", **options)),
        ("PNG", args.png, lambda: both.save_png(args.png, labels=labels, **options) if matrix is None
         else matrix.save_png(args.png, **options)),
    ]
    return write_outputs(outputs, status)


def _stack(result: Any) -> Any:
    """The span row and the per-token rows as one Attribution (for one HTML page / PNG)."""
    import torch

    from ..attribution import Attribution

    a, b = result.attribution, result.per_token
    return Attribution(torch.cat([a.relevance, b.relevance]), a.tokens + b.tokens,
                       torch.cat([a.input_ids, b.input_ids]), torch.cat([a.attention_mask, b.attention_mask]),
                       torch.cat([a.target_ids, b.target_ids]), torch.cat([a.target_scores, b.target_scores]),
                       torch.cat([a.positions, b.positions]), a.report)
