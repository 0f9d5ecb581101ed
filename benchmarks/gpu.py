"""One prepared device run: plain gradient vs AttnLRP vs AttnLRP + checkpoint="sqrt", seconds and memory.

    python benchmarks/gpu.py                              # CUDA: SmolLM2 in bf16 with SDPA, L = 1024 and 4096
    python benchmarks/gpu.py --device cpu --model tiny --lengths 64 --repeats 1   # the CPU smoke run

Per (model, L): the three methods are interleaved ``--repeats`` times and the median seconds reported, with
the ratio to the plain gradient measured in the same run. "Plain gradient" is one forward + one backward
of the untouched model to the input embeddings (Input×Gradient); AttnLRP is ``lxt_fx.explain``, whose
capture + rewrite happen once before timing (reported separately). Memory on CUDA is
``torch.cuda.max_memory_allocated`` during one call minus what was allocated before it (weights and inputs
excluded); on CPU there is no resettable peak counter, so the column says n/a (``benchmarks/memory.py``
counts the saved bytes exactly). A length that runs out of memory is a row that says so.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from overhead import plain_ixg, random_llama  # noqa: E402  (the same baseline as the CPU benchmark)

import lxt_fx  # noqa: E402

METHODS = ("plain gradient", "AttnLRP", "AttnLRP + sqrt")


def load(name: str, device: torch.device, dtype: torch.dtype) -> nn.Module:
    if name == "tiny":
        model = random_llama("sdpa", hidden=64, layers=4, heads=4, intermediate=172, vocab=512)
    else:
        from transformers.utils import logging as hf_logging

        from lxt_fx import models

        hf_logging.disable_progress_bar()
        model, _ = models.load(name)
        model.config._attn_implementation = "sdpa"
    return model.to(device=device, dtype=dtype).eval()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_once(fn: Callable[[], object], device: torch.device) -> tuple[float, float | None]:
    """(seconds, peak MiB above the memory allocated before the call; None off CUDA)."""
    if device.type == "cuda":
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
    start = time.perf_counter()
    fn()
    sync(device)
    seconds = time.perf_counter() - start
    if device.type != "cuda":
        return seconds, None
    return seconds, (torch.cuda.max_memory_allocated(device) - before) / 2**20


def measure(model: nn.Module, length: int, repeats: int, device: torch.device) -> dict[str, tuple[float, float | None]]:
    vocab = model.get_input_embeddings().num_embeddings
    ids = torch.randint(0, vocab, (1, length), generator=torch.Generator().manual_seed(length)).to(device)
    mask = torch.ones_like(ids)
    methods = {
        "plain gradient": partial(plain_ixg, model, ids, mask, 0),
        "AttnLRP": partial(lxt_fx.explain, model, ids, target=0),
        "AttnLRP + sqrt": partial(lxt_fx.explain, model, ids, target=0, checkpoint="sqrt"),
    }
    for fn in methods.values():  # warm-up; builds the checkpointed graph once
        fn()
    seconds: dict[str, list[float]] = {k: [] for k in methods}
    peaks: dict[str, list[float]] = {k: [] for k in methods}
    order = list(methods.items())
    for r in range(repeats):
        for name, fn in order[r % len(order):] + order[: r % len(order)]:  # rotate who goes first
            s, peak = run_once(fn, device)
            seconds[name].append(s)
            if peak is not None:
                peaks[name].append(peak)
    return {k: (statistics.median(seconds[k]), max(peaks[k]) if peaks[k] else None) for k in methods}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2", help="smollm2 (default), tiny (random LLaMA-4L), or a dir")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default=None, help="bfloat16 (default on CUDA) or float32 (default on CPU)")
    parser.add_argument("--lengths", type=int, nargs="+", default=None, help="default: 1024 4096 (CUDA), 128 (CPU)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype or ("bfloat16" if device.type == "cuda" else "float32"))
    lengths = args.lengths or ([1024, 4096] if device.type == "cuda" else [128])
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"torch {torch.__version__}; {name}; {args.model} in {dtype}; {args.repeats} interleaved repeats")

    start = time.perf_counter()
    model = load(args.model, device, dtype)
    print(f"loaded in {time.perf_counter() - start:.1f} s", flush=True)
    start = time.perf_counter()
    att = lxt_fx.explain(model, torch.tensor([[1, 2, 3, 4]], device=device), target=0)
    print(f"capture + rewrite + first call: {time.perf_counter() - start:.1f} s "
          f"({len(att.report.rewritten)} nodes rewritten, {len(att.report.unhandled)} unhandled)", flush=True)

    print("\n| model | dtype | L | method | seconds | ratio | peak MiB (above weights) |\n|---|---|---:|---|---:|---:|---:|")
    for length in lengths:
        try:
            got = measure(model, length, args.repeats, device)
        except torch.OutOfMemoryError as exc:
            print(f"| {args.model} | {dtype} | {length} | all | out of memory | | {str(exc).splitlines()[0][:60]} |")
            torch.cuda.empty_cache()
            continue
        base = got["plain gradient"][0]
        for method in METHODS:
            seconds, peak = got[method]
            peak_text = "n/a" if peak is None else f"{peak:.0f}"
            print(f"| {args.model} | {str(dtype).removeprefix('torch.')} | {length} | {method} | {seconds:.3f} | "
                  f"{seconds / base:.2f} | {peak_text} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
