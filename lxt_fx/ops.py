"""What lxt-fx knows about ATen ops: how torch-level callables map to them, and which need no rule.

In Gradient×Input form a linear op (with respect to its relevance-carrying inputs) needs no rule: plain
autograd is already ε-LRP with ε → 0. Selection ops (index, top-k, max, where, masked fill) are piecewise
linear: they route relevance and need none either. Everything else that carries relevance needs a rule.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import fx
from torch._ops import OpOverload, OpOverloadPacket
from torch._ops import ops as _ops

from .tracing.no_grad import grad_disabled_region

if TYPE_CHECKING:
    from .rules.base import Position

aten = _ops.aten

# torch functions, Tensor methods and Python operators → the ATen overload packets they lower to.
_TORCH_TO_ATEN: dict[Any, tuple[OpOverloadPacket, ...]] = {
    operator.matmul: (aten.matmul,), torch.matmul: (aten.matmul,), torch.Tensor.matmul: (aten.matmul,),
    torch.bmm: (aten.bmm,), torch.mm: (aten.mm,),
    operator.mul: (aten.mul,), torch.mul: (aten.mul,), torch.Tensor.mul: (aten.mul,),
    operator.add: (aten.add,), torch.add: (aten.add,), operator.truediv: (aten.div,), torch.div: (aten.div,),
    torch.softmax: (aten.softmax, aten._softmax, aten._safe_softmax),
    F.softmax: (aten.softmax, aten._softmax, aten._safe_softmax),
    torch.Tensor.softmax: (aten.softmax, aten._softmax, aten._safe_softmax),
    F.silu: (aten.silu,), F.gelu: (aten.gelu,), F.relu: (aten.relu,), torch.relu: (aten.relu,),
    F.leaky_relu: (aten.leaky_relu,), torch.tanh: (aten.tanh,), F.tanh: (aten.tanh,),
    torch.sigmoid: (aten.sigmoid,), F.sigmoid: (aten.sigmoid,), F.softplus: (aten.softplus,),
    F.elu: (aten.elu,), F.mish: (aten.mish,), F.hardswish: (aten.hardswish,),
    torch.exp: (aten.exp,), torch.rsqrt: (aten.rsqrt,), torch.sqrt: (aten.sqrt,),
    F.linear: (aten.linear,), F.layer_norm: (aten.layer_norm,), F.rms_norm: (aten.rms_norm,),
    F.scaled_dot_product_attention: (aten.scaled_dot_product_attention,),
    F.normalize: (aten.linalg_vector_norm, aten.norm),
}

SOFTMAX = frozenset({aten.softmax, aten._softmax, aten._safe_softmax})
ACTIVATIONS = frozenset({aten.silu, aten.gelu, aten.relu, aten.leaky_relu, aten.tanh, aten.sigmoid,
                         aten.softplus, aten.elu, aten.mish, aten.hardswish, aten.hardtanh, aten.hardsigmoid,
                         aten.relu6, aten.celu, aten.selu, aten.log_sigmoid, aten.erf, aten.expm1,
                         aten.square, aten.asinh, aten.acos})
# A scale computed from the input's magnitude that divides it (norm layers, L2-normalized queries/keys):
# treated as a constant, which is the identity rule through normalization (paper Prop. 3.4).
NORM_SCALES = frozenset({aten.rsqrt, aten.sqrt, aten.reciprocal, aten.var, aten.std, aten.linalg_vector_norm,
                         aten.norm})
# Multiplicative factors made with exp (SSM / linear-attention decays, attention-sink scales, routing
# weights from log-probabilities): constants, as MambaLRP detaches the SSM's input-dependent Ā.
DECAYS = frozenset({aten.exp, aten.logsumexp})
# Products: multilinear in their operands. ``einsum``, ``linalg_multi_dot`` and ``chain_matmul`` take them
# in a list argument (relevance-carrying positions ``(i, j)``, see :mod:`lxt_fx.rules.base`).
PRODUCTS = frozenset({aten.mul, aten.matmul, aten.bmm, aten.mm, aten.baddbmm, aten.einsum, aten.mul_,
                      aten.multiply, aten.addmm, aten.addbmm, aten.linalg_multi_dot, aten.chain_matmul})
# Products with an additive first argument: ``β·input + α·(b1 @ b2)``; only b1 and b2 are factors.
ADDITIVE_FIRST = frozenset({aten.baddbmm, aten.addmm, aten.addbmm})

# Linear in every relevance-carrying input (when products/divisions have at most one such input).
LINEAR = frozenset({
    aten.view, aten._unsafe_view, aten.reshape, aten.transpose, aten.permute, aten.expand, aten.expand_as,
    aten.slice, aten.select, aten.unsqueeze, aten.squeeze, aten.flatten, aten.unflatten, aten.contiguous,
    aten.clone, aten.alias, aten.t, aten.cat, aten.stack, aten.split, aten.split_with_sizes, aten.chunk,
    aten.unbind, aten.narrow, aten.embedding, aten.add, aten.sub, aten.rsub, aten.neg, aten.sum, aten.mean,
    aten.linear, aten.addmm, aten.conv1d, aten.conv2d, aten.conv3d, aten.convolution, aten.to,
    aten._to_copy, aten.type_as, aten.dropout, aten.pad, aten.constant_pad_nd, aten.repeat,
    aten.repeat_interleave, aten.roll, aten.flip, aten.lift_fresh_copy, aten.copy, aten.movedim,
    aten.view_as, aten.reshape_as, aten.diagonal, aten.tril, aten.triu, aten.cumsum, aten.avg_pool1d,
    aten.avg_pool2d, aten.adaptive_avg_pool1d, aten.adaptive_avg_pool2d, aten.index_add, aten.scatter_add,
    aten.new_zeros, aten.zeros_like, aten.ones_like, aten.full_like, aten.matmul, aten.mm, aten.bmm,
    aten.mul, aten.div, aten.baddbmm, aten.einsum, aten.index_put, aten.dropout_, aten.feature_dropout,
    aten.alpha_dropout, aten.unfold, aten.im2col, aten.col2im, aten.pixel_shuffle, aten.squeeze_copy,
    # in-place sums; batch norm in eval mode is an affine map with constant running statistics
    aten.add_, aten.sub_, aten.batch_norm, aten._native_batch_norm_legit_no_training,
    aten.concat, aten.concatenate, aten.upsample_nearest1d, aten.upsample_nearest2d, aten.upsample_bilinear2d,
    aten.upsample_bicubic2d, aten.upsample_linear1d, aten._upsample_bilinear2d_aa, aten.addbmm, aten.multiply,
    # ops that take their tensors in a list and only copy or rearrange them
    aten.hstack, aten.vstack, aten.dstack, aten.column_stack, aten.row_stack, aten.block_diag,
    aten.broadcast_tensors, aten.meshgrid, aten.cartesian_prod, aten.linalg_multi_dot, aten.chain_matmul,
    # Fourier transforms and the views between real and complex: linear over the reals (FNet's mixing is
    # ``fft_fftn(x).real``); relevance at a complex tensor is ``Re(x ⊙ conj(grad))`` (lxt_fx.taps)
    aten.fft_fft, aten.fft_ifft, aten.fft_fft2, aten.fft_ifft2, aten.fft_fftn, aten.fft_ifftn, aten.fft_rfft,
    aten.fft_irfft, aten.fft_rfft2, aten.fft_irfft2, aten.fft_rfftn, aten.fft_irfftn, aten.fft_hfft,
    aten.fft_ihfft, aten._fft_r2c, aten._fft_c2c, aten._fft_c2r, aten.real, aten.imag, aten.view_as_real,
    aten.view_as_complex, aten.conj, aten._conj, aten.resolve_conj, aten.conj_physical, aten.complex,
    # in-place writes of a value into (part of) a buffer: ``buf[..., :d].copy_(k)`` (MLA's key assembly)
    aten.copy_, aten.index_put_, aten.index_add_,
})
# Piecewise linear: pick or route entries without changing their value.
SELECTION = frozenset({aten.index, aten.index_select, aten.gather, aten.take_along_dim, aten.topk,
                       aten.max, aten.min, aten.amax, aten.amin, aten.where, aten.masked_fill, aten.sort,
                       aten.max_pool1d, aten.max_pool2d, aten.max_pool2d_with_indices, aten.clamp,
                       aten.clamp_min, aten.clamp_max, aten.maximum, aten.minimum, aten.masked_select,
                       aten.masked_scatter, aten.select_scatter, aten.slice_scatter, aten.abs,
                       aten.masked_fill_, aten.scatter, aten.scatter_})
# Ops that produce no relevance-carrying value (metadata, asserts, integer results).
IGNORED = frozenset({aten.sym_size, aten._assert_tensor_metadata, aten.detach, aten.argmax, aten.argmin,
                     aten.eq, aten.ne, aten.lt, aten.le, aten.gt, aten.ge, aten.isinf, aten.isnan,
                     aten.logical_not, aten.logical_and, aten.logical_or, aten.__and__, aten.__or__,
                     aten.bitwise_and, aten.bitwise_or, aten.bitwise_not, aten.sign, aten.floor_divide,
                     aten.any, aten.all, aten.arange, aten.zeros, aten.ones, aten.full, aten.empty,
                     aten._local_scalar_dense, aten.item, aten.sym_numel, aten.sym_stride,
                     aten.sym_storage_offset, aten.lt_, aten.eq_, aten.detach_,
                     aten.new_ones, aten.new_full, aten.new_empty})


# Arguments that give only a shape, dtype or device, never values: no relevance flows through them.
SHAPE_ONLY: dict[Any, frozenset[int]] = {
    **dict.fromkeys([aten.expand_as, aten.view_as, aten.reshape_as, aten.type_as], frozenset({1})),
    **dict.fromkeys([aten.zeros_like, aten.ones_like, aten.full_like, aten.empty_like, aten.rand_like,
                     aten.randn_like, aten.new_zeros, aten.new_ones, aten.new_full, aten.new_empty],
                    frozenset({0})),
    aten.copy_: frozenset({0}),  # the destination is overwritten: only its shape survives
}

# Ops (by schema name) that are linear in their first argument when the others are constants: the grouped
# matrix products of MoE experts — transformers' own fallback (float32) and ATen's kernel (bf16, and on CUDA,
# where transformers picks ``experts_implementation="grouped_mm"`` by default).
LINEAR_CUSTOM = frozenset({"transformers::grouped_mm_fallback", "aten::_grouped_mm"})


def is_linear_custom(target: Any) -> bool:
    """Whether ``target`` is a custom op known to be linear in its first argument."""
    return isinstance(target, OpOverload) and target.name() in LINEAR_CUSTOM


def factors(target: Any, carrying: Sequence[Position]) -> tuple[Position, ...]:
    """The relevance-carrying positions of a product ``target`` that are factors (not an added term).
    A position is an argument index or ``(index, element)`` inside a list argument (``einsum``)."""
    if packet(target) in ADDITIVE_FIRST:
        return tuple(i for i in carrying if i != 0)
    return tuple(carrying)


def grad_disabled(node: Any) -> bool:
    """A ``torch.no_grad()`` region the exporter kept as a higher-order op: its outputs carry nothing
    (:func:`lxt_fx.tracing.no_grad.grad_disabled_region`, which the capture uses too)."""
    return isinstance(node, fx.Node) and grad_disabled_region(node)


def writes_first_argument(op: Any) -> bool:
    """Whether ``op`` is an in-place ATen overload: its schema marks argument 0 as written (``mul_``)."""
    schema = getattr(op, "_schema", None)
    if schema is None or not schema.arguments:
        return False
    alias = schema.arguments[0].alias_info
    return bool(alias is not None and alias.is_write) and not schema.name.endswith("_out")


def returns_view(op: Any) -> bool:
    """Whether ``op``'s output aliases its first argument without writing it (``view``, ``transpose``)."""
    schema = getattr(op, "_schema", None)
    if schema is None or not schema.returns or not schema.arguments:
        return False
    alias = schema.returns[0].alias_info
    return alias is not None and not alias.is_write


# Ops that return their input itself (an alias, not a copy) when there is nothing to do: ``type_as`` / ``to``
# to the same dtype, ``contiguous`` of a contiguous tensor. Their schemas declare no alias, so an in-place
# write into their output (Gemma-3n: ``c = c.contiguous().type_as(x)``, later ``c[1:] += …``) may write
# their input.
MAY_RETURN_INPUT = frozenset({aten.type_as, aten.to, aten.contiguous})


def written_in_place(nodes: Any) -> set[str]:
    """Names of the fx nodes whose storage a later in-place op writes (``mul_`` on the node or on a view of
    it): a value read from them before that write must be copied to be kept. ``nodes``: a graph's nodes;
    a rewritten node's original op is read from ``meta["lxt_original_target"]``."""
    written: set[str] = set()
    for node in nodes:
        target = node.meta.get("lxt_original_target", node.target)
        if node.op != "call_function" or not writes_first_argument(target):
            continue
        args = node.args[1:] if "lxt_original_target" in node.meta else node.args
        base = args[0] if args else None
        while hasattr(base, "op"):
            written.add(base.name)
            origin = base.meta.get("lxt_original_target", base.target)
            if base.op == "call_function" and (origin is operator.getitem or returns_view(origin)
                                               or writes_first_argument(origin)):
                base = base.args[1] if "lxt_original_target" in base.meta else base.args[0]
            else:
                break
    return written


def packet(target: Any) -> Any:
    """The overload packet of an ATen overload (``aten.mul.Tensor`` → ``aten.mul``), else the target."""
    return target.overloadpacket if isinstance(target, OpOverload) else target


def normalize(target: Any) -> frozenset[Any]:
    """The ATen packets a pattern target means: ``operator.matmul``, ``torch.softmax``, ``F.silu`` or an
    ATen overload/packet itself. Unknown callables stand for themselves (e.g. custom ops)."""
    if isinstance(target, (OpOverload, OpOverloadPacket)):
        return frozenset({packet(target)})
    if target in _TORCH_TO_ATEN:
        return frozenset(_TORCH_TO_ATEN[target])
    same = torch_builtin_packet(target)
    return frozenset({same}) if same is not None else frozenset({target})


def torch_builtin_packet(target: Any) -> OpOverloadPacket | None:
    """The ATen packet of a torch builtin of the same name (``torch.sin`` → ``aten.sin``), else None."""
    name = getattr(target, "__name__", None)
    tensor_method = getattr(target, "__objclass__", None) is torch._C.TensorBase  # torch.Tensor.sin
    torch_function = isinstance(target, type(torch.sin)) and getattr(target, "__module__", None) in (
        None, "torch", "torch._C._VariableFunctions", "torch._C._nn")
    functional = callable(target) and getattr(target, "__module__", None) == "torch.nn.functional"
    if not name or not (tensor_method or torch_function or functional):
        return None
    found = getattr(aten, name, None)
    return found if isinstance(found, OpOverloadPacket) else None


def op_name(target: Any) -> str:
    """A short readable name: ``aten.mul.Tensor``, ``operator.getitem``, a function's qualified name."""
    if isinstance(target, OpOverload):
        return str(target)
    if isinstance(target, OpOverloadPacket):
        return f"aten.{target.__name__}"
    module = getattr(target, "__module__", "") or ""
    return f"{module}.{getattr(target, '__name__', repr(target))}".lstrip(".")
