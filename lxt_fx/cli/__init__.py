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

The entry point is :mod:`.entry` (:func:`main`; the process runs :func:`run`), the steps the sub-commands share (the one-line errors,
loading a model, writing outputs) are :mod:`.common`; each sub-command is one module: ``explain``,
``generate``, ``check``, ``evaluate``, ``attribute_dataset``, ``index_features``, ``neuron``, ``circuit``.
"""

from .common import CLIError, load_model, run_guarded, standalone_main, target_argument
from .entry import build_parser, main, run

__all__ = ["CLIError", "build_parser", "load_model", "main", "run", "run_guarded", "standalone_main", "target_argument"]
