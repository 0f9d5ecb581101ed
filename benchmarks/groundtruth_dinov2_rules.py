"""DINOv2 ground truth, the rule diagnosis: where AttnLRP's positive relevance outside the mask goes, why, and
which rule changes move it, paired per row.

    python benchmarks/groundtruth_dinov2_rules.py [--rows 128] [--seed 7] [--model PATH ...] [--vit]

On ``shapes-dinov2`` (the shipped weights and every ``--model``: a model of the task trained from another
seed with ``task.build(seed)``, ``task.train(model, seed=seed)`` and ``save_pretrained``, held out while the
rules were chosen), ``--rows`` held-out rows of ``--seed``:

* **where**: the mean share of each map's positive relevance on the evidence cell, on the ring of patches
  around it (background or distractor), on the other distractor cells and on the far background; beside it
  the negative share of ``Σ|R|`` and, over the far-background patches, Spearman's ρ between a patch's
  positive relevance and its pixels' L2 norm (does the relevance follow the texture?). The classifier of ``Dinov2WithRegistersForImageClassification`` reads
  ``[CLS ; mean of the patch tokens]``: its weight is split into the two halves (the other half zeroed, so
  the forward pass up to the logits is unchanged) and each *head path* is explained on its own — LRP's
  backward is linear in the relevance it starts from, so the two maps add up to the full one.
* **layers**: the mass accuracy of the relevance in the residual stream, per token (``Σ_d``), after the
  embeddings and after each layer (``explain(..., capture=...)``), with the share of ``|R|`` on CLS and the
  registers.
* **rules**: mass accuracy of candidate composites (:data:`CANDIDATES`), paired per row against the generic
  ``attnlrp``; with ``--vit`` also on the shipped ``shapes-vit``. The two attention candidates are
  diagnostics (GxI form only): the kernel's gradient factors on (q, k, v) set to ``(0, ½, ½)`` hold the
  queries constant in ``QKᵀ`` (the weights' half goes to the keys whole), ``(½, 0, ½)`` the keys.
"""

from __future__ import annotations

import argparse
import copy
from typing import Any

import torch
import torch.nn.functional as F
from groundtruth import mean_se  # benchmarks/groundtruth.py, beside this script
from groundtruth_text_rules import AttentionSplit  # beside this script: fixed (q, k, v) factors
from groundtruth_vision import maps_of  # benchmarks/groundtruth_vision.py, beside this script

import lxt_fx
from lxt_fx.composites import Composite, attnlrp, cp_lrp
from lxt_fx.composites.vision import CONV_OPS, LINEAR_OPS, input_carries_only
from lxt_fx.evaluate import groundtruth as gt
from lxt_fx.evaluate.groundtruth.methods import integrated_gradients
from lxt_fx.evaluate.groundtruth.vision import PATCH, cell_mask
from lxt_fx.modalities import patch_grid
from lxt_fx.rules import Gamma
from lxt_fx.rules.gamma import ZPlus

aten = torch.ops.aten


def _on(pattern: Any, rule: Any, name: str) -> Composite:
    return Composite([(pattern, rule)]).extend(attnlrp, name=name)


CANDIDATES: dict[str, Composite] = {
    "attnlrp": attnlrp,
    "z⁺ patch embedding (= flat, zB, w² per patch)": _on((CONV_OPS, input_carries_only), ZPlus(1e-6), "zplus"),
    "γ = 0.05, every Linear": _on((LINEAR_OPS, input_carries_only), Gamma(0.05, 1e-6), "gamma0.05"),
    "γ = 0.25, every Linear": _on((LINEAR_OPS, input_carries_only), Gamma(0.25, 1e-6), "gamma0.25"),
    "γ = 0.25, MLP Linear": _on((LINEAR_OPS, input_carries_only, "MLP"), Gamma(0.25, 1e-6), "gamma0.25-mlp"),
    "γ = 1, MLP Linear": _on((LINEAR_OPS, input_carries_only, "MLP"), Gamma(1.0, 1e-6), "gamma1-mlp"),
    "queries constant: q, k, v = 0, ½, ½": _on(aten.scaled_dot_product_attention, AttentionSplit((0.0, 0.5, 0.5)), "q-const"),
    "keys constant: q, k, v = ½, 0, ½": _on(aten.scaled_dot_product_attention, AttentionSplit((0.5, 0.0, 0.5)), "k-const"),
    "CP-LRP (attention constant)": cp_lrp,
}


def head_paths(model: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """``{"CLS path": …, "patch-mean path": …}``: copies whose classifier reads only one half of
    ``[CLS ; mean of the patch tokens]`` (the other half's weights zeroed)."""
    d = model.config.hidden_size
    out = {}
    for name, part in (("CLS path", slice(0, d)), ("patch-mean path", slice(d, 2 * d))):
        m = copy.deepcopy(model)
        with torch.no_grad():
            keep = m.classifier.weight[:, part].clone()
            m.classifier.weight.zero_()
            m.classifier.weight[:, part] = keep
        out[name] = m
    return out


def regions(sample: gt.Sample) -> dict[str, torch.Tensor]:
    """Boolean ``[n, 8, 8]`` per region: the evidence cell, the ring of patches around it (8-neighbourhood)
    split into background and distractor, the other distractor patches, the far background."""
    mask = sample.mask["patches"]
    act, cells = sample.extra["active"], sample.extra["cells"]
    distractors = torch.zeros_like(mask)
    for k in range(1, cells.shape[1]):
        distractors |= cell_mask(cells[:, k]) & act[:, k, None, None]
    ring = F.max_pool2d(mask[:, None].float(), 3, 1, 1)[:, 0].bool() & ~mask
    background = ~(mask | distractors)
    return {"evidence (mask)": mask, "ring: background": ring & background, "ring: distractor": ring & distractors,
            "other distractors": distractors & ~ring, "far background": background & ~ring}


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman's rank correlation of two 1-D tensors (ties broken by position)."""
    ra, rb = (v.argsort().argsort().double() for v in (a, b))
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return float((ra * rb).sum() / (ra.norm() * rb.norm()).clamp_min(1e-30))


def where(model: torch.nn.Module, task: gt.Task, sample: gt.Sample, label: str) -> None:
    maps = {"AttnLRP": maps_of(model, task, sample, attnlrp)["patches"],
            "CP-LRP": maps_of(model, task, sample, cp_lrp)["patches"],
            "IG": integrated_gradients(model, task, sample, 32)["patches"]}
    for path, m in head_paths(model).items():
        maps[f"AttnLRP, {path}"] = maps_of(m, task, sample, attnlrp)["patches"]
        maps[f"IG, {path}"] = integrated_gradients(m, task, sample, 32)["patches"]
    parts = regions(sample)
    print(f"\n### {label}: where the positive relevance lies (mean share of Σ R⁺ per row)\n")
    print("| map | " + " | ".join(parts) + " | negative share of Σ\\|R\\| | ρ(R⁺, pixel norm), far background |\n|---|"
          + "---|" * (len(parts) + 2))
    far = parts["far background"]
    norm = patch_grid((sample.inputs["pixel_values"].double() ** 2).sum(1), PATCH).sqrt()[far]
    for name, r in maps.items():
        r = r.double()
        pos = r.clamp_min(0)
        total = pos.sum((1, 2)).clamp_min(1e-30)
        cells = [f"{mean_se((pos * m).sum((1, 2)) / total)[0]:.4f}" for m in parts.values()]
        neg = r.clamp_max(0).abs().sum((1, 2)) / r.abs().sum((1, 2)).clamp_min(1e-30)
        print(f"| {name} | " + " | ".join(cells) + f" | {float(neg.mean()):.3f} | {spearman(pos[far], norm):+.3f} |")


def layers(model: torch.nn.Module, task: gt.Task, sample: gt.Sample, label: str) -> None:
    base = model.base_model_prefix
    names = [f"{base}.embeddings", *(f"{base}.encoder.layer.{i}" for i in range(model.config.num_hidden_layers))]
    grid = sample.mask["patches"].reshape(len(sample), -1)
    print(f"\n### {label}: mass accuracy in the residual stream (per token; in brackets the CLS + register share "
          "of Σ\\|R\\|)\n")
    print("| head path | " + " | ".join(f"after {n.split('.', 1)[1]}" for n in names) + " | pixels |\n|---|"
          + "---|" * (len(names) + 1))
    for path, m in {"both": model, **head_paths(model)}.items():
        att = lxt_fx.explain(m, images=sample.inputs["pixel_values"], target=sample.target, composite=attnlrp,
                             capture=names)
        cells = []
        for n in names:
            r = att.latent(n).detach().double().sum(-1)                      # [rows, tokens]
            patches, first = r[:, -grid.shape[1]:], r[:, :-grid.shape[1]]
            pos = patches.clamp_min(0)
            mass = (pos * grid).sum(1) / pos.sum(1).clamp_min(1e-30)
            cls = first.abs().sum(1) / r.abs().sum(1).clamp_min(1e-30)
            cells.append(f"{float(mass.mean()):.3f} ({float(cls.mean()):.2f})")
        pixels = gt.score({"patches": att.image_relevance.detach()}, sample.mask)["mass"]
        print(f"| {path} | " + " | ".join(cells) + f" | {float(pixels.mean()):.3f} |")


def rules(model: torch.nn.Module, task: gt.Task, sample: gt.Sample, label: str) -> None:
    print(f"\n### {label}: mass accuracy per composite (paired difference to attnlrp)\n")
    print("| composite | mass | paired − attnlrp |\n|---|---|---|")
    mass = {k: gt.score(maps_of(model, task, sample, c), sample.mask)["mass"] for k, c in CANDIDATES.items()}
    mass["Integrated Gradients (baseline)"] = gt.score(integrated_gradients(model, task, sample, 32),
                                                       sample.mask)["mass"]
    for k, v in mass.items():
        m, se = mean_se(v)
        d, dse = mean_se(v - mass["attnlrp"])
        print(f"| {k} | {m:.4f} ± {se:.4f} | {d:+.4f} ± {dse:.4f} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=128)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--model", action="append", default=[], help="a shapes-dinov2 model trained from another seed")
    parser.add_argument("--vit", action="store_true", help="the rules on the shipped shapes-vit as well")
    parser.add_argument("--only", choices=["where", "layers", "rules"], default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    model, task = gt.load("shapes-dinov2")
    runs = [("shapes-dinov2, shipped", model)]
    runs += [(f"shapes-dinov2, {path}", type(model).from_pretrained(path).eval()) for path in args.model]
    sample = task.sample(args.rows, seed=args.seed)
    for label, m in runs:
        for what in (where, layers, rules):
            if args.only in (None, what.__name__):
                what(m, task, sample, label)
    if args.vit and args.only in (None, "rules"):
        vit, vtask = gt.load("shapes-vit")
        rules(vit, vtask, vtask.sample(args.rows, seed=args.seed), "shapes-vit, shipped")
    print(f"\n{args.rows} held-out rows (seed {args.seed})")


if __name__ == "__main__":
    main()
