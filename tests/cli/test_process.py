"""The ``lxt-fx`` process (lxt_fx.cli.process): no garbage collection until the model is loaded, then the heap
frozen and collection on; an exit that runs the ``atexit`` handlers and flushes the output but skips the
teardown — unless another thread is still alive."""

from __future__ import annotations

import gc
import subprocess
import sys
from pathlib import Path

from lxt_fx.cli import process

SCRIPT = """
import atexit, sys, threading, time
from pathlib import Path
from lxt_fx.cli.process import exit_now

folder = Path(sys.argv[1])

class Teardown:
    def __del__(self):  # runs when the interpreter tears the module down, not after os._exit
        (folder / "teardown").write_text("freed")

kept = Teardown()
atexit.register(lambda: (folder / "atexit").write_text("ran"))
if sys.argv[2] == "thread":  # a thread a normal exit waits for
    threading.Thread(target=lambda: (time.sleep(0.3), (folder / "thread").write_text("done"))).start()
sys.stdout.write("buffered, no newline")
exit_now(3)
"""


def _run(tmp_path: Path, mode: str) -> tuple[subprocess.CompletedProcess[str], set[str]]:
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path), mode], capture_output=True, text=True,
                          timeout=120)
    return done, {p.name for p in tmp_path.iterdir()}


def test_exit_now_runs_the_handlers_flushes_and_skips_the_teardown(tmp_path: Path) -> None:
    done, files = _run(tmp_path, "alone")
    assert done.returncode == 3 and done.stdout == "buffered, no newline", done.stderr
    assert files == {"atexit"}  # the handler ran; no object was freed one by one


def test_exit_now_with_another_thread_alive_exits_normally(tmp_path: Path) -> None:
    done, files = _run(tmp_path, "thread")
    assert done.returncode == 3 and done.stdout == "buffered, no newline", done.stderr
    assert files == {"atexit", "thread", "teardown"}  # the thread was waited for, the heap torn down


def test_collection_is_paused_until_resumed_and_untouched_otherwise() -> None:
    assert gc.isenabled()
    process.resume_collection()  # not paused by the process entry (a test, a program calling main): nothing
    assert gc.isenabled() and gc.get_freeze_count() == 0
    try:
        process.pause_collection()
        assert not gc.isenabled()
        cycle: list = []
        cycle.append(cycle)
        process.resume_collection()
        assert gc.isenabled() and gc.get_freeze_count() > 0  # the startup heap is frozen, collection is on
        process.resume_collection()  # once only
        assert gc.isenabled()
    finally:
        gc.enable()
        gc.unfreeze()
