"""Conditional heatmaps are linear in the chosen set: partitions sum to the map through the place (the
unconditional map at a block output), and one batched backward equals one backward per concept."""

from __future__ import annotations

import pytest
import torch
from conftest import VOCAB, make_model

import lxt_fx
from lxt_fx import features


@pytest.fixture(scope="module")
def setup():
    model = make_model("llama", "sdpa", seed=3)
    ids = torch.randint(0, VOCAB, (1, 7), generator=torch.Generator().manual_seed(1))
    return model, ids


def _close(a: torch.Tensor, b: torch.Tensor, rel: float = 1e-5) -> None:
    scale = float(b.abs().sum())
    assert scale > 0 and float((a - b).abs().sum()) <= rel * scale, (a, b)


def test_partition_of_a_block_output_sums_to_the_unconditional_map(setup) -> None:
    model, ids = setup
    full = lxt_fx.explain(model, ids)
    perm = torch.randperm(32, generator=torch.Generator().manual_seed(0)).tolist()
    parts = [perm[:5], perm[5:19], perm[19:]]
    cond = features.conditional(model, ids, place="model.layers.0", neurons=parts)
    assert cond.relevance.shape == (3, 7)
    assert (cond.target_ids == full.target_ids[0]).all()
    _close(cond.relevance.sum(0), full.relevance[0])
    assert all(float((row - full.relevance[0]).abs().sum()) > 1e-3 * float(full.relevance.abs().sum())
               for row in cond.relevance)  # no part alone is the whole map
    empty = features.conditional(model, ids, place="model.layers.0", neurons=[])
    assert float(empty.relevance.abs().max()) == 0.0


def test_partition_of_mlp_neurons_sums_to_the_map_through_the_mlp(setup) -> None:
    model, ids = setup
    parts = [list(range(0, 10)), list(range(10, 30)), list(range(30, 48))]
    cond = features.conditional(model, ids, place="model.layers.1.mlp.down_proj:input", neurons=parts)
    through = features.conditional(model, ids, place="model.layers.1.mlp", neurons=list(range(32)))
    _close(cond.relevance.sum(0), through.relevance[0])
    full = lxt_fx.explain(model, ids)  # the MLP is not every path: the map through it is a part of the whole
    assert float((through.relevance[0] - full.relevance[0]).abs().sum()) > 1e-3 * float(full.relevance.abs().sum())
    # relevance reaching the place in each concept stays inside the concept's channels
    at = cond.latent("model.layers.1.mlp.down_proj:input")
    assert float(at[0, :, 10:].abs().max()) == 0.0 and float(at[0, :, :10].abs().sum()) > 0


def test_sixteen_concepts_in_one_backward_equal_sixteen_single_ones(setup) -> None:
    model, ids = setup
    concepts = [[c, (c + 7) % 48, (3 * c + 1) % 48] for c in range(16)]
    batched = features.conditional(model, ids, place="model.layers.0.mlp.down_proj:input", neurons=concepts)
    single = torch.cat([features.conditional(model, ids, place="model.layers.0.mlp.down_proj:input",
                                             neurons=c).relevance for c in concepts])
    torch.testing.assert_close(batched.relevance, single, rtol=1e-5, atol=1e-8)
    assert float(single.abs().sum()) > 0


def test_bad_neurons_and_places_raise_named_errors(setup) -> None:
    model, ids = setup
    with pytest.raises(features.PlaceError, match="outside"):
        features.conditional(model, ids, place="model.layers.0", neurons=[40])
    with pytest.raises(features.PlaceError, match="give one"):
        features.conditional(model, ids, place="model.layers.*", neurons=[0])
    with pytest.raises(lxt_fx.CaptureNameError, match="did you mean"):
        features.conditional(model, ids, place="model.layer.0", neurons=[0])
