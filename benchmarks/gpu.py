"""One prepared device run: plain gradient vs AttnLRP vs AttnLRP + checkpoint="sqrt", seconds and memory.

    python benchmarks/gpu.py                              # CUDA: SmolLM2 in bf16 with SDPA, L = 1024 and 4096
    python benchmarks/gpu.py --device cpu --model tiny --lengths 64 --repeats 1   # the CPU smoke run
    python benchmarks/gpu.py --model 1b 8b moe                 # CUDA: random weights shaped like 1B / 8B / MoE,
                                                               # bf16, L = 4096, 16384, 32768
    python benchmarks/gpu.py --device cpu --model 1b moe --tiny --lengths 32 --repeats 1   # same code, tiny

Shapes (random weights, no download; ``--tiny`` keeps each shape's structure with 2 layers, hidden 64):
``1b`` LLaMA-3.2-1B (16 layers, hidden 2048, 32/8 heads, MLP 8192, vocab 128256); ``8b`` LLaMA-3-8B (32 layers,
hidden 4096, 32/8 heads, MLP 14336, vocab 128256); ``moe`` Qwen3-MoE shaped like OLMoE-1B-7B (16 layers,
hidden 2048, 16 heads, 64 experts, 8 per token, expert MLP 1024, vocab 50304).

Attention check (``--attention-check``, on by default): the relevance with SDPA restricted to the flash kernel
against the math kernel at a short length (max |Δ| / max |R|), and whether the flash kernel ran at all.

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
SHAPES = {
    "1b": dict(family="llama", layers=16, hidden=2048, heads=32, kv=8, mlp=8192, vocab=128256),
    "8b": dict(family="llama", layers=32, hidden=4096, heads=32, kv=8, mlp=14336, vocab=128256),
    "moe": dict(family="qwen3_moe", layers=16, hidden=2048, heads=16, kv=16, mlp=1024, vocab=50304, experts=64,
                top_k=8),
}
TINY = dict(layers=2, hidden=64, heads=4, mlp=96, vocab=512)  # kv heads and experts shrink in proportion


def shaped(name: str, tiny: bool, device: torch.device, dtype: torch.dtype) -> nn.Module:
    """A random-weight model shaped like ``SHAPES[name]`` (``tiny``: 2 layers, hidden 64, same structure),
    built directly on ``device`` in ``dtype``."""
    import transformers as tf

    s = dict(SHAPES[name])
    if tiny:
        s.update(TINY, kv=max(1, TINY["heads"] * s["kv"] // s["heads"]),
                 experts=min(s.get("experts", 0), 8), top_k=min(s.get("top_k", 0), 2))
    common = dict(vocab_size=s["vocab"], hidden_size=s["hidden"], num_hidden_layers=s["layers"],
                  num_attention_heads=s["heads"], num_key_value_heads=s["kv"], max_position_embeddings=40960,
                  tie_word_embeddings=False, attn_implementation="sdpa")
    if s["family"] == "llama":
        config = tf.LlamaConfig(intermediate_size=s["mlp"], rope_theta=500000.0, **common)
    else:
        config = tf.Qwen3MoeConfig(intermediate_size=s["mlp"], moe_intermediate_size=s["mlp"],
                                   num_experts=s["experts"], num_experts_per_tok=s["top_k"],
                                   head_dim=s["hidden"] // s["heads"], **common)
    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = tf.AutoModelForCausalLM.from_config(config)
    finally:
        torch.set_default_dtype(previous)
    return model.eval()


def load(name: str, device: torch.device, dtype: torch.dtype, tiny: bool = False) -> nn.Module:
    if name in SHAPES:
        return shaped(name, tiny, device, dtype)
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


OOM = "out of memory"


def _free(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()


def measure(model: nn.Module, length: int, repeats: int, device: torch.device
            ) -> dict[str, tuple[float, float | None] | str]:
    """Per method: (median seconds, peak MiB or None), or :data:`OOM` when it ran out of memory."""
    vocab = model.get_input_embeddings().num_embeddings
    ids = torch.randint(0, vocab, (1, length), generator=torch.Generator().manual_seed(length)).to(device)
    mask = torch.ones_like(ids)
    methods = {
        "plain gradient": partial(plain_ixg, model, ids, mask, 0),
        "AttnLRP": partial(lxt_fx.explain, model, ids, target=0),
        "AttnLRP + sqrt": partial(lxt_fx.explain, model, ids, target=0, checkpoint="sqrt"),
    }
    failed: set[str] = set()
    for name, fn in methods.items():  # warm-up; builds the checkpointed graph once
        try:
            fn()
        except torch.OutOfMemoryError:
            failed.add(name)
            _free(device)
    seconds: dict[str, list[float]] = {k: [] for k in methods}
    peaks: dict[str, list[float]] = {k: [] for k in methods}
    order = [(k, fn) for k, fn in methods.items() if k not in failed]
    for r in range(repeats):
        for name, fn in order[r % max(len(order), 1):] + order[: r % max(len(order), 1)]:  # rotate the first
            if name in failed:
                continue
            try:
                s, peak = run_once(fn, device)
            except torch.OutOfMemoryError:
                failed.add(name)
                _free(device)
                continue
            seconds[name].append(s)
            if peak is not None:
                peaks[name].append(peak)
    return {k: OOM if k in failed else (statistics.median(seconds[k]), max(peaks[k]) if peaks[k] else None)
            for k in methods}


def attention_check(model: nn.Module, device: torch.device, length: int = 256) -> str:
    """AttnLRP relevance with SDPA restricted to the flash kernel vs the math kernel: a line of text."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    vocab = model.get_input_embeddings().num_embeddings
    ids = torch.randint(0, vocab, (1, length), generator=torch.Generator().manual_seed(1)).to(device)
    got = {}
    for backend in (SDPBackend.MATH, SDPBackend.FLASH_ATTENTION):
        try:
            with sdpa_kernel([backend]):
                got[backend] = lxt_fx.explain(model, ids, target=0).relevance.float()
        except RuntimeError as exc:  # "No available kernel": flash does not run for this dtype/device
            return f"flash kernel did not run ({str(exc).splitlines()[0][:100]})"
    math, flash = got[SDPBackend.MATH], got[SDPBackend.FLASH_ATTENTION]
    rel = float((flash - math).abs().max() / math.abs().max().clamp_min(1e-30))
    finite = bool(torch.isfinite(flash).all())
    return (f"flash vs math SDPA kernel at L = {length}: max |Δ| / max |R| = {rel:.2e}, flash relevance "
            f"finite: {finite}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", nargs="+", default=["smollm2"],
                        help="smollm2 (default), tiny (random LLaMA-4L), 1b / 8b / moe (random, shaped), or a dir")
    parser.add_argument("--tiny", action="store_true", help="shrink the 1b / 8b / moe shapes (CPU smoke runs)")
    parser.add_argument("--no-attention-check", action="store_true")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default=None, help="bfloat16 (default on CUDA) or float32 (default on CPU)")
    parser.add_argument("--lengths", type=int, nargs="+", default=None, help="default: 1024 4096 (CUDA), 128 (CPU)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--profile", action="store_true",
                        help="after the timings, torch.profiler tables of each method at the first length")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype or ("bfloat16" if device.type == "cuda" else "float32"))
    shaped_only = all(m in SHAPES for m in args.model)
    default = [4096, 16384, 32768] if shaped_only else [1024, 4096]
    lengths = args.lengths or (default if device.type == "cuda" else [128])
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"torch {torch.__version__}; {name}; {' '.join(args.model)} in {dtype}; {args.repeats} interleaved repeats")
    for model_name in args.model:
        run_model(model_name, device, dtype, lengths, args)
    return 0


def run_model(model_name: str, device: torch.device, dtype: torch.dtype, lengths: list[int],
              args: argparse.Namespace) -> None:
    label = f"{model_name}{' (tiny)' if args.tiny and model_name in SHAPES else ''}"
    start = time.perf_counter()
    try:
        model = load(model_name, device, dtype, args.tiny)
    except torch.OutOfMemoryError:
        print(f"\n{label}: the weights do not fit: out of memory", flush=True)
        _free(device)
        return
    params = sum(p.numel() for p in model.parameters())
    print(f"\n{label}: {params / 1e9:.3f} B parameters, loaded in {time.perf_counter() - start:.1f} s", flush=True)
    start = time.perf_counter()
    att = lxt_fx.explain(model, torch.tensor([[1, 2, 3, 4]], device=device), target=0)
    print(f"capture + rewrite + first call: {time.perf_counter() - start:.1f} s "
          f"({len(att.report.rewritten)} nodes rewritten, {len(att.report.unhandled)} unhandled)", flush=True)
    if not args.no_attention_check:
        print(f"attention: {attention_check(model, device)}", flush=True)

    print("\n| model | dtype | L | method | seconds | ratio | peak MiB (above weights) |\n|---|---|---:|---|---:|---:|---:|")
    for length in lengths:
        got = measure(model, length, args.repeats, device)
        base = got["plain gradient"]
        for method in METHODS:
            row = got[method]
            if row == OOM:
                print(f"| {label} | {str(dtype).removeprefix('torch.')} | {length} | {method} | {OOM} | | |",
                      flush=True)
                continue
            seconds, peak = row
            ratio = f"{seconds / base[0]:.2f}" if base != OOM else "n/a"
            peak_text = "n/a" if peak is None else f"{peak:.0f}"
            print(f"| {label} | {str(dtype).removeprefix('torch.')} | {length} | {method} | {seconds:.3f} | "
                  f"{ratio} | {peak_text} |", flush=True)
    if args.profile:
        profile(model, lengths[0], device)
    del model
    _free(device)


def profile(model: nn.Module, length: int, device: torch.device, rows: int = 25) -> None:
    """One call of each method under ``torch.profiler`` (after a warm-up call): the top ops by self device
    time (self CPU time off CUDA), so what AttnLRP adds over the plain gradient can be read op by op."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as profiler

    vocab = model.get_input_embeddings().num_embeddings
    ids = torch.randint(0, vocab, (1, length), generator=torch.Generator().manual_seed(length)).to(device)
    mask = torch.ones_like(ids)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    for method, fn in (("plain gradient", partial(plain_ixg, model, ids, mask, 0)),
                       ("AttnLRP", partial(lxt_fx.explain, model, ids, target=0)),
                       ("AttnLRP + sqrt", partial(lxt_fx.explain, model, ids, target=0, checkpoint="sqrt"))):
        fn()
        sync(device)
        with profiler(activities=activities) as prof:
            fn()
            sync(device)
        print(f"\n### profile: {method}, L = {length}\n", flush=True)
        print(prof.key_averages().table(sort_by=key, row_limit=rows), flush=True)


if __name__ == "__main__":
    sys.exit(main())
