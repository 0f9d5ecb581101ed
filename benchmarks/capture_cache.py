"""Capture from the disk cache vs a fresh export, each in its own process, on the real SmolLM2-135M.

    python benchmarks/capture_cache.py [--repeats 2]

Each repeat: process A starts with an empty cache folder (a fresh ``torch.export``, then the graph is stored),
process B finds the stored graph. Both explain the same prompt; the relevance must be identical. Prints the
capture seconds (export vs read-and-bind), the store seconds and the ratio. Timings on a shared CPU are noisy:
read the ratio of each repeat (both processes run back to back).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

PROMPT = "The capital of France is"


def child(out: str) -> None:
    import torch

    import lxt_fx
    from lxt_fx.models import load
    from lxt_fx.tracing import capture, disk_cache
    from lxt_fx.tracing.capture import _Entry

    torch.set_num_threads(2)
    model, tok = load("smollm2")
    enc = tok(PROMPT, return_tensors="pt")
    emb = model.get_input_embeddings()(enc.input_ids).detach()
    tensors = {"inputs_embeds": emb, "attention_mask": enc.attention_mask}
    start = time.perf_counter()
    captured = capture(model, tensors)
    total = time.perf_counter() - start
    store = 0.0
    if captured.source == "export":  # capture() stored it already; time one more store of the same graph
        start = time.perf_counter()
        disk_cache.store(_Entry(model, {"use_cache": False}),
                         disk_cache.cache_key(model, repr(captured.signature.key())), captured.module(),
                         captured.output_class, captured.output_keys)
        store = time.perf_counter() - start
    att = lxt_fx.explain(model, PROMPT, tokenizer=tok)
    json.dump({"source": captured.source, "seconds": captured.seconds, "capture_call": total, "store": store,
               "relevance": att.relevance.tolist()}, open(out, "w"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child)
        return
    print("| repeat | fresh export (s) | store (s) | from disk (s) | capture() call from disk (s) | ratio | relevance |")
    print("|---:|---:|---:|---:|---:|---:|---|")
    for r in range(args.repeats):
        with tempfile.TemporaryDirectory() as folder:
            env = dict(os.environ, LXT_FX_CACHE=os.path.join(folder, "cache"))
            results = []
            for name in ("a", "b"):
                out = os.path.join(folder, f"{name}.json")
                subprocess.run([sys.executable, __file__, "--child", out], env=env, check=True)
                results.append(json.load(open(out)))
            a, b = results
            assert (a["source"], b["source"]) == ("export", "disk"), (a["source"], b["source"])
            same = "identical" if a["relevance"] == b["relevance"] else "DIFFERENT"
            print(f"| {r + 1} | {a['seconds']:.2f} | {a['store']:.2f} | {b['seconds']:.3f} | {b['capture_call']:.3f} "
                  f"| {b['capture_call'] / a['seconds']:.3f} | {same} |", flush=True)


if __name__ == "__main__":
    main()
