"""The ViT default is the generic AttnLRP; the LXT-style vision composite (CP-LRP + γ + z⁺) stays selectable
by object and by name."""

from __future__ import annotations

import functools

import pytest
import torch
import transformers as tf

import lxt_fx
from lxt_fx import composites
from lxt_fx.composites import registry


@functools.cache
def vit() -> torch.nn.Module:
    cfg = tf.ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=48,
                       image_size=16, patch_size=4, num_labels=3)
    torch.manual_seed(0)
    return tf.ViTForImageClassification(cfg).eval()


@pytest.fixture(scope="module", autouse=True)
def _free_model():
    yield
    vit.cache_clear()


PIXELS = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))


def test_vit_default_is_attnlrp() -> None:
    model = vit()
    assert "vit" not in composites.registered()
    assert composites.for_model(model) is lxt_fx.attnlrp
    assert composites.resolve_composite(None, model) is lxt_fx.attnlrp
    default = lxt_fx.explain(model, PIXELS)
    assert default.report.composite == lxt_fx.attnlrp.name
    explicit = lxt_fx.explain(model, PIXELS, composite=lxt_fx.attnlrp)
    torch.testing.assert_close(default.relevance, explicit.relevance, rtol=0, atol=0)


def test_vision_composite_is_selected_by_name_and_object() -> None:
    model = vit()
    assert composites.resolve_composite("vision", model) is composites.vision
    by_name = lxt_fx.explain(model, PIXELS, composite="vision")
    by_object = lxt_fx.explain(model, PIXELS, composite=composites.vision)
    assert by_name.report.composite == by_object.report.composite == composites.vision.name
    rules = {row.rule for row in by_name.report.rewritten}
    assert {"gamma", "zplus"} <= rules                    # γ on Linear, z⁺ on the patch embedding
    torch.testing.assert_close(by_name.relevance, by_object.relevance, rtol=0, atol=0)
    default = lxt_fx.explain(model, PIXELS)
    assert not torch.allclose(by_name.relevance, default.relevance)   # a different map, not AttnLRP


def test_registering_vision_for_vit_makes_it_the_default_again() -> None:
    model = vit()
    try:
        composites.register("vit", composites.vision)
        assert composites.for_model(model) is composites.vision
        assert lxt_fx.explain(model, PIXELS).report.composite == composites.vision.name
    finally:
        composites.unregister("vit")
        registry.register_defaults()
    assert composites.for_model(model) is lxt_fx.attnlrp
