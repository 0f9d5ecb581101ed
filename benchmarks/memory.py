"""Memory of AttnLRP with gradient checkpointing inside the rewritten graph.

1. Bytes saved for backward (exact, machine-independent: ``saved_tensors_hooks`` + checkpoint boundaries,
   parameters excluded) for LLaMA configs with 4, 16 and 64 layers (hidden 128, L = 512), checkpoint modes
   None / "layer" / "sqrt", and the growth factor when the layer count goes ×4.
2. Peak RSS of SmolLM2-135M at L = 1024 per mode (each in a fresh subprocess).
3. Long context: SmolLM2 at L = 2048 and 4096 with "sqrt": seconds and peak RSS.

    python benchmarks/memory.py [--quick] [--skip-smollm2]
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

import lxt_fx
from lxt_fx.checkpoint import saved_activation_bytes
from lxt_fx.session import rewritten_graph

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


def run_child(length: int, mode: str | None) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", str(length), str(mode)], capture_output=True,
                         text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="4 and 16 layers at L = 128 only")
    parser.add_argument("--skip-smollm2", action="store_true")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
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
    if args.skip_smollm2 or args.quick:
        return
    print("\n## SmolLM2-135M, one explanation (fresh process per row)\n")
    print("| L | checkpoint | seconds | peak RSS MiB |\n|---:|---|---:|---:|")
    for length_, mode in [(1024, None), (1024, "layer"), (1024, "sqrt"), (2048, "sqrt"), (4096, "sqrt")]:
        r = run_child(length_, mode)
        print(f"| {length_} | {mode} | {r['seconds']:.1f} | {r['peak_rss_mib']:.0f} |", flush=True)


if __name__ == "__main__":
    main()
