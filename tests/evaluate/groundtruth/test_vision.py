"""The vision ground-truth tasks: shipped weights load, the task is solved, AttnLRP finds the evidence, the
zero-bias books close on the trained model."""

from __future__ import annotations

import pytest
import torch

import lxt_fx
from lxt_fx.evaluate import groundtruth as gt
from lxt_fx.evaluate.groundtruth.vision import GRID, cell_mask, repaint

# floors set below what was measured on 200 held-out rows (see benchmarks/results/groundtruth.md)
MASS_FLOOR = {"shapes-vit": 0.85, "shapes-dinov2": 0.85, "clip-shapes": 0.85}
VISION = sorted(MASS_FLOOR)


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("name", VISION)
def test_fixture_loads_and_solves_its_task(name: str) -> None:
    model, task = gt.load(name)
    assert name in gt.tasks()
    sample = task.sample(32, seed=3)
    grid = getattr(task, "grid", GRID)
    assert sample.mask["patches"].shape == (32, grid, grid)
    assert (sample.mask["patches"].sum((1, 2)) == (grid // 4) ** 2).all()   # one object cell: 2 × 2 or 1 patch
    pred = task.predict(model, sample.inputs)
    assert (pred == sample.target).float().mean() >= 0.9
    # removing the ground truth changes the decision
    assert (task.predict(model, task.ablate(sample, sample.mask)) != pred).float().mean() >= 0.9


@pytest.mark.parametrize("name", VISION)
def test_attnlrp_finds_the_evidence(name: str) -> None:
    model, task = gt.load(name)
    sample = task.sample(32, seed=4)
    maps = task.explain(model, sample)
    assert gt.score(maps, sample.mask)["mass"].mean() >= MASS_FLOOR[name]
    # above every gradient baseline on the same rows
    leaves = {k: v.clone().requires_grad_(True) for k, v in task.leaves(model, sample).items()}
    grads = torch.autograd.grad(task.forward_leaves(model, sample, leaves).sum(), list(leaves.values()))
    ixg = {k: task.to_map(k, v.detach() * g) for (k, v), g in zip(leaves.items(), grads, strict=True)}
    assert gt.score(maps, sample.mask)["mass"].mean() > gt.score(ixg, sample.mask)["mass"].mean()


def test_vit_default_finds_more_evidence_than_the_vision_composite() -> None:
    # the ViT default (the generic AttnLRP) against the LXT-style vision composite (CP-LRP + γ + z⁺), paired
    # over the same rows: the default must keep more positive relevance on the evidence (200 rows: +0.069)
    model, task = gt.load("shapes-vit")
    sample = task.sample(32, seed=10)
    default = gt.score(task.explain(model, sample), sample.mask)["mass"]
    vision = gt.score(task.explain(model, sample, composite=lxt_fx.composites.vision), sample.mask)["mass"]
    assert float((default - vision).mean()) > 0, (float(default.mean()), float(vision.mean()))


@pytest.mark.parametrize("name", VISION)
def test_zero_bias_books_close_on_the_trained_model(name: str) -> None:
    model, task = gt.load(name)
    sample = task.sample(2, seed=5)
    target = lxt_fx.targets.Similarity() if name == "clip-shapes" else int(sample.target[0])
    inputs = sample.inputs if name == "clip-shapes" else {"pixel_values": sample.inputs["pixel_values"][:1]}
    books = lxt_fx.check(model, inputs, target=target).zero_bias
    assert books.verdict().verified, books.verdict().reason


def test_repaint_restores_the_background_only_in_the_mask() -> None:
    task = gt.get("shapes-vit")
    sample = task.sample(4, seed=6)
    out = repaint(sample.inputs["pixel_values"], sample.extra["background"], sample.mask["patches"])
    where = sample.mask["patches"].repeat_interleave(4, 1).repeat_interleave(4, 2)[:, None].expand_as(out)
    torch.testing.assert_close(out[where], sample.extra["background"][where], rtol=0, atol=0)
    torch.testing.assert_close(out[~where], sample.inputs["pixel_values"][~where], rtol=0, atol=0)


def test_mask_is_the_red_objects_cell() -> None:
    task = gt.get("shapes-vit")
    sample = task.sample(16, seed=7)
    red = sample.inputs["pixel_values"] * 0.5 + 0.5
    redness = (red[:, 0] - red[:, 1:].max(1).values > 0.5)            # [n, 32, 32]: strongly red pixels
    cells = redness.reshape(16, GRID, 4, GRID, 4).any(4).any(2)
    assert (cells <= sample.mask["patches"]).all() and cells.any((1, 2)).all()
    assert torch.equal(cell_mask(sample.extra["cells"][:, 0]), sample.mask["patches"])


def test_rows_slices_the_per_row_extras() -> None:
    task = gt.get("shapes-vit")
    sample = task.sample(6, seed=8)
    part = sample.rows(slice(2, 5))
    torch.testing.assert_close(part.extra["background"], sample.extra["background"][2:5], rtol=0, atol=0)
    picked = sample.rows(torch.tensor([4, 0]))
    torch.testing.assert_close(picked.extra["cells"], sample.extra["cells"][[4, 0]], rtol=0, atol=0)
    # so ablating a part equals the same rows of the whole sample ablated
    whole = task.ablate(sample, sample.mask)["pixel_values"][2:5]
    torch.testing.assert_close(task.ablate(part, part.mask)["pixel_values"], whole, rtol=0, atol=0)


@pytest.mark.parametrize("name", ["shapes-dinov2", "clip-shapes"])
def test_absorption_kept_share_is_the_maps_sum_over_the_score(name: str) -> None:
    model, task = gt.load(name)
    sample = task.sample(3, seed=9)
    shares = task.absorption(model, sample)
    maps = task.explain(model, sample)
    kept = sum(m.reshape(3, -1).double().sum(1) for m in maps.values())
    with torch.no_grad():
        score = task.score(model, sample.inputs, sample.target).double()
    torch.testing.assert_close(shares["kept"], kept / score, rtol=1e-4, atol=1e-5)
    names = {"position", "first"} | ({"registers"} if name == "shapes-dinov2" else {"text_position"})
    assert names <= set(shares) and all(((v >= 0) & (v <= 1)).all() for k, v in shares.items() if k != "kept")
