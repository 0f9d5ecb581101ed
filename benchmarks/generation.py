"""Per-token explanation of a generation: the matrix ``[N, prompt + N]`` for N generated tokens after a
256-token prompt on SmolLM2-135M, three ways, in the same run:

- ``explain_generation``: one forward of the full sequence, N backward seeds batched ``--seeds`` at a time
  (the method of :mod:`lxt_fx.generation`; timed here through ``explain_continuation`` on the same ids);
- the same with ``seeds_per_pass=1``: one forward, N ordinary backwards (``retain_graph``);
- ``N separate explain``: one ``explain`` per generated token on the prefix that predicted it;
- ``cut-copies batch``: the batch of N + 1 cut copies of the sequence that ``generate --per-token`` used
  before (``generate_and_explain(..., per_token=True)``): N + 1 rows forward and backward at once.

Every method runs in a fresh subprocess (load, capture once on a short input, then the timed run) so its
peak RSS above the loaded model is its own; ``--memory-cap-gb`` bounds the address space of each child (a
method that needs more fails with MemoryError and is reported, instead of pressing a shared machine). The
continuation is the model's own greedy one, fixed once (``--max-new`` tokens, EOS not stopping it), so every
method explains the same ids. All rows are checked against ``explain_generation``'s matrix.

    python benchmarks/generation.py [--n 32 128] [--methods seeds loop separate cut] [--tiny]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Sequence

import torch

PROMPT_TOKENS = 256


def _model(tiny: bool):
    if tiny:
        import transformers as tf

        cfg = tf.LlamaConfig(vocab_size=256, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                             attn_implementation="sdpa")
        torch.manual_seed(0)
        return tf.LlamaForCausalLM(cfg).eval()
    from lxt_fx.models import load

    return load("smollm2", dtype=torch.float32)[0]


def _ids(model, n: int, prompt_tokens: int) -> tuple[list[int], list[int]]:
    """A fixed prompt (seeded random ids) and the model's greedy continuation of ``n`` tokens."""
    from lxt_fx.generate import greedy

    g = torch.Generator().manual_seed(0)
    prompt = torch.randint(0, model.config.vocab_size, (prompt_tokens,), generator=g).tolist()
    return prompt, greedy(model, prompt, n, eos=None)


def child(method: str, n: int, seeds: int, tiny: bool, prompt_tokens: int, cap_gb: float) -> None:
    """Runs in a subprocess: one method, printed as one JSON line."""
    import lxt_fx
    from lxt_fx.generate import SpanTarget
    from lxt_fx.generation import explain_continuation

    model = _model(tiny)
    prompt, gen = _ids(model, n, prompt_tokens)
    p = len(prompt)
    lxt_fx.explain(model, torch.tensor([prompt[:16]]))  # capture + rewrite once (not timed)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if cap_gb > 0:
        limit = int(cap_gb * 2**30)
        resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))
    start = time.perf_counter()
    try:
        if method == "seeds":
            matrix = explain_continuation(model, prompt, gen, seeds_per_pass=seeds).matrix
        elif method == "loop":
            matrix = explain_continuation(model, prompt, gen, seeds_per_pass=1).matrix
        elif method == "separate":
            matrix = torch.zeros(n, p + n)
            for k, token in enumerate(gen):
                matrix[k, : p + k] = lxt_fx.explain(model, torch.tensor([prompt + gen[:k]]), target=token).relevance[0]
        elif method == "cut":
            seq = torch.tensor([prompt + gen[:-1]] * (n + 1))
            mask = torch.ones_like(seq)
            for k in range(n):
                mask[1 + k, p + k:] = 0
            att = lxt_fx.explain(model, seq, attention_mask=mask,
                                 target=SpanTarget(torch.arange(p - 1, p - 1 + n), torch.tensor(gen), True))
            matrix = torch.zeros(n, p + n)
            matrix[:, : p + n - 1] = att.relevance[1:]
        else:
            raise SystemExit(f"unknown method {method}")
    except MemoryError:
        print(json.dumps({"method": method, "n": n, "error": f"MemoryError above the {cap_gb:g} GB cap"}))
        return
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    torch.save(matrix, os.environ["LXT_BENCH_OUT"])
    print(json.dumps({"method": method, "n": n, "seconds": seconds, "peak_mb": peak / 1024,
                      "above_load_mb": (peak - base) / 1024}))


def run_child(method: str, n: int, args: argparse.Namespace, out: str) -> dict:
    env = {**os.environ, "LXT_BENCH_OUT": out}
    cmd = [sys.executable, __file__, "--child", method, "--n", str(n), "--seeds", str(args.seeds),
           "--prompt-tokens", str(args.prompt_tokens), "--memory-cap-gb", str(args.memory_cap_gb)]
    done = subprocess.run(cmd + (["--tiny"] if args.tiny else []), capture_output=True, text=True, env=env)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        return {"method": method, "n": n, "error": (done.stderr.strip().splitlines() or ["failed"])[-1][:160]}
    return json.loads(lines[-1])


NAMES = {"seeds": "explain_generation (1 forward, batched seeds)",
         "loop": "explain_generation, seeds_per_pass=1 (1 forward, N backwards)", "separate": "N separate explain",
         "cut": "cut-copies batch (N + 1 rows)"}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, nargs="+", default=[32, 128], help="generated tokens (default 32 128)")
    parser.add_argument("--methods", nargs="+", default=["seeds", "loop", "separate", "cut"], choices=list(NAMES))
    parser.add_argument("--seeds", type=int, default=16, help="seeds per batched backward (default 16)")
    parser.add_argument("--prompt-tokens", type=int, default=PROMPT_TOKENS)
    parser.add_argument("--memory-cap-gb", type=float, default=8.0, help="address-space cap per child (0: none)")
    parser.add_argument("--tiny", action="store_true", help="a tiny random LLaMA instead of SmolLM2 (smoke test)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    if args.child:
        child(args.child, args.n[0], args.seeds, args.tiny, args.prompt_tokens, args.memory_cap_gb)
        return 0
    import tempfile

    model = "tiny LLaMA" if args.tiny else "SmolLM2-135M"
    print("| model | prompt | N | method | seconds | × first | peak RSS MB | above load MB | max rel. diff |")
    print("|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.n:
            ref = base = None
            for method in args.methods:  # a row as soon as its method ran (the first is the reference)
                out = os.path.join(tmp, f"{method}-{n}.pt")
                r = run_child(method, n, args, out)
                if "error" in r:
                    print(f"| {model} | {args.prompt_tokens} | {n} | {NAMES[method]} | — | — | — | — | {r['error']} |",
                          flush=True)
                    continue
                matrix = torch.load(out)
                ref = matrix if ref is None else ref
                base = r["seconds"] if base is None else base
                scale = ref.abs().amax(-1, keepdim=True).clamp_min(1e-30)
                diff = f"{float(((matrix - ref).abs() / scale).max()):.1e}"
                print(f"| {model} | {args.prompt_tokens} | {n} | {NAMES[method]} | {r['seconds']:.1f} | "
                      f"{r['seconds'] / base:.2f} | {r['peak_mb']:.0f} | {r['above_load_mb']:.0f} | {diff} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
