"""Quantized weights: what the capture traces, and how bitsandbytes layers become a float graph.

torchao's weight-only configs (``Int8WeightOnlyConfig``, ``IntxWeightOnlyConfig(weight_dtype=torch.int4)``)
store weights as traceable tensor subclasses: ``torch.export`` unwraps them into the dequantizing ops
(``torchao.dequantize_affine``, a scale product) that act on the weight only, followed by an ordinary
``mm`` / ``linear`` with the activation. Those ops are off the relevance path, so the matmul is the linear
ε-rule (plain gradient) with the dequantized weight: the relevance is the float model's with the
dequantized weights.

bitsandbytes' layers (``Linear8bitLt``, ``Linear4bit``) keep their quantization state in Python attributes
of the weight (``Int8Params.SCB``, ``Params4bit.quant_state``) that export's fake tensors do not carry, so
their own forward cannot be traced. :func:`dequantizing` gives each such layer, for the duration of the
export only, a forward that the export can follow::

    y = x · Ŵᵀ + b,   Ŵ = dequant(W_q)

- 8-bit (LLM.int8, row-wise absmax): ``Ŵ[o, i] = W_q[o, i] · SCB[o] / 127``
  (``bitsandbytes::int8_vectorwise_dequant``);
- 4-bit (NF4 / FP4, blockwise absmax): ``Ŵ = code[W_q] · absmax[block]``, with a nested (double-quantized)
  absmax dequantized first (``bitsandbytes::dequantize_blockwise`` + offset, then
  ``bitsandbytes::dequantize_4bit``).

The graph therefore holds the quantized weight (the model's own ``Parameter``) and its scale tensors,
dequantizes them on every forward (off the relevance path: no activation flows into them) and multiplies with
an ordinary ``aten.linear``: the rule is the linear rule on ``Ŵ``, and the relevance is that of the float
model holding ``Ŵ``. What the graph does *not* reproduce is the 8-bit layer's rounding of the activation to
int8 before its integer matmul (and its fp16 cast): a piecewise-constant step whose gradient bitsandbytes'
own backward also takes as the identity; the graph's logits can differ from the quantized model's by that
rounding. The layers' forwards are put back exactly after the export, also after an exception; nothing global
in torch, transformers or bitsandbytes changes.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator

import torch
from torch import Tensor, nn

from .errors import LXTError

_MISSING = object()
_LAYERS = ("Linear8bitLt", "Linear4bit", "LinearNF4", "LinearFP4")


class QuantizedApproximationWarning(UserWarning):
    """The explained graph of a bitsandbytes 8-bit model multiplies by the dequantized weight ``Ŵ`` in
    floating point; the layer's own forward first rounds the activation to int8, so the model's own logits
    differ from the explained forward by that rounding (about 0.3 % of the largest logit on a tiny LLaMA)."""


class QuantizedWeightsError(LXTError):
    """The model holds quantized weights of a kind lxt-fx cannot capture (a bitsandbytes layer other than a
    quantized ``Linear8bitLt`` / ``Linear4bit``)."""


def _is_bnb(obj: object) -> bool:
    return type(obj).__module__.startswith("bitsandbytes")


def bnb_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The bitsandbytes linear layers of ``model`` (name, module), in ``named_modules`` order."""
    return [(name, m) for name, m in model.named_modules()
            if _is_bnb(m) and any(cls.__name__ in _LAYERS for cls in type(m).__mro__)]


def _dequantizer(name: str, layer: nn.Module) -> Callable[[Tensor], Tensor]:
    """``weight -> Ŵ`` for one layer: its scale tensors and block sizes are read now, from the real weight;
    the traced forward passes the (fake) weight tensor only."""
    weight = layer.weight
    kind = type(weight).__name__
    if kind == "Int8Params":
        scb = getattr(weight, "SCB", None)
        if weight.dtype != torch.int8 or scb is None:
            raise QuantizedWeightsError(
                f"{name}.weight is a bitsandbytes Int8Params that is not quantized yet (dtype {weight.dtype}, "
                "SCB missing; has_fp16_weights=True keeps float weights and quantizes them on every call). Load "
                "it with has_fp16_weights=False and move it to its device (.to('cuda') / .to('cpu')), which "
                "quantizes it, or load the model unquantized")
        return lambda w: torch.ops.bitsandbytes.int8_vectorwise_dequant(w, scb)
    if kind == "Params4bit":
        state = getattr(weight, "quant_state", None)
        if state is None:
            raise QuantizedWeightsError(
                f"{name}.weight is a bitsandbytes Params4bit that is not quantized yet (no quant_state). Move the "
                "layer to its device (.to('cuda') / .to('cpu')), which quantizes it, or load the model unquantized")
        absmax, shape = state.absmax, list(state.shape)
        nested = state.state2 if getattr(state, "nested", False) else None
        offset = state.offset

        def four_bit(w: Tensor) -> Tensor:
            scale = absmax
            if nested is not None:
                scale = torch.ops.bitsandbytes.dequantize_blockwise(absmax, nested.absmax, nested.code,
                                                                    nested.blocksize, torch.float32) + offset
            return torch.ops.bitsandbytes.dequantize_4bit(w, scale, state.blocksize, state.quant_type, shape,
                                                          state.dtype)
        return four_bit
    raise QuantizedWeightsError(
        f"{name}.weight is a bitsandbytes {kind}, which lxt-fx does not know how to dequantize (it knows "
        "Int8Params and Params4bit). Load the model unquantized, or quantize with torchao")


def _traceable_forward(layer: nn.Module, dequant: Callable[[Tensor], Tensor]) -> Callable[[Tensor], Tensor]:
    def forward(x: Tensor) -> Tensor:
        bias = layer.bias
        return nn.functional.linear(x, dequant(layer.weight).to(x.dtype),
                                    None if bias is None else bias.to(x.dtype))
    return forward


def check_traceable(model: nn.Module) -> None:
    """Raise :class:`QuantizedWeightsError` naming the first bitsandbytes weight that :func:`dequantizing`
    cannot turn into a float graph (one outside a bitsandbytes linear layer, or one not quantized yet)."""
    inside = {id(m.weight) for _, m in bnb_layers(model)}
    for name, param in model.named_parameters():
        if _is_bnb(param) and id(param) not in inside:
            raise QuantizedWeightsError(
                f"{type(model).__name__}.{name} is a bitsandbytes {type(param).__name__} outside a "
                "Linear8bitLt / Linear4bit layer: lxt-fx cannot capture it. Load the model unquantized, or "
                "quantize with torchao (quantize_(model, Int8WeightOnlyConfig()))")
    for name, layer in bnb_layers(model):
        _dequantizer(name, layer)


@contextlib.contextmanager
def dequantizing(model: nn.Module) -> Iterator[int]:
    """Within the block, every bitsandbytes linear layer of ``model`` computes ``x · Ŵᵀ + b`` with the
    dequantized weight ``Ŵ`` (see the module docstring), in ops ``torch.export`` can trace; yields how many
    layers that is. Each layer's ``forward`` attribute is restored on exit exactly as it was (an instance
    attribute such as an accelerate wrapper is put back, none is left behind), also after an exception.
    Raises :class:`QuantizedWeightsError` before changing anything if a bitsandbytes weight cannot be
    dequantized."""
    check_traceable(model)
    layers = bnb_layers(model)
    forwards = [(layer, _traceable_forward(layer, _dequantizer(name, layer))) for name, layer in layers]
    int8 = [name for name, layer in layers if type(layer).__name__ == "Linear8bitLt"]
    if int8:
        warnings.warn(f"{len(int8)} bitsandbytes 8-bit layer(s) ({int8[0]}, ...) are explained as x · Ŵᵀ with the "
                      "dequantized weight; their own forward also rounds x to int8, so the model's logits differ "
                      "from the explained forward by that rounding. Load in 4 bits or with torchao's "
                      "Int8WeightOnlyConfig for an explained forward equal to the model's",
                      QuantizedApproximationWarning, stacklevel=3)
    saved = [(layer, layer.__dict__.get("forward", _MISSING)) for layer, _ in forwards]
    try:
        for layer, forward in forwards:
            layer.forward = forward
        yield len(forwards)
    finally:
        for layer, before in saved:
            if before is _MISSING:
                layer.__dict__.pop("forward", None)
            else:
                layer.forward = before
