"""Quantized weights the capture can and cannot trace.

torchao's weight-only configs (``Int8WeightOnlyConfig``, ``IntxWeightOnlyConfig(weight_dtype=torch.int4)``)
store weights as traceable tensor subclasses: ``torch.export`` unwraps them into the dequantizing ops
(``torchao.dequantize_affine``, a scale product) that act on the weight only, followed by an ordinary
``mm`` / ``linear`` with the activation. Those ops are off the relevance path, so the matmul is the linear
ε-rule (plain gradient) with the dequantized weight: the relevance is the float model's with the
dequantized weights.

bitsandbytes' layers (``Linear8bitLt``, ``Linear4bit``) keep their weights in ``Int8Params`` / ``Params4bit``,
Python subclasses whose quantization state lives in attributes (``CB``, ``SCB``, ``quant_state``) that
``torch.export``'s fake tensors do not carry: the export fails inside bitsandbytes. :func:`check_traceable`
says so up front with :class:`QuantizedWeightsError`.
"""

from __future__ import annotations

from torch import nn

from .errors import LXTError


class QuantizedWeightsError(LXTError):
    """The model holds quantized weights of a kind ``torch.export`` cannot trace (bitsandbytes)."""


def check_traceable(model: nn.Module) -> None:
    """Raise :class:`QuantizedWeightsError` naming the first bitsandbytes-quantized weight of ``model``."""
    for name, param in model.named_parameters():
        if type(param).__module__.startswith("bitsandbytes"):
            raise QuantizedWeightsError(
                f"{type(model).__name__}.{name} is a bitsandbytes {type(param).__name__}: torch.export cannot "
                "trace it (its quantization state lives in Python attributes that export's fake tensors do not "
                "carry). Quantize with torchao instead (quantize_(model, Int8WeightOnlyConfig()) or "
                "IntxWeightOnlyConfig(weight_dtype=torch.int4)), or load the model unquantized")
