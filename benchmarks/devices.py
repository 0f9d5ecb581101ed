"""A model over several devices: per-device peak memory and seconds, against the same model on one device.

Each row runs in a fresh process (so peak RSS is that row's own): a random LLaMA (eager attention, float32,
``--layers`` layers of hidden ``--hidden``) is explained once at length ``--length`` after a warm-up call,
either on one GPU, or dispatched by accelerate with its layers alternating between ``cpu`` and ``cuda:0``
(``main_device="cpu"``), each with checkpointing off and ``"sqrt"``. A row reports, for the timed call,
``torch.cuda.max_memory_allocated`` above what was allocated before it (per GPU), the process's peak RSS
(``VmHWM``, reset after the warm-up), the seconds, and the largest relevance difference to the one-device
run. Needs CUDA; on a machine without it the script says so and exits 0.

    python benchmarks/devices.py [--layers 8] [--hidden 1024] [--length 1024] [--out benchmarks/results/devices.md]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import torch

ROWS = [("one GPU", None), ("one GPU", "sqrt"), ("cpu + cuda:0", None), ("cpu + cuda:0", "sqrt")]


def _vm_hwm_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def child(placement: str, checkpoint: str | None, args: argparse.Namespace) -> dict:
    """One row, in this process: build, dispatch, warm up, time one explanation, read the peaks."""
    import accelerate
    import transformers as tf

    import lxt_fx

    cfg = tf.LlamaConfig(vocab_size=32000, hidden_size=args.hidden, intermediate_size=args.hidden * 4,
                         num_hidden_layers=args.layers, num_attention_heads=max(1, args.hidden // 64),
                         num_key_value_heads=max(1, args.hidden // 256), max_position_embeddings=args.length,
                         attn_implementation="eager")
    torch.manual_seed(0)
    model = tf.LlamaForCausalLM(cfg).eval()
    ids = torch.randint(0, cfg.vocab_size, (1, args.length), generator=torch.Generator().manual_seed(1))
    if placement == "one GPU":
        model = model.to("cuda:0")
    else:
        device_map = {"model.embed_tokens": "cpu", "model.norm": "cpu", "model.rotary_emb": "cpu", "lm_head": "cpu",
                      **{f"model.layers.{i}": 0 if i % 2 else "cpu" for i in range(args.layers)}}
        model = accelerate.dispatch_model(model, device_map, main_device="cpu")
    lxt_fx.explain(model, ids[:, :16], checkpoint=checkpoint)  # capture, rewrite, warm-up
    torch.cuda.synchronize()
    with open("/proc/self/clear_refs", "w") as f:  # resets VmHWM to the current RSS
        f.write("5")
    base = torch.cuda.memory_allocated(0)
    torch.cuda.reset_peak_memory_stats(0)
    start = time.perf_counter()
    att = lxt_fx.explain(model, ids, checkpoint=checkpoint)
    torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    return {"placement": placement, "checkpoint": checkpoint or "off", "seconds": seconds,
            "cuda_peak_mib": (torch.cuda.max_memory_allocated(0) - base) / 2**20,
            "cuda_weights_mib": base / 2**20, "rss_peak_mib": _vm_hwm_mib(),
            "relevance": att.relevance.float().cpu().flatten().tolist()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--length", type=int, default=1024)
    parser.add_argument("--out", default="benchmarks/results/devices.md")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        placement, checkpoint = args.child
        print(json.dumps(child(placement, None if checkpoint == "off" else checkpoint, args)))
        return
    if not torch.cuda.is_available():
        print("devices.py: no CUDA device here; run it on a machine with a GPU")
        return
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    rows = []
    for placement, checkpoint in ROWS:
        cmd = [sys.executable, __file__, "--layers", str(args.layers), "--hidden", str(args.hidden),
               "--length", str(args.length), "--child", placement, checkpoint or "off"]
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
        if out.returncode:
            print(out.stderr[-3000:])
            raise SystemExit(f"row {placement} / {checkpoint}: exit {out.returncode}")
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    reference = torch.tensor(rows[0]["relevance"])
    lines = [f"# A model over several devices ({torch.cuda.get_device_name(0)})", "",
             f"Random LLaMA, {args.layers} layers, hidden {args.hidden}, float32, eager attention, L = {args.length}; "
             f"torch {torch.__version__}. `cpu + cuda:0`: accelerate's `dispatch_model` with the layers alternating "
             "between the CPU and the GPU (`main_device=\"cpu\"`). Each row in a fresh process; one timed call after "
             "a warm-up. CUDA peak: `torch.cuda.max_memory_allocated` above the allocation before the call (weights "
             "excluded; the weights column is what was allocated before it). RSS peak: the process's `VmHWM` "
             "after a reset following the warm-up (weights on the CPU included). max |ΔR|: against the first row.",
             "", "| placement | checkpoint | seconds | CUDA weights MiB | CUDA peak MiB | RSS peak MiB | max \\|ΔR\\| |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for row in rows:
        diff = (torch.tensor(row["relevance"]) - reference).abs().max().item()
        lines.append(f"| {row['placement']} | {row['checkpoint']} | {row['seconds']:.3f} | "
                     f"{row['cuda_weights_mib']:.0f} | {row['cuda_peak_mib']:.0f} | {row['rss_peak_mib']:.0f} | "
                     f"{diff:.2e} |")
    text = "\n".join(lines) + "\n"
    print(text)
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
        f.write(text)


if __name__ == "__main__":
    main()
