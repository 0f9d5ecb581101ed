"""The shipped text ground-truth models: they load, solve their task, AttnLRP finds the evidence, books close."""

from __future__ import annotations

import copy

import pytest
import torch

import lxt_fx
from lxt_fx.evaluate import groundtruth as gt
from lxt_fx.evaluate.groundtruth import text
from lxt_fx.targets import Function

# AttnLRP mass-accuracy floors: about 0.1 under the mean measured on 256 held-out rows (benchmarks/results/groundtruth.md)
FLOORS = {"recall-llama": 0.8, "recall-gpt2": 0.85, "recall-mixtral": 0.68, "trigger-bert": 0.5, "copy-t5": 0.75}
TASKS = list(FLOORS)


@pytest.fixture(scope="module", params=TASKS)
def fixture(request: pytest.FixtureRequest) -> tuple[torch.nn.Module, gt.Task, gt.Sample]:
    model, task = gt.load(request.param)
    return model, task, task.sample(32, seed=31)


def test_every_text_task_is_registered() -> None:
    assert {"recall-llama", "recall-gpt2", "recall-mixtral", "trigger-bert", "copy-t5"} <= set(gt.tasks())


def test_accuracy_holds_on_32_held_out_examples(fixture) -> None:
    model, task, sample = fixture
    accuracy = (task.predict(model, sample.inputs) == sample.target).double().mean()
    assert accuracy >= 0.95


def test_attnlrp_mass_accuracy_is_above_its_floor(fixture) -> None:
    model, task, sample = fixture
    mass = gt.score(task.explain(model, sample), sample.mask)["mass"].mean()
    assert mass >= FLOORS[task.name]


def test_zero_bias_books_close_on_the_trained_model(fixture) -> None:
    model, task, sample = fixture
    rows = sample.rows(slice(0, 2))
    leaves = task.leaves(model, rows)
    inputs = {"inputs_embeds": leaves["tokens"], "attention_mask": rows.inputs["attention_mask"]}
    if "decoder_tokens" in leaves:
        inputs["decoder_inputs_embeds"] = leaves["decoder_tokens"]
    target = rows.target

    def picked(outputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return task.pick(outputs["logits"], rows.inputs).gather(1, target[:, None]).squeeze(1)

    report = lxt_fx.check(model, inputs, target=Function(picked), zero_bias=True)
    assert report.verified, report.verdict


def test_mixtral_default_finds_more_evidence_than_the_generic_attnlrp() -> None:
    # the Mixtral default (the router's softmax held constant) against the generic AttnLRP, paired over the
    # same rows: the default must keep more positive relevance on the evidence (256 rows: see docs/groundtruth.md)
    model, task = gt.load("recall-mixtral")
    sample = task.sample(32, seed=12)
    default = gt.score(task.explain(model, sample), sample.mask)["mass"]
    generic = gt.score(task.explain(model, sample, composite=lxt_fx.attnlrp), sample.mask)["mass"]
    assert float((default - generic).mean()) > 0, (float(default.mean()), float(generic.mean()))


def test_recall_mask_is_the_queried_pair_and_the_query() -> None:
    task = gt.get("recall-gpt2")
    sample = task.sample(16, seed=3)
    ids, mask = sample.inputs["input_ids"], sample.mask["tokens"]
    for row, m, answer in zip(ids, mask, sample.target, strict=True):
        key_at, value_at, query_at = m.nonzero().flatten().tolist()
        assert row[key_at] == row[query_at] == row[-1] and row[value_at] == answer and value_at == key_at + 1
        assert row[-2] == text.QUERY
    assert not (sample.region["tokens"][:, [0, -2, -1]]).any()


def test_trigger_label_is_the_triggers_class_flipped_by_a_not_anywhere() -> None:
    task = gt.get("trigger-bert")
    sample = task.sample(64, seed=5)
    negated_rows = 0
    for row, m, label in zip(sample.inputs["input_ids"], sample.mask["tokens"], sample.target, strict=True):
        trig = [i for i in range(1, row.numel()) if 6 <= int(row[i]) < 6 + 2 * task.triggers]
        nots = [i for i in range(1, row.numel()) if int(row[i]) == text.NOT]
        assert len(trig) == 1 and len(nots) <= 1 and int(row[0]) == text.CLS
        cls = (int(row[trig[0]]) - 6) // task.triggers
        assert int(label) == cls ^ len(nots)
        assert m.nonzero().flatten().tolist() == sorted(trig + nots)
        negated_rows += len(nots)
    assert 16 <= negated_rows <= 48
    assert not sample.region["tokens"][:, 0].any() and sample.region["tokens"][:, 1:].all()


def test_trigger_without_its_trigger_is_none_and_without_its_not_is_unflipped() -> None:
    model, task = gt.load("trigger-bert")
    sample = task.sample(32, seed=9)
    ids = sample.inputs["input_ids"]
    trigger = (ids >= 6) & (ids < 6 + 2 * task.triggers)
    no_trigger = {**sample.inputs, "input_ids": ids.masked_fill(trigger, text.BLANK)}
    assert (task.predict(model, no_trigger) == 2).all()
    no_not = {**sample.inputs, "input_ids": ids.masked_fill(ids == text.NOT, text.BLANK)}
    negated = (ids == text.NOT).any(1)
    unflipped = torch.where(negated, 1 - sample.target, sample.target)
    assert (task.predict(model, no_not) == unflipped).all()


def test_copy_target_is_the_mapped_source_token_at_the_explained_step() -> None:
    task = gt.get("copy-t5")
    sample = task.sample(16, seed=7)
    step = sample.inputs["decoder_attention_mask"].sum(1) - 1
    rows = torch.arange(16)
    assert (sample.mask["tokens"].nonzero()[:, 1] == step).all()
    torch.testing.assert_close(sample.target, task.mapping[sample.inputs["input_ids"][rows, step]])


def test_the_same_seed_gives_the_same_sample() -> None:
    for name in ("recall-llama", "recall-gpt2", "recall-mixtral", "trigger-bert", "copy-t5"):
        a, b = gt.get(name).sample(8, seed=1), gt.get(name).sample(8, seed=1)
        assert all(torch.equal(a.inputs[k], b.inputs[k]) for k in a.inputs) and torch.equal(a.target, b.target)


def test_position_token_pairs_equal_the_token_map_where_nothing_is_added() -> None:
    model, task = gt.load("recall-llama")
    sample = task.sample(4, seed=2)
    torch.testing.assert_close(task.explain_positions(model, sample)["tokens"], task.explain(model, sample)["tokens"],
                               rtol=1e-4, atol=1e-5)


def test_position_token_pairs_equal_the_map_of_a_model_given_token_plus_position_as_its_input() -> None:
    task = gt.get("recall-gpt2")
    model = task.build(seed=3)
    sample = task.sample(3, seed=4)
    ids = sample.inputs["input_ids"]
    folded = copy.deepcopy(model)
    with torch.no_grad():
        folded.transformer.wpe.weight.zero_()
        h0 = (model.transformer.wte(ids) + model.transformer.wpe(torch.arange(ids.shape[1]))[None]).detach()
    h0.requires_grad_(True)
    with lxt_fx.attnlrp.context(folded), torch.enable_grad():
        logit = folded(inputs_embeds=h0, use_cache=False).logits[:, -1].gather(1, sample.target[:, None]).sum()
        (grad,) = torch.autograd.grad(logit, h0)
    torch.testing.assert_close(task.explain_positions(model, sample)["tokens"], (h0 * grad).sum(-1).detach(),
                               rtol=1e-4, atol=1e-5)
    shares = task.absorption(model, sample)
    assert set(shares) == {"first", "kept", "position"} and ((shares["position"] >= 0) & (shares["position"] <= 1)).all()
