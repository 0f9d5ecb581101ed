"""``lxt-fx attribute-dataset``: explain every row of a JSONL file into safetensors shards and a JSONL index;
one process, or every rank of ``torchrun --nproc-per-node N -m lxt_fx.cli attribute-dataset ...``."""

from __future__ import annotations

import argparse
import os
from typing import Any

from rich.console import Console

from .common import CLIError, check_model_argument, composite_named, load_model, target_argument

_EPILOG = """examples:
  lxt-fx attribute-dataset --model smollm2 --data prompts.jsonl --out runs/a --batch-size 8
  torchrun --nproc-per-node 2 -m lxt_fx.cli attribute-dataset --model smollm2 --data prompts.jsonl --out runs/a
  (a row: {"id": "q1", "text": "The capital of France is", "target": " Paris"}; id and target are optional)
  A killed run started again with the same arguments resumes: each row is done exactly once.
"""


def add_parser(sub: Any) -> None:
    """The ``attribute-dataset`` sub-command's parser, added to ``sub``."""
    p = sub.add_parser("attribute-dataset", help="explain every row of a JSONL file (one process or torchrun) into "
                       "safetensors shards and a JSONL index", epilog=_EPILOG,
                       description="Explain the next token of every row of a JSONL file with AttnLRP.",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, metavar="PATH|NAME", help="built-in model name (smollm2) or a local "
                   "model directory")
    p.add_argument("--data", required=True, metavar="FILE.jsonl", help='one {"text": ...} object per line')
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (created; an earlier run is resumed)")
    p.add_argument("--target", default=None, metavar="TOKEN", help="next token to explain for rows without their "
                   "own target: one token such as ' Paris', or an id (default: the model's most likely token)")
    p.add_argument("--batch-size", type=int, default=8, metavar="B", help="rows per forward/backward (default 8)")
    p.add_argument("--shard-size", type=int, default=64, metavar="N", help="rows per shard file (default 64)")
    p.add_argument("--max-length", type=int, default=None, metavar="T", help="rows with more tokens are reported "
                   "and skipped (default: the model's max_position_embeddings)")
    p.add_argument("--composite", default=None, choices=["attnlrp", "cp_lrp"], help="LRP composite")
    p.add_argument("--threads", type=int, default=None, metavar="N", help="torch CPU threads per process")


def cmd_attribute_dataset(args: argparse.Namespace, out: Console, status: Console) -> int:
    """Run ``attribute-dataset``; every rank runs this, rank 0 reports."""
    check_model_argument(args.model)
    if not os.path.isfile(args.data):
        raise CLIError(f"--data {args.data!r}: no such file", "give a JSONL file, one {\"text\": ...} per line")
    import torch

    from ..dataset import DatasetError, attribute
    from ..tracing.errors import LXTError

    target = target_argument(args.target)
    rank = int(os.environ.get("RANK", "0"))
    model, tokenizer = load_model(args.model, status if rank == 0 else Console(quiet=True), args.threads)
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available() and os.environ.get("LXT_FX_BACKEND", "") != "gloo":
        model = model.to(f"cuda:{local}")
    try:
        summary = attribute(model, tokenizer, args.data, args.out, target=target, batch_size=args.batch_size,
                            shard_size=args.shard_size, max_length=args.max_length,
                            composite=composite_named(args.composite), progress=rank == 0,
                            checkpoint=getattr(model, "name_or_path", None))
    except DatasetError as exc:
        raise CLIError(str(exc), "see 'lxt-fx attribute-dataset --help'") from exc
    except LXTError as exc:
        raise CLIError(f"{type(exc).__name__}: {exc}", "run 'lxt-fx check MODEL' for the rewrite report") from exc
    if summary.index is not None:
        bad = sum("error" in r for r in summary.index)
        if summary.index and bad == len(summary.index):
            reasons = sorted({r["error"] for r in summary.index})
            raise CLIError(f"none of the {bad} rows could be explained: {reasons[0]}"
                           + (f" (and {len(reasons) - 1} other reason(s))" if len(reasons) > 1 else ""),
                           f"see 'error' in {os.path.join(args.out, 'index.jsonl')}; fix --target or the rows")
        status.print(f"{len(summary.index)} rows: {len(summary.index) - bad} explained, {bad} bad (see 'error' in "
                     f"{os.path.join(args.out, 'index.jsonl')}); {summary.resumed} were done by an earlier run; "
                     f"{summary.seconds:.1f} s")
    return 0
