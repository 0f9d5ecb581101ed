"""Quantized models: torchao weight-only int8 / int4 and bitsandbytes 8-/4-bit linear layers explain with the
relevance of the float model that holds the dequantized weights (their matmuls are linear in the activation)."""

from __future__ import annotations

import copy
import warnings

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


def _spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    ra, rb = a.flatten().argsort().argsort().double(), b.flatten().argsort().argsort().double()
    return float(torch.corrcoef(torch.stack([ra, rb]))[0, 1])


def _bnb_float_twin(model: torch.nn.Module, bnb) -> torch.nn.Module:
    """A float copy of ``model`` with each bitsandbytes layer replaced by an ``nn.Linear`` holding the weight
    dequantized by bitsandbytes' own Python API (not by lxt-fx's graph ops)."""
    plain = copy.deepcopy(model)
    for mod in list(plain.modules()):
        for cname, child in list(mod.named_children()):
            if isinstance(child, (bnb.nn.Linear8bitLt, bnb.nn.Linear4bit)):
                w = child.weight
                if isinstance(w, bnb.nn.Int8Params):  # LLM.int8: row-wise absmax, W = CB * SCB / 127
                    deq = w.data.float() * (w.SCB.float() / 127.0)[:, None]
                else:
                    deq = bnb.functional.dequantize_4bit(w.data, w.quant_state).float()
                lin = torch.nn.Linear(child.in_features, child.out_features, bias=child.bias is not None)
                lin.weight = torch.nn.Parameter(deq, requires_grad=False)
                if child.bias is not None:
                    lin.bias = torch.nn.Parameter(child.bias.detach().float().clone(), requires_grad=False)
                setattr(mod, cname, lin)
    return plain


@pytest.fixture(scope="module")
def tiny_llama_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-llama")
    make_model("llama").save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def float_relevance() -> torch.Tensor:
    """The unquantized tiny LLaMA's relevance (shared by the 8- and 4-bit cases)."""
    return lxt_fx.explain(make_model("llama"), IDS).relevance


@pytest.mark.parametrize("bits", [8, 4])
def test_bitsandbytes_through_transformers_is_the_dequantized_float_model(bits, tiny_llama_dir,
                                                                         float_relevance) -> None:
    bnb = pytest.importorskip("bitsandbytes")
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    config = (BitsAndBytesConfig(load_in_8bit=True) if bits == 8 else
              BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                 bnb_4bit_compute_dtype=torch.float32))
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, quantization_config=config, device_map="cpu",
                                                 dtype=torch.float32).eval()
    layer_class = bnb.nn.Linear8bitLt if bits == 8 else bnb.nn.Linear4bit
    layers = [m for m in model.modules() if isinstance(m, layer_class)]
    assert len(layers) == 14  # 7 linear layers in each of the 2 blocks (lm_head stays float)
    weights = {n: (type(p), p.dtype, p.data_ptr()) for n, p in model.named_parameters()}

    from lxt_fx.tracing.quantized import QuantizedApproximationWarning

    with warnings.catch_warnings(record=True) as caught:  # 8 bits: the int8 rounding of x is said, not hidden
        warnings.simplefilter("always")
        att = lxt_fx.explain(model, IDS, strict=True)
    said = [w for w in caught if issubclass(w.category, QuantizedApproximationWarning)]
    assert len(said) == (1 if bits == 8 else 0), [str(w.message) for w in caught]
    assert torch.isfinite(att.relevance).all()
    assert not any("forward" in m.__dict__ for m in layers)  # the layers' own forwards are back
    assert {n: (type(p), p.dtype, p.data_ptr()) for n, p in model.named_parameters()} == weights

    twin = _bnb_float_twin(model, bnb)
    assert not any(isinstance(m, layer_class) for m in twin.modules())
    reference = lxt_fx.explain(twin, IDS)
    assert att.target_ids == reference.target_ids
    torch.testing.assert_close(att.relevance, reference.relevance, rtol=1e-5, atol=1e-6)

    rho = _spearman(float_relevance, att.relevance)
    print(f"bitsandbytes {bits}-bit vs float model: Spearman {rho:.3f}")
    assert rho > (0.95 if bits == 8 else 0.6)


def _with_int8_up_proj(bnb, has_fp16_weights: bool):
    """A tiny LLaMA whose first MLP up-projection is a bitsandbytes 8-bit layer holding the same weights."""
    model = make_model("llama")
    layer = model.model.layers[0].mlp.up_proj
    q = bnb.nn.Linear8bitLt(layer.in_features, layer.out_features, bias=False, has_fp16_weights=has_fp16_weights)
    q.load_state_dict(layer.state_dict())
    model.model.layers[0].mlp.up_proj = q.to("cpu")
    return model, model.model.layers[0].mlp.up_proj


def test_bitsandbytes_layer_restored_after_a_failed_capture() -> None:
    bnb = pytest.importorskip("bitsandbytes")
    from lxt_fx.tracing.quantized import dequantizing

    model, q = _with_int8_up_proj(bnb, has_fp16_weights=False)
    marker = q.forward  # an instance attribute already there (as accelerate's hooks set one) is put back
    q.forward = marker
    with pytest.raises(RuntimeError, match="boom"), dequantizing(model) as n:
        assert n == 1 and q.forward is not marker
        raise RuntimeError("boom")
    assert q.__dict__["forward"] is marker
    del q.forward
    with dequantizing(model):
        pass
    assert "forward" not in q.__dict__


def test_bitsandbytes_weights_not_quantized_yet_are_a_named_error() -> None:
    bnb = pytest.importorskip("bitsandbytes")
    # has_fp16_weights=True keeps a float weight that bitsandbytes rounds to int8 on every call
    model, q = _with_int8_up_proj(bnb, has_fp16_weights=True)
    with pytest.raises(QuantizedWeightsError, match="up_proj.weight is a bitsandbytes Int8Params.*not quantized"):
        lxt_fx.explain(model, IDS)
    assert "forward" not in q.__dict__
