"""One prepared device run: AttnLRP on bitsandbytes 8-bit and 4-bit models, against the float models.

    python benchmarks/gpu_quantized.py                          # CUDA: random LLaMA shaped like 1B, bf16, L = 512
    python benchmarks/gpu_quantized.py --device cpu --tiny      # the CPU smoke run (2 layers, hidden 64, float32)

A random-weight LLaMA shaped like LLaMA-3.2-1B (``benchmarks/gpu.py``'s ``1b`` shape; no download) is saved to a
temporary folder and loaded three times: unquantized, and through transformers' ``BitsAndBytesConfig`` in 8 bits
(LLM.int8) and in 4 bits (NF4, double-quantized, compute dtype = the model dtype). For each quantized model:

- **finite**: ``lxt_fx.explain`` gives finite relevance;
- **vs dequantized**: max |R − R̂| / max |R̂|, where R̂ is the relevance of the float model into which every
  quantized layer's weight was written back dequantized by bitsandbytes' own public functions
  (``int8_vectorwise_dequant``, ``dequantize_4bit``) — the model lxt-fx's graph is meant to equal;
- **vs float**: Spearman rank correlation and top-k overlap of the token relevance with the unquantized
  model's (how far the quantization itself moved the explanation);
- **seconds**: the capture (export + rewrite, first call) and the median of ``--repeats`` explain calls after it;
- **peak MiB**: ``torch.cuda.max_memory_allocated`` during one explain minus what was allocated before it (n/a on
  CPU).

Prints one markdown table; exits non-zero when a relevance is not finite.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu import shaped  # noqa: E402  (the same 1B shape as the GPU benchmark)

import lxt_fx  # noqa: E402


def quantized(folder: str, bits: int, device: torch.device, dtype: torch.dtype) -> nn.Module:
    """The model saved in ``folder`` loaded through ``BitsAndBytesConfig`` in ``bits`` bits onto ``device``."""
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    config = (BitsAndBytesConfig(load_in_8bit=True) if bits == 8 else
              BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                 bnb_4bit_compute_dtype=dtype))
    return AutoModelForCausalLM.from_pretrained(folder, quantization_config=config, device_map={"": str(device)},
                                                dtype=dtype).eval()


def dequantized_twin(float_model: nn.Module, quant: nn.Module) -> nn.Module:
    """A copy of ``float_model`` whose linear weights are ``quant``'s quantized weights, dequantized by
    bitsandbytes' public functions and cast to the float model's dtype."""
    import bitsandbytes as bnb

    twin = copy.deepcopy(float_model)
    mine = dict(twin.named_modules())
    with torch.no_grad():
        for name, layer in quant.named_modules():
            if isinstance(layer, bnb.nn.Linear8bitLt):
                w = bnb.functional.int8_vectorwise_dequant(layer.weight.data, layer.weight.SCB)
            elif isinstance(layer, bnb.nn.Linear4bit):
                w = bnb.functional.dequantize_4bit(layer.weight.data, layer.weight.quant_state)
            else:
                continue
            target = mine[name].weight
            target.copy_(w.to(target.dtype).reshape(target.shape))
    return twin


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman rank correlation of two flat tensors (ties broken by position)."""
    ra = a.flatten().double().argsort().argsort().double()
    rb = b.flatten().double().argsort().argsort().double()
    return float(torch.corrcoef(torch.stack([ra, rb]))[0, 1])


def overlap(a: torch.Tensor, b: torch.Tensor, k: int) -> float:
    """Share of the top-``k`` positions of ``a`` that are also among the top-``k`` of ``b``."""
    k = min(k, a.numel())
    top_a = set(a.flatten().topk(k).indices.tolist())
    return len(top_a & set(b.flatten().topk(k).indices.tolist())) / k


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_explain(model: nn.Module, ids: torch.Tensor, target: int, repeats: int, device: torch.device
                  ) -> tuple[torch.Tensor, float, float, float | None]:
    """(relevance, capture seconds, median explain seconds, peak MiB above the start of one call)."""
    _sync(device)
    start = time.perf_counter()
    att = lxt_fx.explain(model, ids, target=target)
    _sync(device)
    first = time.perf_counter() - start
    times = []
    peak = None
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
            before = torch.cuda.memory_allocated(device)
        _sync(device)
        start = time.perf_counter()
        att = lxt_fx.explain(model, ids, target=target)
        _sync(device)
        times.append(time.perf_counter() - start)
        if device.type == "cuda":
            peak = (torch.cuda.max_memory_allocated(device) - before) / 2 ** 20
    explain_s = statistics.median(times)
    return att.relevance.float().cpu(), max(first - explain_s, 0.0), explain_s, peak


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--tiny", action="store_true", help="2 layers, hidden 64 (CPU smoke runs)")
    parser.add_argument("--dtype", default=None, help="bfloat16 (default on CUDA) or float32 (default on CPU)")
    parser.add_argument("--length", type=int, default=None, help="tokens (default 512 on CUDA, 12 on CPU)")
    parser.add_argument("--bits", type=int, nargs="+", default=[8, 4], choices=[8, 4])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--top-k", type=int, default=10)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype or ("bfloat16" if device.type == "cuda" else "float32"))
    length = args.length or (512 if device.type == "cuda" else 12)
    repeats = args.repeats if device.type == "cuda" else min(args.repeats, 1)
    name = "1b (tiny)" if args.tiny else "1b"

    import bitsandbytes as bnb

    print(f"torch {torch.__version__}, bitsandbytes {bnb.__version__}, device {device}, dtype {dtype}, L = {length}")
    rows = []
    ok = True
    with tempfile.TemporaryDirectory(prefix="lxt-fx-bnb-") as folder:
        base = shaped("1b", args.tiny, torch.device("cpu"), dtype)
        base.save_pretrained(folder)
        del base
        from transformers import AutoModelForCausalLM

        float_model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, device_map={"": str(device)}).eval()
        gen = torch.Generator().manual_seed(0)
        ids = torch.randint(0, float_model.config.vocab_size, (1, length), generator=gen).to(device)
        with torch.no_grad():
            target = int(float_model(ids).logits[0, -1].argmax())  # one target for every model
        r_float, cap_f, sec_f, peak_f = timed_explain(float_model, ids, target, repeats, device)
        rows.append(("float", bool(torch.isfinite(r_float).all()), "—", "1.000", "1.00", cap_f, sec_f, peak_f))
        for bits in args.bits:
            quant = quantized(folder, bits, device, dtype)
            layers = sum(isinstance(m, (bnb.nn.Linear8bitLt, bnb.nn.Linear4bit)) for m in quant.modules())
            r_q, cap, sec, peak = timed_explain(quant, ids, target, repeats, device)
            twin = dequantized_twin(float_model, quant)
            r_twin = lxt_fx.explain(twin, ids, target=target).relevance.float().cpu()
            del twin
            finite = bool(torch.isfinite(r_q).all())
            ok &= finite
            delta = float((r_q - r_twin).abs().max() / r_twin.abs().max())
            rows.append((f"bnb {bits}-bit ({layers} layers)", finite, f"{delta:.2e}", f"{spearman(r_q, r_float):.3f}",
                         f"{overlap(r_q, r_float, args.top_k):.2f}", cap, sec, peak))
            del quant
            if device.type == "cuda":
                torch.cuda.empty_cache()
    print()
    print(f"| model | weights | finite | max abs Δ / max abs R vs dequantized | Spearman vs float "
          f"| top-{args.top_k} overlap vs float | capture s | explain s | peak MiB |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|")
    for label, finite, delta, rho, top, cap, sec, peak in rows:
        mem = "n/a" if peak is None else f"{peak:.0f}"
        print(f"| {name} | {label} | {finite} | {delta} | {rho} | {top} | {cap:.2f} | {sec:.3f} | {mem} |")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
