"""The ground-truth methods and the evidence check, on the shipped recall-llama model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import lxt_fx
from lxt_fx.evaluate import groundtruth as gt
from lxt_fx.evaluate.groundtruth import methods, verify


@pytest.fixture(scope="module")
def recall() -> tuple[torch.nn.Module, gt.Task, gt.Sample]:
    model, task = gt.load("recall-llama")
    return model, task, task.sample(6, seed=11)


def _logit(model: torch.nn.Module, embeds: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    logits = model(inputs_embeds=embeds, use_cache=False).logits[:, -1]
    return logits.gather(1, target[:, None]).squeeze(1)


def test_input_x_gradient_is_the_embedding_times_the_gradient_of_the_models_own_logit(recall) -> None:
    model, task, sample = recall
    embeds = model.get_input_embeddings()(sample.inputs["input_ids"]).detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(_logit(model, embeds, sample.target).sum(), embeds)
    ixg = methods.run_method("ixg", model, task, sample)["tokens"]
    torch.testing.assert_close(ixg, (embeds * grad).sum(-1).detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(methods.run_method("gradient", model, task, sample)["tokens"], grad.sum(-1),
                               rtol=1e-5, atol=1e-6)


def test_integrated_gradients_is_the_gauss_legendre_path_integral_of_the_models_own_gradient(recall) -> None:
    model, task, sample = recall
    rows = sample.rows(slice(0, 2))
    ig = methods.run_method("ig", model, task, rows, ig_steps=32)["tokens"]
    embeds = model.get_input_embeddings()(rows.inputs["input_ids"]).detach()
    nodes, weights = np.polynomial.legendre.leggauss(32)
    total = torch.zeros_like(embeds)
    for node, weight in zip((nodes + 1) / 2, weights / 2, strict=True):
        x = (float(node) * embeds).requires_grad_(True)
        (grad,) = torch.autograd.grad(_logit(model, x, rows.target).sum(), x)
        total += float(weight) * grad
    torch.testing.assert_close(ig, (embeds * total).sum(-1), rtol=1e-4, atol=1e-4)


def test_attnlrp_row_equals_lxt_fx_explain_of_that_row_alone(recall) -> None:
    model, task, sample = recall
    maps = methods.run_method("attnlrp", model, task, sample)["tokens"]
    alone = lxt_fx.explain(model, sample.inputs["input_ids"][2:3], target=int(sample.target[2])).relevance
    torch.testing.assert_close(maps[2:3], alone.float(), rtol=1e-4, atol=1e-5)


def test_run_methods_batches_give_the_same_maps(recall) -> None:
    model, task, sample = recall
    whole = methods.run_methods(model, task, sample, ["cp_lrp", "random"], batch_size=6)
    parts = methods.run_methods(model, task, sample, ["cp_lrp"], batch_size=4)
    torch.testing.assert_close(whole["cp_lrp"]["tokens"], parts["cp_lrp"]["tokens"], rtol=1e-4, atol=1e-5)
    assert whole["random"]["tokens"].shape == sample.mask["tokens"].shape


def test_unknown_and_inapplicable_methods_are_named_errors(recall) -> None:
    model, task, sample = recall
    with pytest.raises(methods.UnknownGroundTruthMethodError, match="choose from"):
        methods.run_method("lime", model, task, sample)
    copy = gt.get("copy-t5")
    assert "rollout" not in methods.methods_for(copy)
    with pytest.raises(methods.MethodNotApplicableError, match="rollout"):
        methods.run_method("rollout", model, copy, sample)
    with pytest.raises(ValueError, match="32"):
        methods.run_method("ig", model, task, sample, ig_steps=8)


def test_deletion_curves_start_intact_and_end_with_the_whole_region_removed(recall) -> None:
    model, task, sample = recall
    maps = methods.run_method("random", model, task, sample)
    curves = methods.deletion_curves(model, task, sample, maps, steps=4)
    intact = task.score(model, sample.inputs, sample.target).double()
    everything = {"tokens": sample.mask["tokens"] | sample.region["tokens"]}
    gone = task.score(model, task.ablate(sample, everything), sample.target).double()
    for order in ("morf", "lerf"):
        torch.testing.assert_close(curves[order][:, 0], intact, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(curves[order][:, -1], gone, rtol=1e-5, atol=1e-5)


def test_random_control_draws_as_many_positions_from_region_outside_the_mask() -> None:
    mask = torch.tensor([[1, 1, 0, 0, 0, 0], [0, 1, 0, 0, 0, 0], [1, 0, 0, 0, 0, 1]], dtype=torch.bool)
    region = torch.tensor([[1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 1]], dtype=torch.bool)
    sample = gt.Sample({}, torch.zeros(3), {"tokens": mask}, {"tokens": region})
    picked, short = verify.random_control(sample, seed=3)
    chosen = picked["tokens"]
    assert not (chosen & mask).any() and not (chosen & ~region).any()
    assert chosen.sum(1).tolist() == [2, 1, 2]  # row 2: exactly its two free positions
    assert short == 0
    tight = gt.Sample({}, torch.zeros(1), {"tokens": torch.tensor([[1, 1, 1, 0]], dtype=torch.bool)},
                      {"tokens": torch.tensor([[1, 1, 1, 1]], dtype=torch.bool)})
    picked, short = verify.random_control(tight)
    assert picked["tokens"].tolist() == [[False, False, False, True]] and short == 1


def test_verify_evidence_counts_prediction_changes_against_the_models_own_predictions(recall) -> None:
    model, task, _ = recall
    sample = task.sample(48, seed=21)
    result = verify.verify_evidence(model, task, sample, seed=4)
    base = task.predict(model, sample.inputs)
    gt_changed = (task.predict(model, task.ablate(sample, sample.mask)) != base).double().mean()
    control, _ = verify.random_control(sample, seed=4)
    rnd_changed = (task.predict(model, task.ablate(sample, control)) != base).double().mean()
    assert result.gt_rate == pytest.approx(float(gt_changed)) and result.random_rate == pytest.approx(float(rnd_changed))
    assert result.verified
