"""``python -m lxt_fx.cli``: the same as the ``lxt-fx`` command."""

import sys

from .entry import main

sys.exit(main())
