"""``lxt-fx index-features``: the top snippets per neuron of one place over an offline corpus (resumable).

    lxt-fx index-features --model smollm2 --place "model.layers.15.mlp.down_proj:input" --out idx/

Run it again after a kill with the same arguments: finished chunks are kept. Prints the seconds and the size
on disk. Failures are one line on stderr (see :mod:`lxt_fx.cli`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path


def parser():  # noqa: ANN201 - an argparse parser
    """The argument parser of ``lxt-fx index-features``."""
    from .common import DEFAULT_MODEL, Parser

    p = Parser(prog="lxt-fx index-features", description="Index the neurons of one place: per neuron the top "
                "snippets by activation and by relevance for the model's own next-token predictions.")
    p.add_argument("--model", default=DEFAULT_MODEL, help="built-in model name or a local model directory")
    p.add_argument("--place", required=True, help="module path, or '<path>:input' for its input channels")
    p.add_argument("--data", default=None, metavar="FILE.jsonl",
                   help="passages, one {\"text\": ...} per line (default: the shipped passages)")
    p.add_argument("--out", required=True, metavar="DIR", help="folder of the index (resumed if it holds one)")
    p.add_argument("--length", type=int, default=32, help="tokens per snippet (default 32)")
    p.add_argument("--chunk-size", type=int, default=8, help="snippets per chunk on disk (default 8)")
    p.add_argument("--top", type=int, default=8, help="snippets per neuron shown (default 8)")
    p.add_argument("--limit", type=int, default=None, help="only the first N passages")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    return p


def index_features_main(argv: Sequence[str] | None = None, debug: bool = False) -> int:
    """Run ``lxt-fx index-features`` with ``argv``; returns the exit status."""
    from .common import standalone_main

    return standalone_main(_run, argv, debug)


def _run(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    from rich.console import Console

    from ..evaluate.data import load_passages
    from ..features import build_index
    from .common import CLIError, load_model

    texts = [p.text for p in load_passages(args.data)]
    if args.limit is not None:
        texts = texts[: args.limit]
    if not texts:
        raise CLIError("no passages to index", "give --data FILE.jsonl with {\"text\": ...} rows, or drop --limit 0")
    model, tokenizer = load_model(args.model, Console(stderr=True), args.threads)
    start = time.perf_counter()
    index = build_index(model, tokenizer, args.place, args.out, texts, length=args.length,
                        chunk_size=args.chunk_size, top=args.top, model_name=args.model)
    seconds = time.perf_counter() - start
    size = sum(f.stat().st_size for f in Path(args.out).rglob("*") if f.is_file())
    final = sum((Path(args.out) / n).stat().st_size for n in ("index.safetensors", "index.json"))
    Console().print(f"indexed {index.neurons} neurons of {index.place} over {len(texts)} snippets in "
                    f"{seconds:.1f} s; {size / 2**20:.2f} MiB on disk ({final / 2**20:.2f} MiB index, the rest "
                    f"chunks) in {args.out}")
    return 0
