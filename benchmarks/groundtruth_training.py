"""What training a ground-truth model costs, measured so that the machine's load does not enter the figure.

    python benchmarks/groundtruth_training.py [TASK ...] [--short 20] [--long 60] [--threads 1]

For each task the model is built from its seed and trained twice from scratch with the task's own ``train``,
once for ``--short`` and once for ``--long`` steps (the learning-rate schedule is the task's, shortened; the
early stop on accuracy is off). The process's CPU time (``time.process_time``: user + system, which other
processes on the machine do not add to) of the two runs gives the CPU seconds per step, ``(long − short) /
(long − short steps)``, and the fixed cost (the optimizer's set-up and the held-out accuracy at the end). With one torch thread the CPU
time is the wall time the same work takes on an idle core, so

    estimated training time = per-step × the steps the shipped model trained (its ``training.json``) + fixed

is the single-thread wall time of ``make groundtruth-models`` for that task on an idle machine. The wall time
of each run and the load average are printed beside it, so that the two can be compared.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lxt_fx.evaluate import groundtruth as gt  # noqa: E402
from lxt_fx.evaluate.groundtruth.text import TextTask  # noqa: E402


def _train(task: gt.Task, steps: int) -> tuple[float, float]:
    """(CPU seconds, wall seconds) of building and training ``task``'s model for ``steps`` steps."""
    model = task.build(0)
    kwargs: dict[str, Any] = {"seed": 0, "log": lambda *a, **k: None}
    if isinstance(task, TextTask):
        task.max_steps, task.target_accuracy = steps, 2.0      # no early stop: exactly ``steps`` steps
    elif hasattr(task, "steps"):
        task.steps = steps
    else:
        kwargs["steps"] = steps
    cpu, wall = time.process_time(), time.perf_counter()
    task.train(model, **kwargs)
    return time.process_time() - cpu, time.perf_counter() - wall


def measure(name: str, short: int, long: int) -> dict[str, float]:
    """Per-step and fixed CPU seconds of ``name``'s training, and the estimate for the shipped step count."""
    record = json.loads((gt.get(name).weights_dir / "training.json").read_text())
    cpu_short, wall_short = _train(gt.get(name), short)
    cpu_long, wall_long = _train(gt.get(name), long)
    per_step = (cpu_long - cpu_short) / (long - short)
    fixed = max(cpu_short - per_step * short, 0.0)
    steps = float(record["steps"])
    return {"steps": steps, "per_step": per_step, "fixed": fixed, "estimate": per_step * steps + fixed,
            "recorded_wall": float(record["seconds"]), "wall_per_step": (wall_long - wall_short) / (long - short)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("tasks", nargs="*", help="default: every task")
    p.add_argument("--short", type=int, default=20)
    p.add_argument("--long", type=int, default=60)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"torch threads {args.threads}; load average at start {os.getloadavg()[0]:.1f}\n")
    print("| task | steps | CPU s / step | fixed CPU s | estimated training time | wall s / step here | "
          "recorded wall (under load) |\n|---|---:|---:|---:|---:|---:|---:|", flush=True)
    for name in args.tasks or gt.tasks():
        r = measure(name, args.short, args.long)
        print(f"| {name} | {r['steps']:.0f} | {r['per_step']:.3f} | {r['fixed']:.1f} | {r['estimate']:.0f} s | "
              f"{r['wall_per_step']:.3f} | {r['recorded_wall']:.0f} s |", flush=True)
    print(f"\nload average at the end {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
