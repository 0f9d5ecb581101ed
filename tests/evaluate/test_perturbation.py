"""Token flipping with known truth: on a linear model the exact attribution is the best possible order."""

from __future__ import annotations

import itertools

import evalhelpers
import pytest
import torch
from evalhelpers import LinearLM, batch

from lxt_fx.evaluate import perturbation as P
from lxt_fx.evaluate.baselines import random_relevance

linear, one_thread, tiny_llama = evalhelpers.linear, evalhelpers.one_thread, evalhelpers.tiny_llama  # shared fixtures


def test_step_counts_are_equal_fractions_rounded() -> None:
    counts = P.step_counts(torch.tensor([12, 5, 40]), 20)
    assert counts.shape == (3, 21)
    assert counts[:, 0].tolist() == [0, 0, 0] and counts[:, -1].tolist() == [12, 5, 40]
    assert counts[2].tolist() == [2 * k for k in range(21)]
    assert (counts.diff(dim=1) >= 0).all()


def test_exact_attribution_on_positive_linear_model_falls_monotonically_and_beats_random() -> None:
    model = LinearLM(positive=True)
    ids, mask, pos = batch(rows=6, length=12)
    target = torch.zeros(6, dtype=torch.long)
    exact = model.exact(ids, target)
    rand = random_relevance(model, ids, mask, target, pos, seed=3)
    curves = P.compare(model, ids, mask, target, pos, {"exact": exact, "random": rand}, steps=20)
    morf = curves["exact"].curves["morf"]
    counts = curves["exact"].flipped["morf"]
    step = morf.diff(dim=1)
    grew = counts.diff(dim=1) > 0
    assert (step[grew] < 0).all() and (step[~grew].abs() < 1e-5).all()        # falls at every real step
    assert torch.allclose(morf[:, -1], torch.zeros(6), atol=1e-5)           # everything removed: f = 0
    assert (curves["exact"].abpc() >= curves["random"].abpc() - 1e-5).all()
    assert curves["exact"].abpc().mean() > curves["random"].abpc().mean() + 0.5


def test_exact_attribution_is_the_optimal_order_on_a_mixed_sign_linear_model(linear: LinearLM) -> None:
    ids, mask, pos = batch(rows=4, length=10, pad_last=3)
    target = torch.tensor([0, 1, 2, 0])
    exact = linear.exact(ids, target, mask)
    others = {f"random{s}": random_relevance(linear, ids, mask, target, pos, seed=s) for s in range(5)}
    others["reversed"] = -exact
    curves = P.compare(linear, ids, mask, target, pos, {"exact": exact, **others}, steps=7)
    best = curves["exact"]
    for name in others:
        c = curves[name]
        # removing the k largest contributions leaves the smallest possible sum, the k smallest the largest
        assert (best.curves["morf"] <= c.curves["morf"] + 1e-5).all(), name
        assert (best.curves["lerf"] >= c.curves["lerf"] - 1e-5).all(), name
        assert (best.abpc() >= c.abpc() - 1e-5).all(), name
    assert (curves["reversed"].abpc() < 0).all()                            # the worst order is negative


def test_curves_start_intact_and_end_fully_flipped(linear: LinearLM) -> None:
    ids, mask, pos = batch(rows=3, length=9, pad_last=4)
    target = torch.tensor([2, 0, 1])
    exact = linear.exact(ids, target, mask)
    c = P.perturbation_curves(linear, ids, mask, exact, target, pos, steps=5)
    full = linear(input_ids=ids, attention_mask=mask)["logits"][torch.arange(3), pos, target]
    for order in ("morf", "lerf", "random"):
        assert torch.allclose(c.curves[order][:, 0], full.detach(), atol=1e-5)
        assert torch.allclose(c.curves[order][:, -1], torch.zeros(3), atol=1e-5)
    assert c.flipped["morf"][-1, -1] == 5                                    # padding is never flipped


def test_each_distinct_input_is_evaluated_once(linear: LinearLM) -> None:
    ids, mask, pos = batch(rows=2, length=8)
    target = torch.tensor([0, 1])
    rel = linear.exact(ids, target)
    seen: list[int] = []
    curves = P.compare(linear, ids, mask, target, pos, {"a": rel, "b": rel.clone(), "c": -rel}, steps=4,
                       batch_size=5, progress=seen.append)
    # a and b share every input; c's MoRF is a's LeRF; step 0 and the last step are shared by all
    assert sum(seen) == 2 * (2 + 2 * 3)
    assert max(seen) <= 5
    assert torch.equal(curves["a"].curves["morf"], curves["b"].curves["morf"])
    assert torch.equal(curves["a"].curves["morf"], curves["c"].curves["lerf"])


def test_token_replacement_matches_a_manual_forward(linear: LinearLM) -> None:
    ids, mask, pos = batch(rows=2, length=6)
    target = torch.tensor([1, 1])
    rel = torch.arange(6.0).expand(2, 6)                                     # MoRF flips the last token first
    c = P.perturbation_curves(linear, ids, mask, rel, target, pos, steps=6, orders=("morf",), perturbation=7)
    manual = ids.clone()
    manual[:, 3:] = 7
    expected = linear(input_ids=manual, attention_mask=mask)["logits"][:, -1, 1]
    assert torch.allclose(c.curves["morf"][:, 3], expected.detach(), atol=1e-5)


def test_score_kinds_and_errors(tiny_llama) -> None:
    ids, mask, pos = batch(rows=2, length=7, vocab=96)
    emb = tiny_llama.get_input_embeddings()(ids)
    target = torch.tensor([5, 9])
    with torch.no_grad():
        logit = P.model_scores(tiny_llama, emb, mask, target, pos, "logit")
        prob = P.model_scores(tiny_llama, emb, mask, target, pos, "prob")
        logprob = P.model_scores(tiny_llama, emb, mask, target, pos, "logprob")
        full = tiny_llama(input_ids=ids, attention_mask=mask).logits[torch.arange(2), pos]
    assert torch.allclose(logit, full[torch.arange(2), target], atol=1e-5)
    assert torch.allclose(prob.log(), logprob, atol=1e-5)
    with pytest.raises(P.EvaluationError, match="valid scores"):
        P.model_scores(tiny_llama, emb, mask, target, pos, "odds")
    with pytest.raises(P.EvaluationError, match="valid orders"):
        P.compare(tiny_llama, ids, mask, target, pos, {"x": torch.zeros(2, 7)}, orders=("sideways",))
    with pytest.raises(P.EvaluationError, match="one value per input token"):
        P.compare(tiny_llama, ids, mask, target, pos, {"x": torch.zeros(2, 6)})
    with pytest.raises(P.EvaluationError, match="tokenizer"):
        P.compare(tiny_llama, ids, mask, target, pos, {"x": torch.zeros(2, 7)}, perturbation="unk")


def test_random_order_is_seeded_per_row_and_batch_independent() -> None:
    ids, mask, pos = batch(rows=4, length=10)
    flip = torch.ones_like(ids, dtype=torch.bool)
    a = P.flip_ranks(torch.zeros(4, 10), flip, "random", seed=1, input_ids=ids)
    b = P.flip_ranks(torch.zeros(2, 10), flip[2:], "random", seed=1, input_ids=ids[2:])
    c = P.flip_ranks(torch.zeros(4, 10), flip, "random", seed=2, input_ids=ids)
    assert torch.equal(a[2:], b)
    assert not torch.equal(a, c)
    assert all(sorted(r.tolist()) == list(range(10)) for r in a)


def test_mean_se() -> None:
    mean, se = P.mean_se([1.0, 2.0, 3.0, 4.0])
    assert mean == pytest.approx(2.5) and se == pytest.approx(1.2909944 / 2)
    assert P.mean_se([1.0])[1] != P.mean_se([1.0])[1]                       # nan for a single value


@pytest.mark.parametrize("steps", [1, 3, 20])
def test_abpc_of_identical_orders_is_zero(linear: LinearLM, steps: int) -> None:
    ids, mask, pos = batch(rows=2, length=5)
    target = torch.tensor([0, 0])
    c = P.perturbation_curves(linear, ids, mask, torch.zeros(2, 5), target, pos, steps=steps)
    # all ties: MoRF and LeRF both flip in sequence order
    assert torch.allclose(c.abpc(), torch.zeros(2), atol=1e-6)
    assert list(itertools.pairwise(c.fractions.tolist()))[0][0] == 0.0
