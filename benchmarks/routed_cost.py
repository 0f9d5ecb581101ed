"""What routing an answer through its reasoning costs: the rows it needs from one forward and N backward seeds
(``explain_continuation``, what ``explain_generation`` runs after decoding) against N separate ``explain``
calls, one per generated token on its own prefix (one forward and one backward each).

SmolLM2-135M-Instruct, the chain of docs/retrieval.md (a chat prompt and its greedy 10-token answer), one
thread; the two ways are interleaved, ``--repeats`` times each, after one untimed warm-up of each (the
capture); the median is reported with the ratio, and the two matrices are compared.

    python benchmarks/routed_cost.py --repeats 3
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import lxt_fx  # noqa: E402
from lxt_fx import models  # noqa: E402
from lxt_fx.generate import encode_prompt, greedy  # noqa: E402
from lxt_fx.generation import explain_continuation  # noqa: E402
from lxt_fx.reasoning import route  # noqa: E402

PROMPT = "Tom has 3 apples. Ann gives him 2 more. How many apples does Tom have? Answer with the sum."


def separate(model, prompt: list[int], generated: list[int]) -> torch.Tensor:
    """The routing matrix from N separate explains, row k on the prefix that predicted token k."""
    p, n = len(prompt), len(generated)
    rows = torch.zeros(n, p + n)
    for k, token in enumerate(generated):
        ids = torch.tensor([prompt + generated[:k]])
        rows[k, : p + k] = lxt_fx.explain(model, ids, target=token).relevance[0]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--new", type=int, default=10, help="generated tokens")
    args = parser.parse_args()
    torch.set_num_threads(1)
    model, tok = models.load("smollm2")
    prompt = encode_prompt(tok, PROMPT, chat=True)
    generated = greedy(model, prompt, args.new, None, None)
    shared = explain_continuation(model, prompt, generated, tokenizer=tok, seeds_per_pass=1)  # warm-up
    apart = separate(model, prompt, generated)
    times: dict[str, list[float]] = {"one forward + N seeds": [], "N separate explain": []}
    for _ in range(args.repeats):
        start = time.perf_counter()
        shared = explain_continuation(model, prompt, generated, tokenizer=tok, seeds_per_pass=1)
        times["one forward + N seeds"].append(time.perf_counter() - start)
        start = time.perf_counter()
        apart = separate(model, prompt, generated)
        times["N separate explain"].append(time.perf_counter() - start)
    diff = float((shared.matrix - apart).abs().max() / apart.abs().max())
    base = statistics.median(times["N separate explain"])
    print(f"SmolLM2-135M, prompt {len(prompt)} tokens, N = {len(generated)} generated ({tok.decode(generated)!r}), "
          f"1 thread, {args.repeats} interleaved repeats; max relative difference of the matrices {diff:.1e}; "
          f"routed mass {float(route(shared).total.sum()):.3f}\n")
    print("| way | median s | × N separate |\n|---|---:|---:|")
    for name, values in times.items():
        print(f"| {name} | {statistics.median(values):.2f} | {statistics.median(values) / base:.2f} |")


if __name__ == "__main__":
    main()
