"""Vision ground truth, the rule diagnosis: which LRP composite keeps the evidence, and what absorbs relevance.

    python benchmarks/groundtruth_vision.py [--rows 200] [--vit-seed1 PATH]

For shapes-vit, shapes-dinov2 and clip-shapes (the shipped weights), on ``--rows`` held-out rows (seed 1):

* mass accuracy of the ViT composites, to split the LXT-style vision composite (CP-LRP + γ on Linear + z⁺ on
  the patch embedding, ``lxt_fx.composites.vision``) into its parts against the generic AttnLRP (the ViT
  default), paired per row;
* where each map's positive relevance lies: the evidence cell, the distractor cells, the background;
* what the position embeddings, the CLS token and the register tokens absorb (``vision.absorbed``), as
  ``Σ_rows absorbed / Σ_rows score``.

``--vit-seed1`` names a shapes-vit model trained from seed 1 (``task.build(1)``, ``task.train(seed=1)``,
``save_pretrained``): the held-out seed for the composite comparison.
"""

from __future__ import annotations

import argparse

import torch

from lxt_fx.composites import Composite, attnlrp, cp_lrp, cp_lrp_gamma, vision
from lxt_fx.composites.vision import CONV_OPS, input_carries_only
from lxt_fx.evaluate import groundtruth as gt
from lxt_fx.evaluate.groundtruth.methods import integrated_gradients
from lxt_fx.evaluate.groundtruth.vision import absorbed, cell_mask
from lxt_fx.rules.gamma import ZPlus

COMPOSITES = {
    "vision (LXT-style): CP-LRP, γ=0.05 Linear, z⁺ patch embedding": cp_lrp_gamma(),
    "CP-LRP, γ=0 Linear, z⁺ patch embedding": cp_lrp_gamma(0.0),
    "CP-LRP, γ=0.05 Linear, ε patch embedding": cp_lrp_gamma(0.05, 0.0),
    "CP-LRP (ε everywhere)": cp_lrp,
    "AttnLRP, z⁺ patch embedding": Composite([((CONV_OPS, input_carries_only), ZPlus(1e-6))]).extend(
        attnlrp, name="attnlrp+zplus-conv"),
    "AttnLRP (generic)": attnlrp,
}


def maps_of(model, task, sample, composite, chunk: int = 100) -> dict[str, torch.Tensor]:
    parts = [task.explain(model, sample.rows(slice(i, i + chunk)), composite=composite)
             for i in range(0, len(sample), chunk)]
    return {k: torch.cat([p[k].detach().float() for p in parts]) for k in sample.mask}


def composites(model, task, sample, label: str) -> None:
    print(f"\n### {label}: mass accuracy per composite (paired difference to the vision composite)\n")
    print("| composite | mass | Δ vs vision |\n|---|---|---|")
    masses = {k: gt.score(maps_of(model, task, sample, c), sample.mask)["mass"] for k, c in COMPOSITES.items()}
    ig = integrated_gradients(model, task, sample, 32)
    masses["Integrated Gradients (baseline)"] = gt.score(ig, sample.mask)["mass"]
    ref = masses[next(iter(COMPOSITES))]
    n = len(sample)
    for k, v in masses.items():
        d = v - ref
        print(f"| {k} | {float(v.mean()):.3f} ± {float(v.std() / n ** 0.5):.3f} | "
              f"{float(d.mean()):+.3f} ± {float(d.std() / n ** 0.5):.3f} |")


def where(model, task, sample, label: str) -> None:
    act, cells = sample.extra["active"], sample.extra["cells"]
    distractors = torch.zeros_like(sample.mask["patches"])
    for k in range(1, cells.shape[1]):
        distractors |= cell_mask(cells[:, k]) & act[:, k, None, None]
    background = ~(distractors | sample.mask["patches"])
    print(f"\n### {label}: where the positive relevance lies (mean share per row)\n")
    print("| method | evidence cell | distractor cells | background | negative share of Σ\\|R\\| |\n|---|---|---|---|---|")
    runs = {"registered default": None, "AttnLRP (generic)": attnlrp, "CP-LRP": cp_lrp}
    if task.name == "shapes-vit":
        runs["vision (LXT-style)"] = vision
    maps = {k: maps_of(model, task, sample, c)["patches"] for k, c in runs.items()}
    maps["Integrated Gradients"] = integrated_gradients(model, task, sample, 32)["patches"]
    for k, r in maps.items():
        r = r.double()
        pos = r.clamp_min(0)
        total = pos.sum((1, 2))

        def share(m: torch.Tensor, pos: torch.Tensor = pos, total: torch.Tensor = total) -> float:
            return float(((pos * m).sum((1, 2)) / total).mean())

        neg = float((r.clamp_max(0).abs().sum((1, 2)) / r.abs().sum((1, 2))).mean())
        print(f"| {k} | {share(sample.mask['patches']):.3f} | {share(distractors):.3f} | {share(background):.3f} | "
              f"{neg:.3f} |")


def absorption(model, task, sample, label: str) -> None:
    print(f"\n### {label}: Σ absorbed / Σ score\n")
    rows = []
    runs = [("registered default", None), ("CP-LRP", cp_lrp)]
    if task.name == "shapes-vit":
        runs.append(("vision (LXT-style)", vision))
    for name, comp in runs:
        r = absorbed(model, task, sample, comp)
        total = r["score"].sum()
        rows.append((name, {k: float(v.sum() / total) for k, v in r.items() if k != "score"}))
    keys = list(rows[0][1])
    print("| composite | " + " | ".join(keys) + " |\n|---|" + "---|" * len(keys))
    for name, vals in rows:
        print(f"| {name} | " + " | ".join(f"{vals[k]:+.3f}" for k in keys) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=200)
    parser.add_argument("--vit-seed1", default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    for name in ("shapes-vit", "shapes-dinov2", "clip-shapes"):
        model, task = gt.load(name)
        sample = task.sample(args.rows, seed=1)
        if name == "shapes-vit":
            composites(model, task, sample, name)
        if name != "clip-shapes":
            where(model, task, sample, name)
        absorption(model, task, sample, name)
    if args.vit_seed1:
        task = gt.get("shapes-vit")
        model = type(task.build()).from_pretrained(args.vit_seed1).eval()
        composites(model, task, task.sample(args.rows, seed=1), "shapes-vit, held-out seed 1")
    print(f"\n{args.rows} held-out rows (seed 1)")


if __name__ == "__main__":
    main()
