"""lxt-fx vs LXT 2.1 vs the plain gradient on the real SmolLM2-135M-Instruct: seconds per explanation.

    # once: the side environment with LXT 2.1 (README.md here)
    bash benchmarks/lxt_oracle/make_env.sh
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/lxt_oracle/speed.py            # L = 64, 128, 512, 1024, 5 repeats
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/lxt_oracle/speed.py --lengths 64 128 --repeats 3 --threads 1

Three long-lived worker processes, one method each, driven in turn by this process:

- **lxt-fx**: ``lxt_fx.explain(model, ids, target=t, checkpoint=c)`` in the project's environment (transformers 5);
  its capture and rewrite happen in the warm-up call, before timing.
- **LXT 2.1**: ``lxt.efficient.monkey_patch(modeling_llama)`` in the side environment ``.cache/lxt-venv``
  (transformers 4.57), then Input×Gradient on the patched model (as ``smollm2.py`` does).
- **plain gradient**: one forward and one backward of the untouched model to the input embeddings, in the
  project's environment (the cost of a plain Input×Gradient, what AttnLRP is measured against).

Same weights (the dequantized GGUF, written once to ``.cache/smollm2-speed``), same ids (seeded random ids of
length L), same target (the token id 0 at the last position), SDPA attention, float32, CPU, ``--threads`` torch
threads in each worker. ``"sqrt"``: lxt-fx's own ``checkpoint="sqrt"``; for LXT and the plain gradient the same
segmentation on the model (segments of ⌈√N⌉ decoder blocks under non-reentrant ``torch.utils.checkpoint``,
the last segment not checkpointed, as lxt-fx splits its graph). Per (L, checkpointing) each method runs once to
warm up (where LXT's and lxt-fx's relevances are compared: max |ΔR| / max |R|), then the three are interleaved
``--repeats`` times, the first method rotating; the table gives the median seconds and the ratios to the
plain gradient measured in the same run. Results: ``benchmarks/results/lxt_speed.md`` (``--out``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / ".cache" / "smollm2-speed"
SIDE = ROOT / ".cache" / "lxt-venv" / "bin" / "python"
TARGET = 0
METHODS = ("lxt-fx", "LXT 2.1", "plain gradient")


# ---- the workers ---------------------------------------------------------------------------------------------


def sqrt_checkpointing(model: Any) -> Any:
    """Segments of ⌈√N⌉ decoder blocks of ``model.model.layers`` under non-reentrant checkpointing (the last
    segment not), installed in place; returns a function that puts the original blocks back."""
    import torch
    from torch import nn
    from torch.utils.checkpoint import checkpoint

    class Segment(nn.Module):
        def __init__(self, blocks: list[nn.Module]) -> None:
            super().__init__()
            self.blocks = nn.ModuleList(blocks)
            self.attention_type = getattr(blocks[0], "attention_type", None)

        def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            tuple_out = []

            def run(h: torch.Tensor) -> torch.Tensor:
                for block in self.blocks:
                    out = block(h, *args, **kwargs)
                    tuple_out[:] = [isinstance(out, tuple)]
                    h = out[0] if isinstance(out, tuple) else out
                return h

            h = checkpoint(run, hidden_states, use_reentrant=False)
            return (h,) if tuple_out and tuple_out[0] else h

    class Skip(nn.Module):
        def __init__(self, block: nn.Module) -> None:
            super().__init__()
            self.attention_type = getattr(block, "attention_type", None)

        def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            return hidden_states

    layers = model.model.layers
    original = list(layers)
    size = max(1, math.ceil(math.sqrt(len(original))))
    starts = list(range(0, len(original), size))
    for start in starts[:-1]:  # the last segment runs as it is
        layers[start] = Segment(original[start:start + size])
        for i in range(start + 1, min(start + size, len(original))):
            layers[i] = Skip(original[i])

    def undo() -> None:
        for i, block in enumerate(original):
            layers[i] = block

    return undo


def input_x_gradient(model: Any, ids: Any) -> Any:
    """Input×Gradient of logit ``TARGET`` at the last position: one forward and one backward."""
    import torch

    emb = model.get_input_embeddings()(ids).detach().requires_grad_(True)
    score = model(inputs_embeds=emb, use_cache=False).logits[0, -1, TARGET]
    (grad,) = torch.autograd.grad(score, emb)
    return (emb.detach() * grad).sum(-1)[0]


def lxt_model() -> Any:
    """SmolLM2 in the side environment, patched by LXT 2.1 (``lxt.efficient.monkey_patch``)."""
    sys.path.insert(0, str(ROOT / ".cache" / "lxt-stub"))  # the torchvision stub of build_fixtures.py
    import lxt.efficient
    import transformers as tf
    from safetensors.torch import load_file
    from transformers.models.llama import modeling_llama

    lxt.efficient.monkey_patch(modeling_llama)
    saved = json.loads((DATA / "config.json").read_text())
    config = tf.LlamaConfig(**{k: v for k, v in saved.items()
                               if k not in ("architectures", "transformers_version", "dtype", "torch_dtype")})
    config.rope_theta = saved["rope_parameters"]["rope_theta"]  # transformers 5 keeps it in rope_parameters
    config._attn_implementation = "sdpa"
    model = modeling_llama.LlamaForCausalLM(config).eval()
    loaded = model.load_state_dict(load_file(str(DATA / "weights.safetensors")), strict=False)
    assert loaded.missing_keys == ["lm_head.weight"] and not loaded.unexpected_keys, loaded
    model.tie_weights()
    return model


def worker(side: str, threads: int) -> None:
    """Answer one JSON request per line on stdin: ``{"method", "ids", "checkpoint", "relevance"}`` →
    ``{"seconds", "relevance"?}`` on stdout."""
    import torch

    torch.set_num_threads(threads)
    if side == "lxt":
        model = lxt_model()
    else:
        import lxt_fx
        from lxt_fx import models

        model, _ = models.load("smollm2")
        model.config._attn_implementation = "sdpa"
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        ids = torch.tensor([request["ids"]])
        ckpt = request["checkpoint"]
        start, cpu = time.perf_counter(), time.process_time()
        if request["method"] == "lxt-fx":
            relevance = lxt_fx.explain(model, ids, target=TARGET, checkpoint=ckpt).relevance[0]
        else:
            undo = sqrt_checkpointing(model) if ckpt == "sqrt" else None
            try:
                relevance = input_x_gradient(model, ids)
            finally:
                if undo is not None:
                    undo()
        reply: dict[str, Any] = {"seconds": time.perf_counter() - start, "cpu": time.process_time() - cpu}
        if request.get("relevance"):
            reply["relevance"] = relevance.tolist()
        print(json.dumps(reply), flush=True)


# ---- the driver ----------------------------------------------------------------------------------------------


def export_weights() -> None:
    """The dequantized SmolLM2 weights (tied head left out) and config, for the side environment."""
    if (DATA / "weights.safetensors").is_file() and (DATA / "config.json").is_file():
        return
    from safetensors.torch import save_file

    from lxt_fx import models

    model, _ = models.load("smollm2")
    DATA.mkdir(parents=True, exist_ok=True)
    weights = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items() if k != "lm_head.weight"}
    save_file(weights, str(DATA / "weights.safetensors"))
    config = model.config.to_dict()
    config.pop("quantization_config", None)
    (DATA / "config.json").write_text(json.dumps(config, default=str))


class Worker:
    def __init__(self, python: str, side: str, threads: int) -> None:
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1"}
        if side == "lxt":
            env.pop("PYTHONPATH", None)
        self.proc = subprocess.Popen([python, __file__, "worker", side, "--threads", str(threads)], env=env,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT)
        self._read()

    def _read(self) -> dict[str, Any]:
        while True:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError(f"worker {self.proc.args} ended (exit {self.proc.wait()})")
            if line.startswith("{"):
                return json.loads(line)

    def ask(self, **request: Any) -> dict[str, Any]:
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait()


def measure(workers: dict[str, Worker], length: int, ckpt: str | None, repeats: int) -> dict[str, Any]:
    """Median seconds per method at ``length`` after one warm-up each, interleaved, and the relevance gap."""
    import random

    ids = random.Random(length).choices(range(1, 49152), k=length)
    warm = {m: workers[m].ask(method=m, ids=ids, checkpoint=ckpt, relevance=m != "plain gradient")
            for m in METHODS}
    ours, theirs = warm["lxt-fx"]["relevance"], warm["LXT 2.1"]["relevance"]
    gap = max(abs(a - b) for a, b in zip(ours, theirs, strict=True)) / max(abs(b) for b in theirs)
    times: dict[str, list[float]] = {m: [] for m in METHODS}
    cpu: dict[str, list[float]] = {m: [] for m in METHODS}
    for r in range(repeats):
        order = METHODS[r % 3:] + METHODS[:r % 3]
        for m in order:
            got = workers[m].ask(method=m, ids=ids, checkpoint=ckpt)
            times[m].append(got["seconds"])
            cpu[m].append(got["cpu"])
    return {"median": {m: statistics.median(t) for m, t in times.items()},
            "cpu": {m: statistics.median(t) for m, t in cpu.items()}, "gap": gap}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", nargs="?", default="run", choices=["run", "worker"])
    parser.add_argument("side", nargs="?", default="fx", choices=["fx", "lxt"])
    parser.add_argument("--lengths", type=int, nargs="+", default=[64, 128, 512, 1024])
    parser.add_argument("--checkpoint", nargs="+", default=["none", "sqrt"], choices=["none", "sqrt"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "lxt_speed.md")
    args = parser.parse_args()
    if args.mode == "worker":
        worker(args.side, args.threads)
        return
    if not SIDE.exists():
        sys.exit(f"no side environment at {SIDE}: run bash benchmarks/lxt_oracle/make_env.sh first")
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from build_fixtures import write_stub

    write_stub()
    export_weights()
    fx = Worker(sys.executable, "fx", args.threads)
    workers = {"lxt-fx": fx, "plain gradient": Worker(sys.executable, "fx", args.threads),
               "LXT 2.1": Worker(str(SIDE), "lxt", args.threads)}
    load = os.getloadavg()
    rows = []
    try:
        for ckpt in args.checkpoint:
            for length in args.lengths:
                got = measure(workers, length, None if ckpt == "none" else ckpt, args.repeats)
                rows.append((ckpt, length, got))
                med, cpu = got["median"], got["cpu"]
                print(f"{ckpt:5s} L={length:5d}  " + "  ".join(f"{m} {med[m]:.3f}s ({cpu[m]:.3f} CPU)" for m in METHODS)
                      + f"  lxt-fx/plain {med['lxt-fx'] / med['plain gradient']:.3f}"
                      + f" (CPU {cpu['lxt-fx'] / cpu['plain gradient']:.3f})"
                      + f"  lxt-fx/LXT {med['lxt-fx'] / med['LXT 2.1']:.3f} (CPU {cpu['lxt-fx'] / cpu['LXT 2.1']:.3f})"
                      + f"  ΔR {got['gap']:.1e}", flush=True)
    finally:
        for w in {id(w): w for w in workers.values()}.values():
            w.close()
    load_after = os.getloadavg()
    lines = [
        "# lxt-fx vs LXT 2.1 vs the plain gradient: SmolLM2-135M-Instruct, CPU",
        "",
        "Made by `benchmarks/lxt_oracle/speed.py` (its docstring says what each column runs). "
        f"float32, SDPA, {args.threads} torch thread(s) per worker, median of {args.repeats} interleaved repeats "
        f"after one warm-up; load average {load[0]:.1f} before and {load_after[0]:.1f} after "
        f"(`os.getloadavg`, {os.cpu_count()} cores). ΔR: max |R(lxt-fx) − R(LXT)| / max |R(LXT)| at the warm-up. "
        "Wall seconds, and in brackets the worker's CPU seconds (`time.process_time`, all its threads): on a "
        "shared machine the CPU seconds and their ratios are the steadier measure.",
        "",
        "| checkpointing | L | lxt-fx (s) | LXT 2.1 (s) | plain gradient (s) | lxt-fx / plain | LXT / plain "
        "| lxt-fx / LXT | ΔR |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for ckpt, length, got in rows:
        med, cpu = got["median"], got["cpu"]
        fx, lx, pg = (med[m] for m in ("lxt-fx", "LXT 2.1", "plain gradient"))
        cfx, clx, cpg = (cpu[m] for m in ("lxt-fx", "LXT 2.1", "plain gradient"))
        lines.append(f"| {ckpt} | {length} | {fx:.3f} ({cfx:.3f}) | {lx:.3f} ({clx:.3f}) | {pg:.3f} ({cpg:.3f}) | "
                     f"{fx / pg:.3f} ({cfx / cpg:.3f}) | {lx / pg:.3f} ({clx / cpg:.3f}) | "
                     f"{fx / lx:.3f} ({cfx / clx:.3f}) | {got['gap']:.1e} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
