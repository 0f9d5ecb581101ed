"""SmolLM2-135M offloaded and quantized: the relevance against the plain float model (docs/scale.md).

1. ``accelerate.cpu_offload`` and ``disk_offload`` copies of the model: max |Δ| of the relevance against the
   plain model on a few prompts, and the seconds of one explanation (capture paid before timing).
2. torchao weight-only int8 (``Int8WeightOnlyConfig``): on the shipped cloze prompts, whether the relevance is
   finite, the Spearman rank correlation of the per-token relevance with the float model's, and whether the
   top-3 tokens are the same set; the target is the float model's argmax for both.

    python benchmarks/scale.py [--cloze N] [--skip-offload] [--skip-int8]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time

import torch

import lxt_fx
from lxt_fx.evaluate.data import load_cloze
from lxt_fx.models import load

PROMPTS = ("The capital of France is", "Water boils at a temperature of one hundred degrees",
           "The quick brown fox jumps over the lazy")


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman's ρ: Pearson's correlation of the ranks (ties broken by position)."""
    ra = a.argsort().argsort().double()
    rb = b.argsort().argsort().double()
    return float(torch.corrcoef(torch.stack([ra, rb]))[0, 1])


def timed(model, text, tok, **kw):
    start = time.perf_counter()
    att = lxt_fx.explain(model, text, tokenizer=tok, **kw)
    return att, time.perf_counter() - start


def offload_rows(model, tok) -> None:
    import accelerate

    print("## SmolLM2-135M offloaded (accelerate), relevance against the plain model\n")
    print("| model | prompt tokens | max abs Δ relevance | max abs relevance | target same | seconds |")
    print("|---|---:|---:|---:|---|---:|")
    plain = {p: timed(model, p, tok) for p in PROMPTS}
    for p in PROMPTS:
        att, sec = plain[p]
        print(f"| plain | {len(att.tokens[0])} | 0 | {att.relevance.abs().max():.3g} | yes | {sec:.2f} |", flush=True)
    cpu = torch.device("cpu")
    with tempfile.TemporaryDirectory() as folder:
        for kind in ("cpu_offload", "disk_offload"):
            m = copy.deepcopy(model)
            m = accelerate.cpu_offload(m, cpu) if kind == "cpu_offload" else accelerate.disk_offload(m, folder, cpu)
            start = time.perf_counter()
            lxt_fx.explain(m, "warm up", tokenizer=tok)
            print(f"\n{kind}: first explain (capture + rewrite) {time.perf_counter() - start:.1f} s\n")
            for p in PROMPTS:
                att, sec = timed(m, p, tok)
                ref = plain[p][0]
                delta = (att.relevance - ref.relevance).abs().max()
                same = "yes" if att.target_tokens == ref.target_tokens else "NO"
                print(f"| {kind} | {len(att.tokens[0])} | {delta:.2g} | {ref.relevance.abs().max():.3g} | {same} | "
                      f"{sec:.2f} |", flush=True)
            del m


def int8_rows(model, tok, n: int) -> None:
    from torchao.quantization import Int8WeightOnlyConfig, quantize_

    items = load_cloze()[:n]
    float_atts = [lxt_fx.explain(model, it.prompt, tokenizer=tok) for it in items]
    q = copy.deepcopy(model)
    quantize_(q, Int8WeightOnlyConfig())
    rhos, top3, top1, finite, same_argmax = [], 0, 0, 0, 0
    print(f"\n## SmolLM2-135M torchao int8 weight-only vs float, {len(items)} shipped cloze prompts\n")
    print("| prompt | tokens | finite | Spearman ρ | top-3 same set | top-1 same | int8 argmax = float's |")
    print("|---|---:|---|---:|---|---|---|")
    for it, fa in zip(items, float_atts, strict=True):
        qa = lxt_fx.explain(q, it.prompt, tokenizer=tok, target=int(fa.target_ids[0]))
        own = lxt_fx.explain(q, it.prompt, tokenizer=tok)
        r, s = fa.relevance[0], qa.relevance[0]
        ok = bool(torch.isfinite(s).all())
        rho = spearman(r, s)
        t3 = set(r.topk(min(3, len(r))).indices.tolist()) == set(s.topk(min(3, len(s))).indices.tolist())
        t1 = int(r.argmax()) == int(s.argmax())
        same = int(own.target_ids[0]) == int(fa.target_ids[0])
        finite, top3, top1, same_argmax = finite + ok, top3 + t3, top1 + t1, same_argmax + same
        rhos.append(rho)
        print(f"| {it.prompt[:48]!r} | {len(r)} | {ok} | {rho:.3f} | {t3} | {t1} | {same} |", flush=True)
    print(f"\nfinite {finite}/{len(items)}; Spearman ρ median {statistics.median(rhos):.3f}, min {min(rhos):.3f}; "
          f"top-3 same set {top3}/{len(items)}; top-1 same {top1}/{len(items)}; "
          f"int8 model's own argmax = float's {same_argmax}/{len(items)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cloze", type=int, default=24, help="how many shipped cloze prompts (int8 part)")
    parser.add_argument("--skip-offload", action="store_true")
    parser.add_argument("--skip-int8", action="store_true")
    args = parser.parse_args()
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    model, tok = load("smollm2")
    if not args.skip_offload:
        offload_rows(model, tok)
    if not args.skip_int8:
        int8_rows(model, tok, args.cloze)


if __name__ == "__main__":
    main()
