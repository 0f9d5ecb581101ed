"""``lxt-fx neuron``: the card of one neuron of a built index as a self-contained HTML page.

    lxt-fx neuron --index idx/ --neuron 123 --html n123.html [--prompt "The capital of France is"]

With ``--prompt`` the card adds the conditional heatmap: the relevance of the model's next token that flows
through this neuron (the model is the one the index was built with, or ``--model``).
"""

from __future__ import annotations

from collections.abc import Sequence


def parser():  # noqa: ANN201 - an argparse parser
    """The argument parser of ``lxt-fx neuron``."""
    from .common import Parser

    p = Parser(prog="lxt-fx neuron", description="Write the HTML card of one neuron of a feature index.")
    p.add_argument("--index", required=True, metavar="DIR", help="folder written by lxt-fx index-features")
    p.add_argument("--neuron", required=True, type=int, help="channel index at the index's place")
    p.add_argument("--prompt", default=None, help="also show the conditional heatmap of this prompt")
    p.add_argument("--model", default=None, help="model for --prompt (default: the one the index was built with)")
    p.add_argument("--html", required=True, metavar="FILE", help="write the card here")
    return p


def neuron_main(argv: Sequence[str] | None = None, debug: bool = False) -> int:
    """Run ``lxt-fx neuron`` with ``argv``; returns the exit status."""
    from .common import standalone_main

    return standalone_main(_run, argv, debug)


def _run(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    from rich.console import Console

    from ..features import FeatureIndex, PlaceError, conditional
    from .common import CLIError, load_model

    try:
        index = FeatureIndex.load(args.index)
    except FileNotFoundError as exc:
        raise CLIError(str(exc), "build it first: lxt-fx index-features --place P --out DIR") from exc
    if not 0 <= args.neuron < index.neurons:
        raise CLIError(f"--neuron {args.neuron} outside 0…{index.neurons - 1} of {index.place}", "give a channel index")
    heat = None
    if args.prompt is not None:
        name = args.model or str(index.meta.get("model", ""))
        model, tokenizer = load_model(name, Console(stderr=True))
        try:
            heat = conditional(model, args.prompt, tokenizer=tokenizer, place=index.place, neurons=[args.neuron])
        except PlaceError as exc:
            raise CLIError(str(exc), "is --model the model the index was built with?") from exc
    index.card(args.neuron, heat).to_html(args.html)
    Console(stderr=True).print(f"wrote {args.html}")
    return 0
