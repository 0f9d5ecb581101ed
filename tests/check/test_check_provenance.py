"""NaN/Inf provenance: the first non-finite value (forward) or gradient (backward) is named with its
module path and source line."""

from __future__ import annotations

import torch
from check_models import SqrtNet
from conftest import VOCAB, make_model

from lxt_fx.check import check


def test_inf_in_one_layer_is_named() -> None:
    model = make_model("llama", "sdpa")
    with torch.no_grad():
        model.model.layers[1].mlp.up_proj.weight.fill_(1e38)
    report = check(model, torch.randint(0, VOCAB, (1, 6)), zero_bias=False)
    found = report.provenance.value
    assert found is not None and found.stage == "forward value"
    assert found.module_path == "model.layers.1.mlp.up_proj" and found.op == "aten.linear.default"
    assert "inf" in found.kind or "nan" in found.kind
    assert found.source.endswith(tuple("0123456789"))
    assert report.provenance.first is found and not report.ok
    assert "model.layers.1.mlp.up_proj" in str(report)


def test_gradient_that_overflows_in_backward_is_named() -> None:
    model = SqrtNet()
    report = check(model, {"inputs_embeds": torch.randn(1, 4, 16)}, zero_bias=False)
    p = report.provenance
    assert p.value is None  # the forward is finite …
    assert p.gradient is not None and p.gradient.via_module_path == "root"  # … sqrt's backward is not
    assert p.gradient.node == "relu" and p.gradient.module_path == "act"
    assert p.first is p.gradient


def test_finite_model_reports_nothing() -> None:
    report = check(make_model("llama", "sdpa"), torch.randint(0, VOCAB, (1, 5)), zero_bias=False)
    assert report.provenance.ok and report.provenance.checked_values > 50
