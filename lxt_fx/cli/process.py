"""The ``lxt-fx`` process: two costs of the Python interpreter that a short-lived command line process skips.

A run of ``lxt-fx`` builds a large heap that lives until the process ends: torch, transformers, the model and
its captured graph — millions of objects. The interpreter spends seconds on that heap that buy nothing here:

* **collecting it while it is built.** The cyclic garbage collector scans the whole old generation again each
  time it has grown by a quarter, and importing torch and transformers grows it many times over.
  :func:`collect_rarely` collects a hundred times less often (``gc.set_threshold``; young cyclic garbage
  is still collected, every ``GC_YOUNG`` allocations, so a long run does not grow without bound).
* **freeing it object by object at exit.** :func:`exit_now` runs the ``atexit`` handlers (logging flushes,
  temporary folders, ``weakref.finalize``), flushes standard output and error, and ends the process with
  ``os._exit`` — the operating system takes the memory back at once. When another thread is still alive
  (which a normal exit would wait for), it exits normally instead.

Only :func:`lxt_fx.cli.entry.run`, the process entry, calls them: :func:`lxt_fx.cli.main` (what tests and
other programs call) changes nothing about the interpreter.
"""

from __future__ import annotations

import atexit
import gc
import os
import sys
import threading
from typing import NoReturn

# Allocations between two collections of the youngest generation (the interpreter's default is 700).
GC_YOUNG = 70_000


def collect_rarely() -> None:
    """Collect cyclic garbage every :data:`GC_YOUNG` net allocations instead of every 700 (the older
    generations' thresholds stay as they are, so full scans of the long-lived heap become as rare)."""
    _, middle, old = gc.get_threshold()
    gc.set_threshold(GC_YOUNG, middle, old)


def exit_now(code: int) -> NoReturn:
    """End the process with exit status ``code`` without freeing the heap object by object: the ``atexit``
    handlers run, standard output and error are flushed, then ``os._exit(code)``. With another thread alive
    (a normal exit would join it) or no way to run the handlers, ``sys.exit(code)`` instead."""
    run_handlers = getattr(atexit, "_run_exitfuncs", None)
    if run_handlers is None or threading.active_count() > 1:
        sys.exit(code)
    run_handlers()
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except (OSError, ValueError):  # a closed pipe (lxt-fx … | head) or stream: nothing more to write
            code = code or 1
    os._exit(code)
