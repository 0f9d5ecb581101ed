"""``python -m lxt_fx.cli``: the same as the ``lxt-fx`` command."""

from .entry import run

run()
