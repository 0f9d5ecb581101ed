"""Composites by name: one resolver behind every entry point."""

from __future__ import annotations

import pytest
import torch
from conftest import make_model

import lxt_fx
from lxt_fx import composites
from lxt_fx.composites import cp_lrp
from lxt_fx.features import conditional, heads

IDS = torch.tensor([[3, 4, 5, 6, 7]])


@pytest.fixture(scope="module")
def model():
    return make_model("llama")


def test_names_resolve_to_the_builtins() -> None:
    assert composites.resolve_composite("attnlrp") is lxt_fx.attnlrp
    assert composites.resolve_composite("cp_lrp") is cp_lrp
    assert composites.resolve_composite(None) is lxt_fx.attnlrp
    assert {"attnlrp", "cp_lrp", "vision", "dynamic_mask"} <= set(composites.named())


def test_explain_and_check_take_a_name(model) -> None:
    by_name = lxt_fx.explain(model, IDS, composite="cp_lrp")
    by_object = lxt_fx.explain(model, IDS, composite=cp_lrp)
    assert by_name.report.composite == "cp_lrp"
    torch.testing.assert_close(by_name.relevance, by_object.relevance, rtol=0, atol=0)
    assert not torch.equal(by_name.relevance, lxt_fx.explain(model, IDS).relevance)  # not attnlrp instead
    report = lxt_fx.check(model, IDS, composite="cp_lrp", zero_bias=False)
    assert report.composite == "cp_lrp"


def test_feature_functions_take_a_name(model) -> None:
    by_name = heads(model, IDS, composite="cp_lrp")
    torch.testing.assert_close(by_name, heads(model, IDS, composite=cp_lrp), rtol=0, atol=0)
    att = conditional(model, IDS, place="model.layers.0.mlp.down_proj:input", neurons=[0, 1], composite="cp_lrp")
    assert att.report.composite == "cp_lrp"


def test_generation_takes_a_name(model) -> None:
    from lxt_fx.generation import explain_continuation

    gen = explain_continuation(model, [3, 4, 5], [6, 7], composite="cp_lrp")
    assert gen.report.composite == "cp_lrp"


@pytest.mark.parametrize("bad", ["attnlpr", 3])
def test_an_unknown_name_lists_the_valid_ones(model, bad) -> None:
    with pytest.raises(lxt_fx.LXTError, match="attnlrp.*cp_lrp") as info:
        lxt_fx.explain(model, IDS, composite=bad)
    assert isinstance(info.value, composites.UnknownCompositeError) and isinstance(info.value, ValueError)
    with pytest.raises(composites.UnknownCompositeError):
        lxt_fx.check(model, IDS, composite=bad)
