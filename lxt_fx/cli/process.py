"""The ``lxt-fx`` process: two costs of the Python interpreter that a short-lived command line process skips.

A run of ``lxt-fx`` builds a large heap that lives until the process ends: torch, transformers, the model and
its captured graph — millions of objects. The interpreter spends seconds on that heap that buy nothing here:

* **scanning it for garbage while it is built.** The cyclic garbage collector scans the whole old generation
  again each time it has grown by a quarter, and importing torch and transformers grows it many times over.
  :func:`pause_collection` stops the collector at the start; :func:`resume_collection`, once the model is
  loaded, freezes the heap built so far (``gc.freeze``: never scanned again, the few cycles it holds stay)
  and collects again at the usual thresholds, so a long run (a dataset, an index) does not grow unbounded.
* **freeing it object by object at exit.** :func:`exit_now` runs the ``atexit`` handlers (logging flushes,
  temporary folders, ``weakref.finalize``), flushes standard output and error, and ends the process with
  ``os._exit`` — the operating system takes the memory back at once. When another thread is still alive
  (which a normal exit would wait for), it exits normally instead.

Only :func:`lxt_fx.cli.entry.run`, the process entry, pauses and exits so: under :func:`lxt_fx.cli.main`
(what tests and other programs call) :func:`resume_collection` does nothing and nothing changes.
"""

from __future__ import annotations

import atexit
import gc
import os
import sys
import threading
from typing import NoReturn

_paused = False


def pause_collection() -> None:
    """Stop the cyclic garbage collector until :func:`resume_collection` (when it runs at all)."""
    global _paused
    if gc.isenabled():
        gc.disable()
        _paused = True


def resume_collection() -> None:
    """The startup is over (the model is loaded): when :func:`pause_collection` stopped the collector, freeze
    the heap built so far and collect again (see the module docstring); else nothing."""
    global _paused
    if _paused:
        gc.freeze()
        gc.enable()
        _paused = False


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
