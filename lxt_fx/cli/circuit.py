"""``lxt-fx circuit``: the attribution graph of a model's next token, as an offline HTML page and JSON.

    lxt-fx circuit --model smollm2 --prompt "When John and Mary went to the store, John gave a book to" \\
        --target " Mary" --rival " John" --corrupt "When John and Mary went to the store, Paul gave a book to" \\
        --html graph.html --json graph.json

Nodes are the attention heads and MLP outputs (``--components``) that hold ``--coverage`` of the relevance
(at most ``--max-nodes``); an edge is the share of the upper node's relevance that reaches the lower node's
output (conditional relevance). With ``--corrupt`` (same token length as the prompt) each node also shows its
relevance-patching (RelP) score. See :mod:`lxt_fx.features.circuit`.
"""

from __future__ import annotations

from collections.abc import Sequence


def parser():  # noqa: ANN201 - an argparse parser
    """The argument parser of ``lxt-fx circuit``."""
    from .common import DEFAULT_MODEL, Parser

    p = Parser(prog="lxt-fx circuit", description="Write the attribution graph of the next token of a prompt.")
    p.add_argument("--model", default=DEFAULT_MODEL, help="a built-in name (smollm2, …) or a local model directory")
    p.add_argument("--prompt", required=True, help="the (clean) input text")
    p.add_argument("--target", default=None, help="the explained token (text or id; default: the argmax)")
    p.add_argument("--rival", default=None, help="explain logit(target) − logit(rival) instead (a logit difference)")
    p.add_argument("--corrupt", default=None, help="a corrupted prompt of the same length: adds RelP scores")
    p.add_argument("--components", default="heads,mlp", help="comma-separated: heads, mlp, neurons, resid or places")
    p.add_argument("--coverage", type=float, default=0.8, help="share of Σ|R| the nodes (and each node's inputs) hold")
    p.add_argument("--max-nodes", type=int, default=16)
    p.add_argument("--html", default=None, metavar="FILE", help="write the interactive page here")
    p.add_argument("--json", default=None, metavar="FILE", help="write the graph as JSON here")
    return p


def circuit_main(argv: Sequence[str] | None = None, debug: bool = False) -> int:
    """Run ``lxt-fx circuit`` with ``argv``; returns the exit status."""
    from .common import standalone_main

    return standalone_main(_run, argv, debug)


def _run(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    from pathlib import Path

    from rich.console import Console

    from ..features.circuit import attribution_graph
    from ..targets import Contrastive
    from .common import CLIError, load_model, target_argument

    if args.html is None and args.json is None:
        raise CLIError("nothing to write", "give --html FILE and/or --json FILE")
    target = target_argument(args.target)
    if args.rival is not None:
        target = Contrastive(target, target_argument(args.rival))
    err = Console(stderr=True)
    model, tokenizer = load_model(args.model, err)
    graph = attribution_graph(model, args.prompt, tokenizer=tokenizer, target=target, corrupt=args.corrupt,
                              components=[c.strip() for c in args.components.split(",") if c.strip()],
                              coverage=args.coverage, max_nodes=args.max_nodes)
    if args.html:
        Path(args.html).write_text(graph.to_html(f"Attribution graph: {args.prompt}"), encoding="utf-8")
        err.print(f"wrote {args.html}")
    if args.json:
        Path(args.json).write_text(graph.to_json(), encoding="utf-8")
        err.print(f"wrote {args.json}")
    Console().print(f"{len(graph.nodes)} nodes, {len(graph.edges)} edges; top: " +
                    ", ".join(f"{n.id} ({100 * n.share:.0f} %)" for n in graph.nodes[:5]))
    return 0
