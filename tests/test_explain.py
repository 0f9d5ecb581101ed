"""``explain`` (and ``check``) edge cases of the call itself: inference mode, input length limits."""

from __future__ import annotations

import pytest
import torch
from conftest import make_model

import lxt_fx


@pytest.fixture(scope="module")
def model():
    return make_model("llama")


def test_explain_inside_inference_mode_equals_outside(model) -> None:
    ids = torch.tensor([[3, 4, 5, 6, 7], [8, 9, 10, 11, 12]])
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    outside = lxt_fx.explain(model, ids, attention_mask=mask)
    with torch.inference_mode():
        inside = lxt_fx.explain(model, ids.clone(), attention_mask=mask.clone())  # inference tensors as inputs
        assert torch.is_inference_mode_enabled()  # the caller's mode is as it was
    assert not torch.is_inference_mode_enabled()
    torch.testing.assert_close(inside.relevance, outside.relevance, rtol=0, atol=0)
    assert torch.equal(inside.target_ids, outside.target_ids)
    with torch.inference_mode():
        report = lxt_fx.check(model, ids, zero_bias=False)
    assert report.score == lxt_fx.check(model, ids, zero_bias=False).score
