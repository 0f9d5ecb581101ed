"""Rebuild the shipped ground-truth models: build → train → verify → save, from fixed seeds.

    python -m lxt_fx.evaluate.groundtruth.build                 # every registered task
    python -m lxt_fx.evaluate.groundtruth.build recall-llama    # some of them

Each task's folder under ``groundtruth/weights/<task>/`` receives the model (``config.json``,
``model.safetensors``) and ``training.json``: steps, seconds, held-out accuracy and the evidence
verification (:func:`~.verify.verify_evidence` on 512 held-out rows). A task whose evidence fails
verification is still saved, and the command exits non-zero naming it.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

import torch

from .catalog import get, save, tasks
from .verify import verify_evidence

VERIFY_SEED = 2_000_003
VERIFY_ROWS = 512


def build_task(name: str, seed: int = 0, log: Any = print) -> dict[str, Any]:
    """Build, train, verify and save one task; return what ``training.json`` records."""
    task = get(name)
    model = task.build(seed)
    trained = task.train(model, seed=seed, log=log)
    evidence = verify_evidence(model, task, task.sample(VERIFY_ROWS, seed=VERIFY_SEED))
    save(model, task)
    size = sum(f.stat().st_size for f in task.weights_dir.iterdir() if f.is_file())
    record = {"task": name, "family": task.family, "seed": seed, **trained, "evidence": evidence.as_dict(),
              "parameters": sum(p.numel() for p in model.parameters()), "bytes": size,
              "torch_threads": torch.get_num_threads()}
    (task.weights_dir / "training.json").write_text(json.dumps(record, indent=2) + "\n")
    return record


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", help="tasks to rebuild (default: all registered)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    names = args.names or tasks()
    failed = []
    for name in names:
        record = build_task(name, args.seed)
        ev = record["evidence"]
        print(f"{name}: accuracy {record['accuracy']:.3f} in {record['seconds']:.0f} s ({record['steps']} steps), "
              f"evidence GT {ev['gt_rate']:.3f} / random {ev['random_rate']:.3f}, {record['bytes'] / 1e6:.2f} MB",
              flush=True)
        if not ev["verified"] or record["accuracy"] < 0.95:
            failed.append(name)
    if failed:
        print(f"not verified (accuracy < 0.95 or evidence rates outside 0.95 / 0.05): {', '.join(failed)}",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
