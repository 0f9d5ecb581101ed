"""The ``lxt-fx`` entry point: the top-level parser, :func:`main`, which hands each sub-command its arguments
(``check``, ``evaluate``, ``index-features`` and ``neuron`` parse their own), and :func:`run`, the process
entry (the console script and ``python -m lxt_fx.cli``)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import NoReturn

from rich.console import Console

from .common import PROG, Parser, pop_debug, run_guarded
from .process import exit_now, pause_collection


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``lxt-fx`` (``check`` and ``evaluate`` parse their own arguments)."""
    parser = Parser(prog=PROG, description="AttnLRP relevance for HuggingFace transformers, by rewriting the "
                     "captured torch.fx graph. Everything runs offline.",
                     epilog="run 'lxt-fx COMMAND --help' for the options of each command",
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    from .. import __version__

    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--debug", action="store_true", help="on failure, print the traceback before the "
                        "one-line error (any command)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
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


def run() -> NoReturn:
    """The ``lxt-fx`` process: :func:`main` on ``sys.argv[1:]``, then exit with its status. The garbage
    collector stays off until the model is loaded, and the process ends without freeing its heap object by
    object (:mod:`.process`: about two seconds of a warm ``lxt-fx explain``); the output is :func:`main`'s."""
    pause_collection()
    exit_now(main())


def _main(args_list: list[str]) -> int:
    args = build_parser().parse_args(args_list)
    if args.command is None:
        build_parser().print_help()
        return 2
    from . import attribute_dataset, explain, generate

    command = {"explain": explain.cmd_explain, "generate": generate.cmd_generate,
               "attribute-dataset": attribute_dataset.cmd_attribute_dataset}[args.command]
    return command(args, Console(), Console(stderr=True))

