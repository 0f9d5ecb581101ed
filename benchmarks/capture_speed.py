"""Cold capture time against one plain forward + backward, full export vs stamped blocks, in one process.

    python benchmarks/capture_speed.py                        # SmolLM2, Gemma-3-270M (if installed), 1B-shaped LLaMA
    python benchmarks/capture_speed.py --models smollm2 --repeats 3 --out benchmarks/results/capture_speed.md
    python benchmarks/capture_speed.py --models tiny --repeats 1 --length 16   # seconds: a smoke run

For each model, in rounds (the order rotated each round): one plain forward + backward of the untouched
model at ``--length`` tokens (the gradient at ``inputs_embeds``, the cost of an Input×Gradient), one cold
capture with every block exported (``stamp=False``: torch.export of the whole model) and one cold capture
that traces each kind of block once and stamps it (:mod:`lxt_fx.tracing.stamp`). "Cold" means a fresh export
in this warm process (the disk cache is off; nothing is reused between rounds). Each capture time is the
whole ``capture()`` call: export, stamping, checks and the first run of the graph. Reported: the medians and
each capture's ratio to the forward + backward. Both captures are then rewritten with the model's composite
and explain the same inputs; the max |Δ| of their relevance is reported (the graphs are equal node for node,
so it is 0).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
import transformers as tf  # noqa: E402
from torch import nn  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

from lxt_fx.composites import for_model  # noqa: E402
from lxt_fx.session import rewritten_graph  # noqa: E402
from lxt_fx.tracing.capture import _CAPTURES, capture  # noqa: E402


def _random_llama(**shape: int) -> nn.Module:
    torch.manual_seed(0)
    config = tf.LlamaConfig(**shape)
    config._attn_implementation = "sdpa"
    return tf.LlamaForCausalLM(config).eval()


def _builtin(name: str) -> Callable[[], nn.Module]:
    def load() -> nn.Module:
        from lxt_fx import models

        if not models.available(name):
            raise LookupError(f"{name} is not installed")
        return models.load(name)[0].eval()

    return load


# A 1B-shaped LLaMA (TinyLlama-1.1B's shape: 22 blocks, hidden 2048, GQA 32:4), random weights.
MODELS: dict[str, Callable[[], nn.Module]] = {
    "smollm2": _builtin("smollm2"),
    "gemma3-270m": _builtin("gemma3-270m"),
    "llama-1b-shape": lambda: _random_llama(vocab_size=32000, hidden_size=2048, intermediate_size=5632,
                                            num_hidden_layers=22, num_attention_heads=32, num_key_value_heads=4),
    "tiny": lambda: _random_llama(vocab_size=96, hidden_size=32, intermediate_size=48, num_hidden_layers=6,
                                  num_attention_heads=4, num_key_value_heads=2),
}


def _inputs(model: nn.Module, length: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(1)
    ids = torch.randint(3, model.config.vocab_size, (1, length))
    with torch.no_grad():
        emb = model.get_input_embeddings()(ids).detach()
    return {"inputs_embeds": emb, "attention_mask": torch.ones_like(ids)}


def _plain(model: nn.Module, tensors: dict[str, torch.Tensor]) -> float:
    emb = tensors["inputs_embeds"].clone().requires_grad_(True)
    start = time.perf_counter()
    logits = model(inputs_embeds=emb, attention_mask=tensors["attention_mask"], use_cache=False).logits
    torch.autograd.grad(logits[0, -1].max(), emb)
    return time.perf_counter() - start


def _cold(model: nn.Module, tensors: dict[str, torch.Tensor], stamp: bool) -> tuple[float, object]:
    _CAPTURES.pop(model, None)  # nothing from an earlier round
    start = time.perf_counter()
    captured = capture(model, tensors, stamp=stamp)
    return time.perf_counter() - start, captured


def _relevance(model: nn.Module, tensors: dict[str, torch.Tensor]) -> torch.Tensor:
    result = rewritten_graph(model, for_model(model), tensors, {})
    emb = tensors["inputs_embeds"].clone().requires_grad_(True)
    logits = result({**tensors, "inputs_embeds": emb})["logits"]
    (grad,) = torch.autograd.grad(logits[0, -1].max(), emb)
    return (emb * grad).sum(-1).detach()


def run(name: str, length: int, repeats: int) -> str:
    os.environ.pop("LXT_FX_CACHE", None)  # the built-in models keep their files under it: its default
    model = MODELS[name]()
    os.environ["LXT_FX_CACHE"] = "off"  # every capture below is a fresh export
    for p in model.parameters():
        p.requires_grad_(False)  # the gradient at the input only, as explain computes it
    tensors = _inputs(model, length)
    _plain(model, tensors)  # warm the kernels once
    times: dict[str, list[float]] = {"plain": [], "full": [], "stamped": []}
    note = ""
    kinds = ["plain", "full", "stamped"]
    for r in range(repeats):
        for kind in kinds[r % 3:] + kinds[:r % 3]:
            if kind == "plain":
                times[kind].append(_plain(model, tensors))
            else:
                seconds, captured = _cold(model, tensors, kind == "stamped")
                times[kind].append(seconds)
                if kind == "stamped":
                    note = captured.note
        print(f"  {name} round {r + 1}: " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in times.items()), flush=True)
    _CAPTURES.pop(model, None)
    capture(model, tensors, stamp=False)
    full = _relevance(model, tensors)
    _CAPTURES.pop(model, None)
    capture(model, tensors)
    stamped = _relevance(model, tensors)
    diff = float((full - stamped).abs().max())
    med = {k: statistics.median(v) for k, v in times.items()}
    blocks = sum(1 for m in model.modules() if isinstance(m, nn.ModuleList) for _ in m)
    return (f"| {name} | {blocks} | {med['plain']:.2f} | {med['full']:.2f} | {med['full'] / med['plain']:.2f} | "
            f"{med['stamped']:.2f} | {med['stamped'] / med['plain']:.2f} | {med['full'] / med['stamped']:.1f} | "
            f"{diff:.1e} | {note} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="smollm2,gemma3-270m,llama-1b-shape")
    parser.add_argument("--length", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=None, help="write the table (markdown) here too")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    head = [f"capture_speed: L={args.length}, {args.repeats} interleaved rounds, median; torch {torch.__version__}, "
            f"transformers {tf.__version__}, {args.threads} thread(s), {platform.machine()}, "
            f"{os.cpu_count()} cores, load average {load:.1f} at the start",
            "",
            "| model | blocks | fwd+bwd (s) | full export (s) | ratio | stamped (s) | ratio | speed-up | relevance max abs Δ "
            "| capture |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    print("\n".join(head), flush=True)
    rows = []
    for name in args.models.split(","):
        try:
            rows.append(run(name, args.length, args.repeats))
        except LookupError as exc:
            rows.append(f"| {name} | – | – | – | – | – | – | – | – | not run: {exc} |")
        print(rows[-1], flush=True)
    if args.out:
        end = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
        with open(args.out, "w") as f:
            f.write("# Capture speed: full export vs stamped blocks\n\n")
            f.write(f"`python {' '.join(sys.argv)}`\n\n")
            f.write("\n".join(head + rows) + f"\n\nLoad average at the end: {end:.1f}. ")
            f.write("Ratios are capture time / one plain forward + backward in the same process and rounds.\n")


if __name__ == "__main__":
    main()
