"""``ablate`` scales neurons in eager and rewritten forwards alike, against a forward hook that scales the
activation itself, and puts every weight back bit for bit, also after an exception."""

from __future__ import annotations

import pytest
import torch
from conftest import VOCAB, make_model

import lxt_fx
from lxt_fx import features


def _scaled_by_hook(model, path: str, is_input: bool, idx: list[int], scale: float, ids):
    module = model.get_submodule(path)

    def scale_channels(t):
        factor = torch.ones(t.shape[-1])
        factor[idx] = scale
        return t * factor

    handle = (module.register_forward_pre_hook(lambda _m, a: (scale_channels(a[0]),) + a[1:]) if is_input
              else module.register_forward_hook(lambda _m, _a, out: scale_channels(out)))
    try:
        with torch.no_grad():
            return model(ids).logits
    finally:
        handle.remove()


def test_ablate_matches_scaling_the_activation_eager_and_rewritten() -> None:
    model = make_model("llama", "sdpa")  # one model: the rewritten graph is captured once for all places
    ids = torch.randint(0, VOCAB, (2, 6))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        plain = model(ids).logits
    idx = [1, 4, 5]
    for place, scale in [("model.layers.0.mlp.down_proj:input", 0.0), ("model.layers.1.self_attn.o_proj:input", 0.0),
                         ("model.layers.0.mlp.up_proj", 0.5)]:
        want = _scaled_by_hook(model, place.removesuffix(":input"), place.endswith(":input"), idx, scale, ids)
        assert float((want - plain).abs().max()) > 1e-4
        with features.ablate(model, place, idx, scale=scale):
            with torch.no_grad():
                eager = model(ids).logits
            with lxt_fx.attnlrp.context(model):  # the rewritten graph shares the weights
                rewritten = model(ids).logits.detach()
        torch.testing.assert_close(eager, want, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(rewritten, want, rtol=1e-5, atol=1e-6)
        after = model.state_dict()
        assert all(torch.equal(before[k], after[k]) for k in before)


def test_ablate_restores_after_an_exception_and_rejects_bad_places() -> None:
    model = make_model("llama", "sdpa")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(RuntimeError, match="boom"):
        with features.ablate(model, "model.layers.0.mlp.down_proj:input", [0, 1]):
            assert float(model.model.layers[0].mlp.down_proj.weight.detach()[:, :2].abs().max()) == 0.0
            raise RuntimeError("boom")
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    with pytest.raises(features.PlaceError, match="outside"):
        features.ablate(model, "model.layers.0.mlp.down_proj:input", [48]).__enter__()
    with pytest.raises(features.PlaceError, match="holds no weights"):
        features.ablate(model, "model.layers.0.mlp", [0]).__enter__()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    model.lm_head.weight = model.model.embed_tokens.weight
    with pytest.raises(features.PlaceError, match="tied"):
        features.ablate(model, "lm_head", [0]).__enter__()
    assert torch.equal(model.model.embed_tokens.weight, before["model.embed_tokens.weight"])
