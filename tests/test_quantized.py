"""Quantized models: torchao weight-only int8 / int4 explain with the relevance of the float model that holds
the dequantized weights (their matmuls are linear in the activation); bitsandbytes is a named error."""

from __future__ import annotations

import copy

import pytest
import torch

import lxt_fx
from lxt_fx.tracing.quantized import QuantizedWeightsError
from tests.conftest import make_model

IDS = torch.tensor([[3, 17, 42, 5, 90, 7, 64, 11]])


def _dequantized(model: torch.nn.Module) -> torch.nn.Module:
    """A float copy of ``model`` whose every quantized weight is replaced by its dequantized value."""
    plain = copy.deepcopy(model)
    for module in plain.modules():
        for name, p in list(module._parameters.items()):
            if p is not None and type(p) is not torch.nn.Parameter and hasattr(p, "dequantize"):
                module._parameters[name] = torch.nn.Parameter(p.dequantize().float(), requires_grad=False)
    return plain


@pytest.mark.parametrize("bits", [8, 4])
def test_torchao_weight_only_is_the_dequantized_float_model(bits) -> None:
    ao = pytest.importorskip("torchao.quantization")
    from torchao.quantization.granularity import PerGroup

    model = make_model("llama")
    float_att = lxt_fx.explain(model, IDS)
    config = ao.Int8WeightOnlyConfig() if bits == 8 else ao.IntxWeightOnlyConfig(weight_dtype=torch.int4,
                                                                                  granularity=PerGroup(8))
    ao.quantize_(model, config)
    reference = _dequantized(model)
    assert all(type(p) is torch.nn.Parameter for p in reference.parameters())
    att = lxt_fx.explain(model, IDS, strict=True)  # strict: no op of the quantized path is left unhandled
    assert torch.isfinite(att.relevance).all()
    torch.testing.assert_close(att.relevance, lxt_fx.explain(reference, IDS).relevance, rtol=1e-4, atol=1e-5)
    # close to the float model's, as far as the quantization moved the weights
    r, q = float_att.relevance.flatten(), att.relevance.flatten()
    assert torch.corrcoef(torch.stack([r, q]))[0, 1] > (0.999 if bits == 8 else 0.95)


def test_bitsandbytes_weights_are_a_named_error() -> None:
    bnb = pytest.importorskip("bitsandbytes")
    model = make_model("llama")
    layer = model.model.layers[0].mlp.up_proj
    q = bnb.nn.Linear8bitLt(layer.in_features, layer.out_features, bias=False, has_fp16_weights=False)
    q.weight = bnb.nn.Int8Params(layer.weight.data.clone(), requires_grad=False, has_fp16_weights=False)
    model.model.layers[0].mlp.up_proj = q
    with pytest.raises(QuantizedWeightsError, match="bitsandbytes Int8Params.*torchao"):
        lxt_fx.explain(model, IDS)
