"""The audio and vision-language ground-truth tasks: tones-whisper and colour-vlm, on their shipped weights."""

from __future__ import annotations

import pytest
import torch

import lxt_fx
from lxt_fx.evaluate import groundtruth as gt
from lxt_fx.evaluate.groundtruth.audio import EVENT, FRAMES, MEL, draw
from lxt_fx.evaluate.groundtruth.vlm import GRID, SHAPE_AT, ColourVLM

# AttnLRP mass accuracy floors, set below what the shipped models measure (see the module docstrings' tables)
FLOORS = {"tones-whisper": 0.7, "colour-vlm": 0.6}


@pytest.fixture(scope="module", params=["tones-whisper", "colour-vlm"])
def loaded(request: pytest.FixtureRequest) -> tuple:
    model, task = gt.load(request.param)
    return model, task, task.sample(32, seed=12_345)


def test_fixture_loads_and_accuracy_holds(loaded: tuple) -> None:
    model, task, sample = loaded
    assert not model.training
    # the prediction is the argmax of the explained score over labels: check against the model's own logits
    predicted = task.predict(model, sample.inputs)
    assert float((predicted == sample.target).double().mean()) >= 0.9


def test_forward_leaves_is_the_models_score(loaded: tuple) -> None:
    model, task, sample = loaded
    rows = sample.rows(slice(0, 4))
    with torch.no_grad():
        want = task.score(model, rows.inputs, rows.target)
        got = task.forward_leaves(model, rows, task.leaves(model, rows))
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_attnlrp_mass_above_floor(loaded: tuple) -> None:
    model, task, sample = loaded
    rows = sample.rows(slice(0, 16))
    maps = task.explain(model, rows)
    assert {k: tuple(v.shape) for k, v in maps.items()} == {k: tuple(v.shape) for k, v in rows.mask.items()}
    assert float(gt.score(maps, rows.mask)["mass"].mean()) > FLOORS[task.name]


def test_zero_bias_books_close(loaded: tuple) -> None:
    model, task, sample = loaded
    rows = sample.rows(slice(0, 1))
    target = int(rows.target[0])
    if task.name == "tones-whisper":
        ids = rows.inputs["decoder_input_ids"]
        embeds = model.get_decoder().get_input_embeddings()(ids).detach()
        call = {"input_features": rows.inputs["input_features"], "decoder_inputs_embeds": embeds,
                "decoder_attention_mask": torch.ones_like(ids)}
    else:
        call = ColourVLM.call(rows.inputs)
    books = lxt_fx.check(model, call, target=target).zero_bias
    assert books.verdict().verified, books.verdict().reason


def test_tones_draw_plants_one_rising_chirp() -> None:
    """The mask marks six frames whose loudest bins rise by one every two frames from the label's pitch."""
    x, pitch, mask = draw(8, torch.Generator().manual_seed(3))
    assert x.shape == (8, MEL, FRAMES) and (mask.sum(1) == EVENT).all()
    for b in range(8):
        frames = mask[b].nonzero().squeeze(1)
        bins = x[b][:, frames].argmax(0)
        torch.testing.assert_close(bins - bins[0], torch.arange(EVENT) // 2)
        assert int(bins[0]) - 4 == int(pitch[b])


def test_colour_vlm_mask_is_the_named_objects_patch() -> None:
    """Four patches per row, whose pixels carry the label's colour; the token mask is the shape word."""
    task = gt.get("colour-vlm")
    sample = task.sample(8, seed=4)
    from lxt_fx.evaluate.groundtruth.vlm import COLOURS, FIRST_COLOUR

    assert (sample.mask["patches"].sum((1, 2)) == 4).all() and sample.mask["patches"].shape[1:] == (GRID, GRID)
    assert sample.mask["tokens"][:, SHAPE_AT].all() and sample.mask["tokens"].sum() == 8
    for b in range(8):
        i, j = (int(v) for v in sample.mask["patches"][b].nonzero()[0])
        patch = sample.inputs["pixel_values"][b, :, i * 4:(i + 1) * 4, j * 4:(j + 1) * 4].reshape(3, -1)
        colour = COLOURS[int(sample.target[b]) - FIRST_COLOUR]
        assert ((patch - colour[:, None]).abs().max(0).values < 1e-6).any()
