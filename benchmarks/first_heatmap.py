"""Time to the first heatmap, as a new user feels it: every row is a fresh Python process.

    python benchmarks/first_heatmap.py                       # smollm2, gemma3-270m (when installed), 1b
    python benchmarks/first_heatmap.py --models smollm2 --threads 1
    python benchmarks/first_heatmap.py --models tiny --threads 1      # seconds: the smoke run

Per model, against one capture/model cache folder (``$LXT_FX_CACHE``) that starts empty:

- **cold**: a fresh process with the empty folder — ``import lxt_fx``; ``lxt_fx.models.load`` (for a built-in
  model: dequantize the GGUF, build the tokenizer, store both in the model cache); the first ``explain``
  (capture + rewrite + one backward; the capture is stored in the capture cache) and a later one.
- **warm**: a second fresh process on the now-filled folder — the same steps; the model comes from the model
  cache and the capture from the capture cache.
- **CLI, warm**: ``lxt-fx explain --model NAME --prompt PROMPT`` (``python -m lxt_fx.cli``), wall seconds of the
  whole process, folder warm.

"import" is ``import lxt_fx`` after the interpreter started; "process" is the child's wall time from spawn
to exit, measured outside it, and "process CPU" its user + system CPU seconds (on a shared machine, the
closer of the two to what an idle one gives). ``1b`` is a random-weight LLaMA shaped like LLaMA-3.2-1B (16 blocks, hidden
2048, 32/8 heads, MLP 8192, vocab 128256): its "load" is building it from its config (no file, no model cache),
its prompt is 8 seeded random ids. ``tiny``: a 2-block random LLaMA (smoke runs). ``--repeats`` runs the
cold/warm pair that many times (each with a new empty folder) and reports the median per step.
Results: ``benchmarks/results/first_heatmap.md`` (``--out``).

``--cli-baseline DIR`` compares only the warm CLI of this tree with the tree in DIR (e.g. ``git worktree add
DIR main``, or ``git archive main | tar -x -C DIR``): each tree gets its own cache folder, filled by one
untimed run, then ``--repeats`` interleaved rounds (baseline, this tree, and the floor under both: a fresh
process that only imports torch, and one that imports torch and what transformers needs to load a LLaMA);
medians of wall and CPU seconds and their ratios to the baseline, with the load average
(``benchmarks/results/first_heatmap_cli.md``, ``--out``).

    python benchmarks/first_heatmap.py --models smollm2 --threads 1 --cli-baseline /tmp/main --repeats 7
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "The capital of France is"
STEPS = ("import", "load", "capture", "rewrite", "first explain", "later explain", "process", "process CPU")


def child(name: str, threads: int) -> None:
    """One row: the steps' seconds as one JSON line on stdout."""
    start = time.perf_counter()
    import torch

    import lxt_fx

    seconds: dict[str, float] = {"import": time.perf_counter() - start}
    torch.set_num_threads(threads)
    start = time.perf_counter()
    if name in ("1b", "tiny"):
        import transformers as tf

        shape = (dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                      num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=True) if name == "1b" else
                 dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=256))
        torch.manual_seed(0)
        model = tf.LlamaForCausalLM(tf.LlamaConfig(**shape)).eval()
        tokenizer = None
        inputs: Any = torch.randint(0, shape["vocab_size"], (1, 8), generator=torch.Generator().manual_seed(0))
    else:
        from lxt_fx import models

        model, tokenizer = models.load(name)
        inputs = PROMPT
    seconds["load"] = time.perf_counter() - start
    start = time.perf_counter()
    att = lxt_fx.explain(model, inputs, tokenizer=tokenizer)
    seconds["first explain"] = time.perf_counter() - start
    seconds["capture"], seconds["rewrite"] = att.report.capture_seconds, att.report.rewrite_seconds
    start = time.perf_counter()
    lxt_fx.explain(model, inputs, tokenizer=tokenizer)
    seconds["later explain"] = time.perf_counter() - start
    print(json.dumps(seconds), flush=True)


def _env(folder: Path, threads: int) -> dict[str, str]:
    return {**os.environ, "LXT_FX_CACHE": str(folder), "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_child(name: str, folder: Path, threads: int) -> dict[str, float]:
    """A fresh process for one row; its steps plus its whole wall time ("process") and CPU time."""
    cpu, start = _cpu(), time.perf_counter()
    done = subprocess.run([sys.executable, __file__, "--child", name, "--threads", str(threads)],
                          env=_env(folder, threads), capture_output=True, text=True, cwd=ROOT)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"row {name} failed:\n{done.stderr[-3000:]}")
    row = json.loads([line for line in done.stdout.splitlines() if line.startswith("{")][-1])
    row["process"], row["process CPU"] = wall, _cpu() - cpu
    return row


def run_cli(name: str, folder: Path, threads: int, root: Path = ROOT) -> tuple[float, float]:
    """(wall, CPU) seconds of ``lxt-fx explain --model NAME --prompt PROMPT`` in a fresh process, with the
    ``lxt_fx`` of the tree ``root``."""
    cpu, start = _cpu(), time.perf_counter()
    env = {**_env(folder, threads), "PYTHONPATH": os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, "-m", "lxt_fx.cli", "explain", "--model", name, "--prompt", PROMPT,
                           "--threads", str(threads)], env=env, capture_output=True, text=True, cwd=root)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"lxt-fx explain --model {name} failed:\n{done.stderr[-3000:]}")
    return wall, _cpu() - cpu


def measure(name: str, threads: int, repeats: int) -> dict[str, Any]:
    """Median per step of the cold and the warm row (and the warm CLI for built-in models)."""
    cold: list[dict[str, float]] = []
    warm: list[dict[str, float]] = []
    cli: list[tuple[float, float]] = []
    for _ in range(repeats):
        with tempfile.TemporaryDirectory(prefix="lxt-fx-first-heatmap-") as tmp:
            cold.append(run_child(name, Path(tmp), threads))
            warm.append(run_child(name, Path(tmp), threads))
            if name not in ("1b", "tiny"):
                cli.append(run_cli(name, Path(tmp), threads))
    med = {kind: {s: statistics.median(r[s] for r in rows) for s in STEPS} for kind, rows in
           (("cold", cold), ("warm", warm))}
    cli_median = (statistics.median(w for w, _ in cli), statistics.median(c for _, c in cli)) if cli else None
    return {"rows": med, "cli": cli_median}


# What every warm `lxt-fx explain --model smollm2` must import before it can load the model (with the garbage
# collector off, as the lxt-fx process has it until the model is loaded): the floor under the CLI rows.
FLOORS = {
    "floor: import torch": "import torch",
    "floor: import torch, transformers (LLaMA)": "import torch; from transformers import AutoModelForCausalLM, "
                                                   "AutoTokenizer; import transformers.models.llama.modeling_llama",
}


def run_floor(code: str, threads: int) -> tuple[float, float]:
    """(wall, CPU) seconds of a fresh ``python -c CODE`` with the garbage collector off."""
    cpu, start = _cpu(), time.perf_counter()
    done = subprocess.run([sys.executable, "-c", f"import gc; gc.disable(); {code}"],
                          env=_env(Path(tempfile.gettempdir()), threads), capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{code} failed:\n{done.stderr[-3000:]}")
    return wall, _cpu() - cpu


def compare_cli(names: list[str], baseline: Path, threads: int, repeats: int, out: Path) -> None:
    """The warm CLI of the tree ``baseline`` against this tree: interleaved pairs, medians, ratios."""
    load_before = os.getloadavg()
    lines = ["# Warm `lxt-fx explain`: this tree against a baseline tree (fresh process per run)", "",
             f"Made by `benchmarks/first_heatmap.py --cli-baseline` (its docstring says how). CPU, {threads} torch "
             f"thread(s), median of {repeats} interleaved rounds after one untimed run per tree; {os.cpu_count()} "
             f"cores, load average (1, 5, 15 min) {tuple(round(x, 1) for x in load_before)} before and "
             "{after} after. Seconds.", "",
             "| model | tree | wall | CPU (user + sys) | wall ratio | CPU ratio |", "|---|---|---:|---:|---:|---:|"]
    for name in names:
        with tempfile.TemporaryDirectory(prefix="lxt-fx-cli-") as tmp:
            folders = {"baseline": Path(tmp) / "baseline", "this tree": Path(tmp) / "this"}
            roots = {"baseline": baseline, "this tree": ROOT}
            for tree in roots:  # fills each tree's model and capture caches
                run_cli(name, folders[tree], threads, roots[tree])
            got: dict[str, list[tuple[float, float]]] = {tree: [] for tree in (*roots, *FLOORS)}
            for _ in range(repeats):
                for tree in roots:
                    got[tree].append(run_cli(name, folders[tree], threads, roots[tree]))
                for floor, code in FLOORS.items():
                    got[floor].append(run_floor(code, threads))
        med = {tree: (statistics.median(w for w, _ in rows), statistics.median(c for _, c in rows))
               for tree, rows in got.items()}
        base = med["baseline"]
        for tree, (wall, cpu) in med.items():
            print(f"{name:12s} {tree:9s} warm {wall:.2f}s wall {cpu:.2f}s CPU "
                  f"(all: {', '.join(f'{w:.2f}/{c:.2f}' for w, c in got[tree])})", flush=True)
            lines.append(f"| {name} | {tree} | {wall:.2f} | {cpu:.2f} | {wall / base[0]:.2f} | {cpu / base[1]:.2f} |")
    after = tuple(round(x, 1) for x in os.getloadavg())
    lines[2] = lines[2].replace("{after}", str(after))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    print(f"wrote {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--models", nargs="+", default=["smollm2", "gemma3-270m", "1b"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--cli-baseline", type=Path, default=None, metavar="DIR",
                        help="compare only the warm CLI with the lxt-fx tree in DIR")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.threads)
        return
    results_dir = ROOT / "benchmarks" / "results"
    if args.cli_baseline is not None:
        compare_cli(args.models, args.cli_baseline.resolve(), args.threads, args.repeats,
                    args.out or results_dir / "first_heatmap_cli.md")
        return
    args.out = args.out or results_dir / "first_heatmap.md"
    sys.path.insert(0, str(ROOT))
    from lxt_fx import models

    load_before = os.getloadavg()[0]
    results = {}
    for name in args.models:
        if name in models.BUILTIN and not models.available(name):
            print(f"{name}: not installed, skipped ({models.BUILTIN[name][1]})")
            continue
        results[name] = measure(name, args.threads, args.repeats)
        for kind, row in results[name]["rows"].items():
            print(f"{name:12s} {kind:5s} " + "  ".join(f"{s} {row[s]:.2f}s" for s in STEPS), flush=True)
        if results[name]["cli"] is not None:
            print(f"{name:12s} CLI warm {results[name]['cli'][0]:.2f}s wall, {results[name]['cli'][1]:.2f}s CPU",
                  flush=True)
    lines = ["# Time to the first heatmap (fresh process per row)", "",
             f"Made by `benchmarks/first_heatmap.py` (its docstring says what each column is). CPU, "
             f"{args.threads} torch thread(s), median of {args.repeats} cold/warm pair(s); load average "
             f"{load_before:.1f} before and {os.getloadavg()[0]:.1f} after ({os.cpu_count()} cores). Seconds.", "",
             "| model | caches | " + " | ".join(STEPS) + " | CLI `lxt-fx explain` |",
             "|---|---|" + "---:|" * (len(STEPS) + 1)]
    for name, got in results.items():
        for kind, row in got["rows"].items():
            cli = f"{got['cli'][0]:.2f} ({got['cli'][1]:.2f} CPU)" if kind == "warm" and got["cli"] is not None else ""
            lines.append(f"| {name} | {kind} | " + " | ".join(f"{row[s]:.2f}" for s in STEPS) + f" | {cli} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
