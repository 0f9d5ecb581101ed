"""Ground-truth evaluation: every registered task × every method, scored against the planted evidence.

    python benchmarks/groundtruth.py [--tasks recall-llama,copy-t5] [--n 256] [--out benchmarks/results/groundtruth.md]

For each task with shipped weights (``lxt_fx.evaluate.groundtruth``): ``n`` held-out rows (seed 7, never
used in training), every method of :func:`~lxt_fx.evaluate.groundtruth.methods.methods_for`, and per
method the relevance mass accuracy, rank accuracy and pointing game against the mask and the deletion ABPC
(``Task.ablate`` most- vs least-relevant-first over ``region | mask``, 10 steps), each mean ± standard error
over the rows; AttnLRP minus the best other method on mass, paired over the same rows; AttnLRP's absorption
shares (``Task.absorption``: position embeddings, first token, the share of the score the maps keep); the
task's training record (``weights/<task>/training.json``: held-out accuracy, seconds, evidence rates).

Each task's numbers go to ``benchmarks/results/groundtruth/<task>.json``; the Markdown report is composed
from every JSON there (so ``--tasks`` refreshes some rows and keeps the others), and one figure per task
goes to ``docs/_static/groundtruth/<task>.png``: the first rows' maps, AttnLRP beside the best baseline,
the ground truth outlined.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lxt_fx.evaluate import groundtruth as gt  # noqa: E402
from lxt_fx.evaluate.groundtruth import methods as gtm  # noqa: E402

SEED = 7
NAMES = {"attnlrp": "AttnLRP", "cp_lrp": "CP-LRP", "ixg": "Input×Gradient", "gradient": "Gradient",
         "ig": "Integrated Gradients", "rollout": "Attention rollout", "random": "Random",
         "attnlrp_pos": "AttnLRP, position–token pairs"}


def mean_se(values: torch.Tensor) -> tuple[float, float]:
    v = values.double().flatten()
    v = v[torch.isfinite(v)]
    if v.numel() < 2:
        return (float(v.mean()) if v.numel() else math.nan), math.nan
    return float(v.mean()), float(v.std(unbiased=True) / math.sqrt(v.numel()))


def evaluate_task(name: str, n: int, figures: Path | None, log: Any = print) -> dict[str, Any]:
    model, task = gt.load(name)
    sample = task.sample(n, seed=SEED)
    start = time.perf_counter()
    maps = gtm.run_methods(model, task, sample, gtm.methods_for(task, extra=True), batch_size=64)
    if "attnlrp_pos" in maps and all(torch.allclose(maps["attnlrp_pos"][k], maps["attnlrp"][k], rtol=1e-4, atol=1e-6)
                                    for k in maps["attnlrp"]):
        del maps["attnlrp_pos"]  # nothing is added to the token embeddings: the same map
    seconds = time.perf_counter() - start
    result: dict[str, Any] = {"task": name, "family": task.family, "description": task.description, "n": n,
                              "methods": {}, "seconds_methods": seconds}
    mass = {}
    for method, m in maps.items():
        scores = gt.score(m, sample.mask)
        abpc = torch.cat([gtm.deletion_abpc(model, task, sample.rows(slice(s, s + 128)),
                                            {k: v[s:s + 128] for k, v in m.items()}) for s in range(0, n, 128)])
        mass[method] = scores["mass"]
        result["methods"][method] = {k: mean_se(v) for k, v in {**scores, "abpc": abpc}.items()}
        log(f"  {name} {method}: mass {result['methods'][method]['mass'][0]:.3f}")
    others = [k for k in mass if not k.startswith("attnlrp")]
    best = max(others, key=lambda k: float(mass[k].mean()))
    result["best_baseline"] = best
    result["attnlrp_minus_best"] = mean_se(mass["attnlrp"] - mass[best])
    shares = task.absorption(model, sample)
    result["absorption"] = {k: mean_se(v) for k, v in shares.items()}
    record = task.weights_dir / "training.json"
    result["training"] = json.loads(record.read_text()) if record.is_file() else None
    result["fixture_bytes"] = sum(f.stat().st_size for f in task.weights_dir.iterdir() if f.is_file())
    if figures is not None:
        figure(task, sample, maps, best, figures / f"{name}.png")
    return result


def figure(task: gt.Task, sample: gt.Sample, maps: dict[str, dict[str, torch.Tensor]], best: str, path: Path,
           rows: int = 6) -> None:
    """AttnLRP beside ``best``: per modality, 1-D maps as the first ``rows`` rows stacked (each row scaled by
    its largest |value| over the 1-D modalities), 2-D maps as the first row's grid (scaled by its largest
    |value|); ground truth outlined in black."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    keys = sorted(sample.mask)
    fig, axes = plt.subplots(len(keys), 2, figsize=(10, 1.2 + 1.6 * len(keys)), squeeze=False)
    for col, method in enumerate(["attnlrp", best]):
        for row, key in enumerate(keys):
            ax = axes[row][col]
            rel, mask = maps[method][key], sample.mask[key]
            if rel.dim() == 2:
                img, box = rel[:rows].double(), mask[:rows]
            else:
                img, box = rel[0].double().reshape(rel.shape[1], -1), mask[0].reshape(rel.shape[1], -1)
            if rel.dim() == 2:  # one scale per row across the 1-D modalities, so they compare
                scale = torch.stack([maps[method][k][:rows].double().abs().amax(-1) for k in keys
                                     if maps[method][k].dim() == 2]).amax(0)
                img = img / scale[:, None].clamp_min(1e-12)
            else:
                img = img / img.abs().max().clamp_min(1e-12)
            ax.imshow(img.numpy(), cmap="bwr", vmin=-1, vmax=1, aspect="auto", interpolation="nearest")
            for y, x in box.nonzero().tolist():
                ax.add_patch(Rectangle((x - 0.5, y - 0.5), 1, 1, fill=False, edgecolor="black", linewidth=1.5))
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"{NAMES.get(method, method)} — {key}", fontsize=9)
    title = f"{task.name}: {task.description} (red +, blue −; outlined: ground truth)"
    fig.suptitle(textwrap.fill(title, 120), fontsize=10)  # wrapped: a long description is never cut at the edges
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _pm(pair: list[float] | tuple[float, float], digits: int = 3) -> str:
    mean, se = pair
    if math.isnan(mean):
        return "—"
    return f"{mean:.{digits}f} ± {se:.{digits}f}" if not math.isnan(se) else f"{mean:.{digits}f}"


def markdown(results: list[dict[str, Any]]) -> str:
    lines = ["# Ground-truth evaluation", "",
             "Small models trained here on tasks whose evidence is planted (`lxt_fx.evaluate.groundtruth`); each "
             "method's relevance is scored against the ground-truth mask on held-out rows (seed 7). Mass: share "
             "of positive relevance inside the mask; rank: share of the top-|mask| positions inside it; pointing: "
             "the top position is inside; ABPC: deletion (`Task.ablate`) least- minus most-relevant-first area "
             "over the evidence region, in logits. Mean ± standard error over the rows. "
             "Written by `make bench-groundtruth` (`benchmarks/groundtruth.py`).", "",
             "## Tasks", "",
             "| task | family | held-out accuracy | training | fixture | evidence: GT removed / random removed "
             "| AttnLRP mass | best other method | AttnLRP − best (paired) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        t = r.get("training") or {}
        ev = t.get("evidence", {})
        train = f"{t['seconds']:.0f} s, {int(t['steps'])} steps" if t else "—"
        evid = f"{ev['gt_rate']:.3f} / {ev['random_rate']:.3f}" if ev else "—"
        acc = f"{t['accuracy']:.3f}" if t else "—"
        best = r["best_baseline"]
        lines.append(f"| {r['task']} | {r['family']} | {acc} | {train} | {r['fixture_bytes'] / 1e6:.2f} MB | {evid} "
                     f"| {_pm(r['methods']['attnlrp']['mass'])} | {NAMES.get(best, best)} "
                     f"{_pm(r['methods'][best]['mass'])} | {_pm(r['attnlrp_minus_best'])} |")
    lines += ["", "## Where AttnLRP's relevance goes", "",
              "`first`: |R| of the first token (BOS / [CLS] / first source token) over Σ|R|; `position`: the "
              "share of the embedding layer's |relevance| taken by the added position (and token-type) "
              "embeddings, absorbed as constants; `kept`: the maps' sum over the explained logit.", "",
              "| task | first token | position embeddings | kept |", "|---|---|---|---|"]
    for r in results:
        a = r.get("absorption", {})
        lines.append(f"| {r['task']} | {_pm(a.get('first', (math.nan, math.nan)))} | "
                     f"{_pm(a.get('position', (math.nan, math.nan)))} | {_pm(a.get('kept', (math.nan, math.nan)))} |")
    for r in results:
        lines += ["", f"## {r['task']} — {r['description']} (N = {r['n']})", "",
                  f"![{r['task']}](../../docs/_static/groundtruth/{r['task']}.png)", "",
                  "| method | mass | rank | pointing | ABPC |", "|---|---|---|---|---|"]
        order = sorted(r["methods"], key=lambda k: -r["methods"][k]["mass"][0])
        for k in order:
            m = r["methods"][k]
            lines.append(f"| {NAMES.get(k, k)} | {_pm(m['mass'])} | {_pm(m['rank'])} | {_pm(m['pointing'])} "
                         f"| {_pm(m['abpc'], 2)} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tasks", default="", help="comma-separated task names (default: every task with weights)")
    p.add_argument("--n", type=int, default=256, help="held-out rows per task (≥ 200 for the report)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "groundtruth.md"))
    p.add_argument("--figures", default=str(ROOT / "docs" / "_static" / "groundtruth"))
    p.add_argument("--no-figures", action="store_true")
    p.add_argument("--report-only", action="store_true", help="only rewrite the report from the stored JSONs")
    args = p.parse_args(argv)
    names = [t for t in args.tasks.split(",") if t] or [t for t in gt.tasks()
                                                          if (gt.get(t).weights_dir / "model.safetensors").is_file()]
    names = [] if args.report_only else names
    out = Path(args.out)
    store = out.parent / "groundtruth"
    store.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    for name in names:
        print(f"{name}: {args.n} rows", flush=True)
        result = evaluate_task(name, args.n, None if args.no_figures else Path(args.figures))
        (store / f"{name}.json").write_text(json.dumps(result, indent=1) + "\n")
    registered = gt.tasks()
    results = [json.loads(f.read_text()) for f in sorted(store.glob("*.json"))]
    results.sort(key=lambda r: registered.index(r["task"]) if r["task"] in registered else len(registered))
    out.write_text(markdown(results))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
