"""Position relevance on the trained ground-truth tasks: AttnLRP (each family's default) against PA-LRP
(``composite="palrp"``, Bakish et al. 2025), writes ``benchmarks/results/positions.md``.

Per task, over the same held-out rows (``task.sample(n, seed)``):

* **shares**: ``position`` — the positional tables' share of the embedding layer's |relevance|: for AttnLRP
  what the added tables absorb (``Task.absorption``'s ``position``; a rotary or relative encoding absorbs
  nothing), for PA-LRP ``Σ_i |R(pos_i)| / (Σ_i |R(pos_i)| + Σ |R(token types)| + Σ_j |R_j|)`` over the maps'
  positions ``j`` (all layers' rotary tables summed per position); ``token types`` (BERT) the same for
  token-type tables; ``first`` / ``CLS`` — ``Task.absorption``'s first-token (text: ``<bos>`` / ``[CLS]``,
  vision: the CLS token, Whisper: the decoder start token) and register shares under each composite;
  ``kept`` — what reaches the inputs over the explained logit (PA-LRP: maps plus positional tables);
* **scores**: mass / rank / pointing of the AttnLRP map, of PA-LRP's token map (for RoPE models half of each
  rotated query's and key's relevance leaves the tokens for the positions) and of PA-LRP's position–token
  pair map (token map plus the position's relevance at its token, patch or frame), with the paired
  difference to AttnLRP's mass (mean ± standard error over the rows).

``python benchmarks/positions.py [--n 64] [--seed 7] [--tasks a,b]``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import torch
from groundtruth import mean_se  # benchmarks/groundtruth.py, beside this script

from lxt_fx.composites import palrp
from lxt_fx.evaluate import groundtruth as gt
from lxt_fx.explain import explain, position_maps, position_tables
from lxt_fx.rewrite import recording_places
from lxt_fx.targets import Similarity

RESULTS = Path(__file__).parent / "results" / "positions.md"


def fmt(values: torch.Tensor | None, pct: bool = False) -> str:
    if values is None:
        return "—"
    m, s = mean_se(values)
    return f"{100 * m:.1f} ± {100 * s:.1f} %" if pct else f"{m:.3f} ± {s:.3f}"


def palrp_pass(model: Any, task: Any, sample: Any) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor],
                                                                torch.Tensor]:
    """(maps per modality, positional tables ``{key: [n, positions]}``, explained scores) under PA-LRP."""
    if task.name == "tones-whisper":  # as task.explain: the decoder's token embeddings carry relevance too
        att = explain(model, sample.inputs["decoder_input_ids"], audio=sample.inputs["input_features"],
                      target=sample.target.tolist(), composite=palrp)
        return {"frames": att.audio_relevance.float()}, att.position_maps or {}, att.target_scores.double()
    if task.name in ("colour-vlm", "clip-shapes"):  # their forward_leaves bypass the graph (a hook, a tower)
        target = Similarity() if task.name == "clip-shapes" else sample.target.tolist()
        att = explain(model, sample.inputs["input_ids"], images=sample.inputs["pixel_values"], target=target,
                      composite=palrp)
        maps = {"patches": att.image_relevance.float(), "tokens": att.relevance.float()}
        return maps, att.position_maps or {}, att.target_scores.double()
    leaves = {k: v.detach().clone().requires_grad_(True) for k, v in task.leaves(model, sample).items()}
    with palrp.context(model), torch.enable_grad(), recording_places() as seen:
        scores = task.forward_leaves(model, sample, leaves)
        tables = position_tables(seen)
        grads = torch.autograd.grad(scores.sum(), list(leaves.values()) + [t for _, t in tables], allow_unused=True)
    maps = {k: task.to_map(k, (leaf * g).detach()).float() for (k, leaf), g in zip(leaves.items(), grads,
                                                                                  strict=False)}
    if "decoder_tokens" in maps:
        maps["decoder_tokens"] = maps["decoder_tokens"] * sample.inputs["decoder_attention_mask"].float()
    return maps, position_maps(tables, grads[len(leaves):], len(sample)), scores.detach().double()


def pair_maps(maps: dict[str, torch.Tensor], tables: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Each map plus the relevance of the positions its entries sit at: tokens at their positions, a patch grid
    at positions 1… (after [CLS]), frames at the encoder position that covers them (half each of two)."""
    out = {k: v.clone() for k, v in maps.items()}
    for key, pos in tables.items():
        if not key.startswith("positions:"):
            continue
        for name, m in out.items():
            if m.dim() == 2 and m.shape[1] == pos.shape[1] and ("decoder" in key) == (name == "decoder_tokens"):
                out[name] = m + pos
            elif m.dim() == 3 and m.shape[1] * m.shape[2] + 1 == pos.shape[1]:
                out[name] = m + pos[:, 1:].reshape(m.shape)
            elif m.dim() == 2 and m.shape[1] == 2 * pos.shape[1] and "encoder" in key:
                out[name] = m + pos.repeat_interleave(2, dim=1) / 2
    return out


def evaluate(name: str, n: int, seed: int) -> dict[str, Any]:
    start = time.perf_counter()
    model, task = gt.load(name)
    sample = task.sample(n, seed=seed)
    default = {k: v.float() for k, v in task.explain(model, sample).items()}
    maps, tables, scores = palrp_pass(model, task, sample)
    pairs = pair_maps(maps, tables)
    before = task.absorption(model, sample)
    after = task.absorption(model, sample, composite=palrp)
    mass_abs = sum(m.abs().flatten(1).sum(1).double() for m in maps.values())
    pos_abs = sum((t.abs().sum(1).double() for k, t in tables.items() if k.startswith("positions:")),
                  torch.zeros(n, dtype=torch.float64))
    type_abs = sum((t.abs().sum(1).double() for k, t in tables.items() if k.startswith("token_types:")),
                   torch.zeros(n, dtype=torch.float64))
    total = (mass_abs + pos_abs + type_abs).clamp_min(1e-30)
    inputs = sum(m.flatten(1).sum(1).double() for m in maps.values()) + sum(
        (t.sum(1).double() for t in tables.values()), torch.zeros(n, dtype=torch.float64))
    scored = {label: gt.score(m, sample.mask) for label, m in (("attnlrp", default), ("palrp", maps),
                                                               ("palrp pairs", pairs))}
    return {
        "name": name, "n": n, "tables": sorted(tables), "seconds": time.perf_counter() - start,
        "before": before, "after": after,
        "position_after": pos_abs / total if tables else None,
        "types_after": type_abs / total if any(k.startswith("token_types:") for k in tables) else None,
        "kept_after": inputs / scores,
        "scores": scored,
        "delta": {k: scored[k]["mass"] - scored["attnlrp"]["mass"] for k in ("palrp", "palrp pairs")},
    }


def report(rows: list[dict[str, Any]], n: int, seed: int, seconds: float) -> str:
    lines = ["# Position relevance: AttnLRP against PA-LRP", "",
             f"`python benchmarks/positions.py --n {n} --seed {seed}` ({n} held-out rows per task, seed {seed}, "
             f"CPU, {seconds:.0f} s). Shares are means ± standard errors over the rows; see the script's "
             "docstring for each definition.", "",
             "## Where the relevance goes", "",
             "| task | positional tables (PA-LRP) | position share, AttnLRP (absorbed) | position share, PA-LRP "
             "(input) | token types, PA-LRP | first token, AttnLRP → PA-LRP | registers, AttnLRP → PA-LRP | "
             "kept, AttnLRP → PA-LRP |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        b, a = r["before"], r["after"]
        tables = ", ".join(f"`{k}`" for k in r["tables"]) or "none (relative bias)"
        lines.append(
            f"| {r['name']} | {tables} | {fmt(b.get('position'), True)} | {fmt(r['position_after'], True)} | "
            f"{fmt(r['types_after'], True)} | {fmt(b.get('first'), True)} → {fmt(a.get('first'), True)} | "
            f"{fmt(b.get('registers'), True)} → {fmt(a.get('registers'), True)} | "
            f"{fmt(b.get('kept'), True)} → {fmt(r['kept_after'], True)} |")
    lines += ["", "## Ground-truth scores", "",
              "| task | map | mass | rank | pointing | mass − AttnLRP (paired) |", "|---|---|---|---|---|---|"]
    for r in rows:
        for label, s in r["scores"].items():
            delta = "" if label == "attnlrp" else fmt(r["delta"][label])
            lines.append(f"| {r['name']} | {label} | {fmt(s['mass'])} | {fmt(s['rank'])} | {fmt(s['pointing'])} "
                         f"| {delta} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=64)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--tasks", default=",".join(gt.tasks()))
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(1)
    start = time.perf_counter()
    rows = []
    failed = []
    for name in args.tasks.split(","):
        try:
            rows.append(evaluate(name, args.n, args.seed))
        except Exception as exc:  # reported in the results, not hidden
            failed.append(f"{name}: {type(exc).__name__}: {str(exc).splitlines()[0]}")
            print(f"{name}: FAILED {failed[-1]}", flush=True)
            continue
        print(f"{name}: {rows[-1]['seconds']:.0f} s", flush=True)
    text = report(rows, args.n, args.seed, time.perf_counter() - start)
    if failed:
        text += "\n## Not measured\n\n" + "\n".join(f"* {f}" for f in failed) + "\n"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
