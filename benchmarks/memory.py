"""Memory of AttnLRP with gradient checkpointing inside the rewritten graph.

1. Bytes saved for backward (exact, machine-independent: ``saved_tensors_hooks`` + checkpoint boundaries,
   parameters excluded) for LLaMA configs with 4, 16 and 64 layers (hidden 128, L = 512), checkpoint modes
   None / "layer" / "sqrt", and the growth factor when the layer count goes ×4.
2. Peak RSS of SmolLM2-135M at L = 1024 per mode (each in a fresh subprocess).
3. Long context: SmolLM2 at L = 2048 and 4096 with "sqrt": seconds and peak RSS.
4. Memory as a user sees it (``--rss``): a random LLaMA (eager, hidden 128, L = 1024) explained once per fresh
   process per mode — plain gradient, AttnLRP, AttnLRP + "layer", AttnLRP + "sqrt" — with glibc's allocator
   pinned (``MALLOC_MMAP_THRESHOLD_=65536``: unpinned, the same explanation peaks anywhere between +430 and
   +1100 MB from run to run). The child warms up (capture + rewrite + one short call), resets its peak
   (``/proc/self/clear_refs`` ← 5; ``ru_maxrss`` after the warm-up where that is not allowed), and reports the
   peak (``VmHWM``) above the RSS right before the call. On CUDA (``--device cuda``) it reports
   ``torch.cuda.max_memory_allocated`` above what was allocated before the call.

    python benchmarks/memory.py [--quick] [--skip-smollm2] [--rss] [--rss-only] [--device cuda]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # overhead.plain_ixg: the same baseline
import lxt_fx  # noqa: E402
from lxt_fx.checkpoint import saved_activation_bytes  # noqa: E402
from lxt_fx.session import rewritten_graph  # noqa: E402

MODES = (None, "layer", "sqrt")


def llama_saved_bytes(layers: int, length: int, hidden: int = 128) -> dict[str | None, int]:
    import transformers as tf

    cfg = tf.LlamaConfig(vocab_size=1024, hidden_size=hidden, intermediate_size=hidden * 2,
                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=max(2048, length), attn_implementation="sdpa")
    torch.manual_seed(0)
    model = tf.LlamaForCausalLM(cfg).eval()
    emb = model.get_input_embeddings()(torch.randint(0, 1024, (1, length))).detach().requires_grad_(True)
    graph = rewritten_graph(model, lxt_fx.attnlrp, {"inputs_embeds": emb}, {})
    params = list(model.parameters())
    result = {}
    for mode in MODES:
        def run(mode=mode):
            out = graph({"inputs_embeds": emb}, mode)
            seg = graph.segmented(mode)
            return out, (list(seg.boundary) if seg is not None else [])
        result[mode] = saved_activation_bytes(run, exclude=params)
    return result


def smollm2_child(length: int, mode: str | None) -> None:
    """Runs in a subprocess: load, explain once at ``length`` with ``mode``; print JSON."""
    from lxt_fx.models import load

    model, _ = load("smollm2")
    ids = torch.randint(0, model.config.vocab_size, (1, length), generator=torch.Generator().manual_seed(0))
    lxt_fx.explain(model, ids[:, :16], checkpoint=mode)  # capture + rewrite once
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    att = lxt_fx.explain(model, ids, checkpoint=mode)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"seconds": seconds, "peak_rss_mib": peak / 1024, "rss_before_mib": base / 1024,
                      "finite": bool(torch.isfinite(att.relevance).all())}))


RSS_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536"}  # pinned: mmap for every block ≥ 64 KiB, returned when freed
RSS_ROWS = ((16, "plain"), (16, None), (16, "layer"), (16, "sqrt"), (64, "plain"), (64, None), (64, "layer"),
            (64, "sqrt"))


def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak() -> bool:
    """Reset this process's VmHWM to its current RSS (Linux ≥ 4.0); False where not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def rss_child(layers: int, length: int, mode: str, device: str, hidden: int = 128) -> None:
    """Runs in a fresh subprocess: one explanation (or plain gradient) of a random LLaMA; prints JSON."""
    import transformers as tf
    from overhead import plain_ixg

    dev = torch.device(device)
    cfg = tf.LlamaConfig(vocab_size=1024, hidden_size=hidden, intermediate_size=hidden * 2,
                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=max(2048, length), attn_implementation="eager")
    torch.manual_seed(0)
    model = tf.LlamaForCausalLM(cfg).eval().to(dev)
    ids = torch.randint(0, 1024, (1, length), generator=torch.Generator().manual_seed(0)).to(dev)
    checkpoint = None if mode == "None" else mode

    def call(x: torch.Tensor) -> None:
        if mode == "plain":
            plain_ixg(model, x, torch.ones_like(x), 0)
        else:
            lxt_fx.explain(model, x, target=0, checkpoint=checkpoint)

    call(ids[:, :32])  # warm-up: capture, rewrite, allocator and thread pools
    call(ids[:, :32])
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        before = torch.cuda.memory_allocated(dev)
    reset = _reset_peak()
    base = _status_kib("VmRSS") if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    call(ids)
    seconds = time.perf_counter() - start
    peak = _status_kib("VmHWM") if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out = {"seconds": seconds, "peak_above_mib": (peak - base) / 1024, "base_mib": base / 1024,
           "counter": "VmHWM after clear_refs" if reset else "ru_maxrss after warm-up"}
    if dev.type == "cuda":
        out["cuda_peak_above_mib"] = (torch.cuda.max_memory_allocated(dev) - before) / 2**20
    print(json.dumps(out))


def run_rss(layers: int, length: int, mode: str | None, device: str) -> dict:
    """One :func:`rss_child` in a fresh process with the allocator pinned."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", **RSS_ENV}
    out = subprocess.run([sys.executable, __file__, "--rss-child", str(layers), str(length), str(mode), device],
                         capture_output=True, text=True, env=env, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def rss_table(length: int, device: str, rows=RSS_ROWS) -> None:
    print(f"\n## Peak memory of one call, fresh process per row (LLaMA eager, hidden 128, L = {length}, "
          f"{device}; MALLOC_MMAP_THRESHOLD_=65536)\n")
    cuda = device.startswith("cuda")
    print("| layers | mode | seconds | peak RSS above baseline MB | baseline MB |"
          + (" CUDA peak above MiB |" if cuda else "") + "\n|---:|---|---:|---:|---:|" + ("---:|" if cuda else ""))
    for layers, mode in rows:
        r = run_rss(layers, length, mode, device)
        name = "plain gradient" if mode == "plain" else f"AttnLRP, checkpoint={mode}"
        extra = f" {r['cuda_peak_above_mib']:.0f} |" if cuda else ""
        print(f"| {layers} | {name} | {r['seconds']:.1f} | +{r['peak_above_mib'] * 2**20 / 1e6:.0f} | "
              f"{r['base_mib'] * 2**20 / 1e6:.0f} |{extra}", flush=True)


def run_child(length: int, mode: str | None) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", str(length), str(mode)], capture_output=True,
                         text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="4 and 16 layers at L = 128 only")
    parser.add_argument("--skip-smollm2", action="store_true")
    parser.add_argument("--rss", action="store_true", help="also the fresh-process peak RSS table (section 4)")
    parser.add_argument("--rss-only", action="store_true", help="only section 4")
    parser.add_argument("--rss-length", type=int, default=1024)
    parser.add_argument("--rss-layers", type=int, nargs="+", default=None, help="default 16 64")
    parser.add_argument("--rss-modes", nargs="+", default=None, help="of plain None layer sqrt (default all)")
    parser.add_argument("--device", default="cpu", help="cpu, or cuda for torch.cuda.max_memory_allocated too")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--rss-child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rss_child:
        layers_, length_, mode_, device_ = args.rss_child
        rss_child(int(layers_), int(length_), mode_, device_)
        return
    if args.rss_only:
        rows = [r for r in RSS_ROWS if (args.rss_layers is None or r[0] in args.rss_layers)
                and (args.rss_modes is None or str(r[1]) in args.rss_modes)]
        rss_table(args.rss_length, args.device, rows)
        return
    if args.child:
        smollm2_child(int(args.child[0]), None if args.child[1] == "None" else args.child[1])
        return

    layers, length = ((4, 16), 128) if args.quick else ((4, 16, 64), 512)
    print(f"## Bytes saved for backward, LLaMA hidden 128, L = {length} (MiB)\n")
    print("Saved = kept from forward to backward: the segment boundaries plus the last segment's activations\n"
          "(the last segment is not checkpointed). Backward frees those before it recomputes an earlier segment\n"
          "of the same size, so the saved bytes are also the peak of activation memory, up to one block.\n")
    print("| layers | blocks per segment (sqrt) | none | layer | sqrt |\n|---:|---:|---:|---:|---:|")
    table = {}
    for n in layers:
        table[n] = llama_saved_bytes(n, length)
        row = " | ".join(f"{table[n][m] / 2**20:.1f}" for m in MODES)
        print(f"| {n} | {math.ceil(math.sqrt(n))} | {row} |", flush=True)
    print("\ngrowth when layers ×4:")
    for small, big in zip(layers, layers[1:], strict=False):
        growth = " | ".join(f"{m or 'none'} ×{table[big][m] / table[small][m]:.2f}" for m in MODES)
        print(f"- {small} → {big}: {growth}")
    if args.rss:
        rss_table(args.rss_length, args.device)
    if args.skip_smollm2 or args.quick:
        return
    print("\n## SmolLM2-135M, one explanation (fresh process per row)\n")
    print("| L | checkpoint | seconds | peak RSS MiB |\n|---:|---|---:|---:|")
    for length_, mode in [(1024, None), (1024, "layer"), (1024, "sqrt"), (2048, "sqrt"), (4096, "sqrt")]:
        r = run_child(length_, mode)
        print(f"| {length_} | {mode} | {r['seconds']:.1f} | {r['peak_rss_mib']:.0f} |", flush=True)


if __name__ == "__main__":
    main()
