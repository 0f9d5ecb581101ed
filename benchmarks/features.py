"""Knock-out faithfulness of latent relevance (the AttnLRP paper's latent-relevance experiment).

    python benchmarks/features.py                  # SmolLM2-135M, 50 shipped cloze prompts
    python benchmarks/features.py --tiny --n 3     # a random tiny LLaMA: a smoke run, seconds

For each cloze prompt the target is the answer's first token. One AttnLRP backward (``explain`` with the
neurons of one mid-depth MLP — the input of its ``down_proj`` — and every attention output projection's input
captured) ranks the MLP neurons by relevance ``Σ_t x ⊙ grad`` of the target logit and the heads by the same sum
over each head's channels. Baselines rank the same neurons by activation magnitude ``Σ_t |x|``, by gradient
magnitude ``Σ_t |∂f/∂x|`` and by plain input×gradient ``Σ_t x ⊙ ∂f/∂x`` (untouched model), and at random
(``--draws`` draws, averaged per prompt). For k in ``--ks`` the top-k neurons are knocked out
(``lxt_fx.features.ablate``, scale 0) and the drop of the target's log-probability at the last position is
recorded: Δ = log p(knocked out) − log p(intact); more negative = the ranking found neurons the prediction
needs. Heads: top-1 and top-3 (over all layers) by relevance vs random. Cells: mean over prompts ± SE;
paired columns: (relevance − other) per prompt, mean ± SE (negative: relevance's knock-out hurts more).
Results: ``benchmarks/results/features.{md,json}``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import random
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]


def _mean_se(xs: list[float]) -> tuple[float, float]:
    n = len(xs)
    m = sum(xs) / n
    sd = math.sqrt(sum((x - m) ** 2 for x in xs) / (n - 1)) if n > 1 else float("nan")
    return m, sd / math.sqrt(n)


def _fmt(xs: list[float]) -> str:
    m, se = _mean_se(xs)
    return f"{m:+.3f} ± {se:.3f}"


def _items(args: argparse.Namespace) -> tuple[Any, Any, list[tuple[Any, int, str]]]:
    if args.tiny:
        sys.path.insert(0, str(ROOT / "tests"))
        from conftest import VOCAB, make_model

        model = make_model("llama", "sdpa", layers=4)
        gen = torch.Generator().manual_seed(0)
        rows = [(torch.randint(0, VOCAB, (1, 6), generator=gen), int(torch.randint(0, VOCAB, (1,), generator=gen)),
                 f"tiny{i}") for i in range(args.n)]
        return model, None, rows
    from lxt_fx.evaluate.data import load_cloze
    from lxt_fx.models import load

    model, tok = load("smollm2")
    rows = []
    for item in load_cloze()[: args.n]:
        ids = torch.tensor([tok(item.prompt)["input_ids"]])
        rows.append((ids, tok(item.answer, add_special_tokens=False)["input_ids"][0], item.prompt))
    return model, tok, rows


def _logprob(model: Any, ids: torch.Tensor, target: int) -> float:
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, -1].float()
    return float(torch.log_softmax(logits, -1)[target])


def _plain(model: Any, module: torch.nn.Module, ids: torch.Tensor, target: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(activation, gradient) at the module's input, untouched model, target logit."""
    held: dict[str, torch.Tensor] = {}

    def grab(_mod: Any, inputs: tuple) -> None:
        inputs[0].retain_grad()
        held["x"] = inputs[0]

    handle = module.register_forward_pre_hook(grab)
    try:
        with torch.enable_grad():
            logits = model(input_ids=ids).logits[0, -1]
            logits[target].backward()
    finally:
        handle.remove()
        model.zero_grad(set_to_none=True)
    x = held["x"]
    return x.detach()[0], x.grad.detach()[0]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=50, help="cloze prompts (default 50)")
    p.add_argument("--layer", type=int, default=None, help="MLP layer (default: the middle one)")
    p.add_argument("--ks", default="1,5,10,20,50")
    p.add_argument("--draws", type=int, default=3, help="random draws per prompt and k")
    p.add_argument("--tiny", action="store_true", help="a random tiny LLaMA (smoke run)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "features"))
    args = p.parse_args(argv)
    import lxt_fx
    from lxt_fx.features import ablate, attention_places, graph_for
    from lxt_fx.features.heads import head_relevance

    torch.set_num_threads(1)
    start = time.perf_counter()
    model, tok, rows = _items(args)
    layers = model.config.num_hidden_layers
    layer = layers // 2 if args.layer is None else args.layer
    place = f"model.layers.{layer}.mlp.down_proj:input"
    module = model.get_submodule(f"model.layers.{layer}.mlp.down_proj")
    ks = [int(k) for k in args.ks.split(",")]
    methods = ["relevance", "activation", "gradient", "input×gradient", "random"]
    drops: dict[str, dict[int, list[float]]] = {m: {k: [] for k in ks} for m in methods}
    head_methods = ["relevance", "random"]
    head_drops: dict[str, dict[int, list[float]]] = {m: {k: [] for k in (1, 3)} for m in head_methods}
    rng = random.Random(0)
    for i, (ids, target, label) in enumerate(rows):
        graph = graph_for(model, ids)
        heads = attention_places(graph)
        att = lxt_fx.explain(model, ids, target=target, capture=[place] + [h.node for h in heads])
        rel = att.latent(place)[0].sum(0)
        x, g = _plain(model, module, ids, target)
        scores = {"relevance": rel, "activation": x.abs().sum(0), "gradient": g.abs().sum(0),
                  "input×gradient": (x * g).sum(0)}
        channels = rel.shape[0]
        base = _logprob(model, ids, target)
        for k in ks:
            for name, s in scores.items():
                top = torch.argsort(s, descending=True)[:k].tolist()
                with ablate(model, place, top):
                    drops[name][k].append(_logprob(model, ids, target) - base)
            rand = []
            for _ in range(args.draws):
                with ablate(model, place, rng.sample(range(channels), min(k, channels))):
                    rand.append(_logprob(model, ids, target) - base)
            drops["random"][k].append(sum(rand) / len(rand))
        per_head = torch.stack([head_relevance(att.latent(h.node), h.heads, 1)[0] for h in heads])  # [L, H]
        flat = [(li, hi) for li in range(per_head.shape[0]) for hi in range(per_head.shape[1])]
        order = torch.argsort(per_head.flatten(), descending=True).tolist()
        for k in (1, 3):
            choices = {"relevance": [[flat[j] for j in order[:k]]],
                       "random": [rng.sample(flat, k) for _ in range(args.draws)]}
            for name, sets in choices.items():
                got = []
                for chosen in sets:
                    with contextlib.ExitStack() as stack:
                        for li, hi in chosen:
                            h = heads[li]
                            width = att.latent(h.node).shape[-1] // h.heads
                            stack.enter_context(ablate(model, f"{h.path}:input", range(hi * width, (hi + 1) * width)))
                        got.append(_logprob(model, ids, target) - base)
                head_drops[name][k].append(sum(got) / len(got))
        print(f"[{i + 1}/{len(rows)}] {label!r}: log p {base:.2f}, top-10 relevance Δ "
              f"{drops['relevance'][ks[min(2, len(ks) - 1)]][-1]:+.2f}, "
              f"{time.perf_counter() - start:.0f} s", flush=True)
    n = len(rows)
    lines = [f"Knock-out of one MLP's neurons ({place}, {channels} neurons) and of attention heads; "
             f"{'tiny random LLaMA' if args.tiny else 'SmolLM2-135M-Instruct'}, N = {n} cloze prompts, target = "
             f"the answer's first token; Δ log p (mean ± SE; more negative = more faithful); "
             f"random: {args.draws} draws per prompt averaged. {time.perf_counter() - start:.0f} s.", "",
             "| ranking | " + " | ".join(f"k = {k}" for k in ks) + " |", "|---|" + "---:|" * len(ks)]
    for name in methods:
        lines.append(f"| {name} | " + " | ".join(_fmt(drops[name][k]) for k in ks) + " |")
    for name in methods[1:]:
        lines.append(f"| relevance − {name} (paired) | " + " | ".join(
            _fmt([a - b for a, b in zip(drops["relevance"][k], drops[name][k], strict=True)]) for k in ks) + " |")
    lines += ["", "| heads | top-1 | top-3 |", "|---|---:|---:|"]
    for name in head_methods:
        lines.append(f"| {name} | " + " | ".join(_fmt(head_drops[name][k]) for k in (1, 3)) + " |")
    lines.append("| relevance − random (paired) | " + " | ".join(
        _fmt([a - b for a, b in zip(head_drops["relevance"][k], head_drops["random"][k], strict=True)])
        for k in (1, 3)) + " |")
    text = "\n".join(lines)
    print(text)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text(text + "\n", encoding="utf-8")
    out.with_suffix(".json").write_text(json.dumps({"place": place, "n": n, "ks": ks, "neurons": drops,
                                                    "heads": head_drops}, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
