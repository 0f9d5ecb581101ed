"""Dataset attribution on 1 and 2 CPU processes, with one rank killed mid-way and the run started again.

    python benchmarks/dataset.py [--rows 240] [--batch-size 4] [--shard-size 8]

A random-weight LLaMA (2 blocks, hidden 64) and a word-level tokenizer are saved to a temporary folder; the
data file holds ``--rows`` good rows of 4–24 words and four bad rows. Steps (each through the CLI, the ranks
under ``torchrun --nproc-per-node 2``, gloo, one thread each; the capture cache in a temporary folder):

1. one process over the whole file (the reference);
2. two processes; as soon as rank 1 has renamed its third shard it is killed with SIGKILL (torchrun then stops
   rank 0); checked: no index yet, nothing but whole shards left;
3. the same command again: it resumes; checked: every row exactly once in the index, no partial shard,
   relevance equal to the one-process run (max |Δ| ≤ 1e-6), no row of a step-2 shard explained again;
4. throughput 1 → 2 processes: ``--repeats`` interleaved pairs of runs on fresh folders (1 process, then 2),
   medians of the attribution phase as printed by rank 0 (model loading and process start are outside it;
   the capture comes from the disk cache the first run filled, so no run pays an export).

The machine is shared: throughput figures are contaminated by other work on the same cores.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
WORDS = [f"w{i}" for i in range(60)]


def build(folder: Path, rows: int) -> tuple[Path, Path]:
    import torch
    from helpers import word_tokenizer
    from transformers import AutoModelForCausalLM, LlamaConfig

    cfg = LlamaConfig(vocab_size=len(WORDS) + 2, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=64)
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(0)
    model_dir = folder / "model"
    AutoModelForCausalLM.from_config(cfg).eval().save_pretrained(model_dir)
    word_tokenizer(WORDS).save_pretrained(model_dir)
    rng = random.Random(0)
    lines = [json.dumps({"id": f"r{i}", "text": " ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 24)))})
             for i in range(rows)]
    for at, bad in ((7, '{"text": ""}'), (50, "not json"), (120, json.dumps({"text": " ".join(["w1"] * 80)})),
                    (200, "")):
        lines.insert(at, bad)
    data = folder / "rows.jsonl"
    data.write_text("\n".join(lines) + "\n")
    return model_dir, data


def command(model: Path, data: Path, out: Path, args: argparse.Namespace, ranks: int) -> list[str]:
    cli = ["-m", "lxt_fx.cli", "attribute-dataset", "--model", str(model), "--data", str(data), "--out", str(out),
           "--batch-size", str(args.batch_size), "--shard-size", str(args.shard_size), "--threads", "1"]
    if ranks == 1:
        return [sys.executable, *cli]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(ranks), *cli]


def seconds(done: subprocess.CompletedProcess[str]) -> float:
    found = re.findall(r"; ([0-9.]+) s", done.stdout + done.stderr)
    return float(found[-1])


def rank_pid(tag: str, rank: int) -> int | None:
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            env = Path(f"/proc/{entry}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"LXT_BENCH_TAG={tag}".encode() in env and f"RANK={rank}".encode() in env \
                and b"TORCHELASTIC_RUN_ID=" in b"\0".join(env) and f"LOCAL_RANK={rank}".encode() in env:
            return int(entry)
    return None


def index(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "index.jsonl").read_text().splitlines()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=240)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--shard-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    import torch

    from lxt_fx.dataset import load_relevance

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        model, data = build(folder, args.rows)
        tag = uuid.uuid4().hex
        env = {**os.environ, "OMP_NUM_THREADS": "1", "LXT_FX_BACKEND": "gloo", "LXT_FX_CACHE": str(folder / "cache"),
               "PYTHONPATH": str(ROOT), "LXT_BENCH_TAG": tag, "NO_COLOR": "1"}
        run = lambda cmd: subprocess.run(cmd, env=env, capture_output=True, text=True)  # noqa: E731

        one = run(command(model, data, folder / "one", args, 1))
        assert one.returncode == 0, one.stderr[-2000:]
        t_first = seconds(one)
        reference = {r["position"]: r for r in index(folder / "one")}
        total = len(reference)
        print(f"rows: {total} ({sum('error' in r for r in reference.values())} bad); 1 process, first run "
              f"(exports and fills the capture cache): {t_first:.1f} s")

        out = folder / "two"
        proc = subprocess.Popen(command(model, data, out, args, 2), env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        killed = None
        while proc.poll() is None:
            if len(list(out.glob("shard-*-r1.safetensors"))) >= 3 and killed is None:
                pid = rank_pid(tag, 1)
                if pid is not None:
                    os.kill(pid, signal.SIGKILL)
                    killed = time.time()
            time.sleep(0.05)
        proc.communicate()
        assert killed is not None, "rank 1 finished before it could be killed: use more rows"
        first = sorted(p.name for p in out.glob("shard-*.safetensors"))
        from lxt_fx.dataset.shards import shard_rows

        before = {r["position"] for p in out.glob("shard-*.safetensors") for r in shard_rows(p)}
        print(f"killed rank 1 (SIGKILL) after its 3rd shard; torchrun exit status {proc.returncode}; "
              f"{len(first)} whole shards ({len(before)} rows) left, index written: {(out / 'index.jsonl').exists()}, "
              f"temporary files: {[p.name for p in out.glob('.*.tmp')]}")

        again = run(command(model, data, out, args, 2))
        assert again.returncode == 0, again.stderr[-2000:]
        rows = index(out)
        positions = [r["position"] for r in rows]
        assert positions == sorted(set(positions)) == list(range(total)), "not every row exactly once"
        assert not list(out.glob(".*.tmp")) and not list(out.glob("*.tmp")), "partial shard left"
        assert set(first) <= {p.name for p in out.glob("shard-*.safetensors")}, "a finished shard was rewritten"
        worst = 0.0
        for r in rows:
            ref = reference[r["position"]]
            assert ("error" in r) == ("error" in ref) and r.get("tokens") == ref.get("tokens")
            if "error" not in r:
                d = (load_relevance(out, r) - load_relevance(folder / "one", ref)).abs().max().item()
                worst = max(worst, d)
        resumed = re.findall(r"(\d+) were done by an earlier run", again.stdout + again.stderr)
        print(f"restart: {len(rows)} rows, each exactly once ({resumed[-1] if resumed else '?'} from the killed run "
              f"kept, not redone); no partial shard; max |Δ relevance| vs 1 process = {worst:.2e}")
        assert worst <= 1e-6

        times: dict[int, list[float]] = {1: [], 2: []}
        for rep in range(args.repeats):
            for ranks in (1, 2):
                done = run(command(model, data, folder / f"t{rep}-{ranks}", args, ranks))
                assert done.returncode == 0, done.stderr[-2000:]
                times[ranks].append(seconds(done))
        t1, t2 = statistics.median(times[1]), statistics.median(times[2])
        print(f"\nruns (s): 1 process {[round(t, 1) for t in times[1]]}, 2 processes {[round(t, 1) for t in times[2]]}")
        print("| processes | seconds (attribution phase, median) | rows/s | speed-up |\n|---:|---:|---:|---:|")
        print(f"| 1 | {t1:.1f} | {total / t1:.1f} | 1.00 |")
        print(f"| 2 | {t2:.1f} | {total / t2:.1f} | {t1 / t2:.2f} |")
        print(f"(2 CPU cores shared with other work: load average {os.getloadavg()[0]:.1f} at the end)")
        del torch


if __name__ == "__main__":
    main()
