"""Stop rule: GxI form (detach) == explicit form (no relevance) — and the two places it is used:
the ``rsqrt`` of a decomposed RMSNorm (identity rule, Prop. 3.4) and the gate of CP-LRP. float64."""

from __future__ import annotations

import torch
from torch.nn import functional as F
from torch.testing import assert_close

from lxt_fx.rules import NormIdentity, Stop, Uniform

aten = torch.ops.aten
F64 = torch.float64


def test_stop_detaches_every_output_and_keeps_values() -> None:
    x = torch.randn(3, 4, dtype=F64, requires_grad=True)
    fn, extra = Stop().gxi(aten.rsqrt.default, (0,))
    y = fn(aten.rsqrt.default, x.abs(), **extra)
    assert not y.requires_grad and torch.equal(y, torch.rsqrt(x.abs()))
    values, indices = fn(aten.topk.default, x, 2)  # tuple outputs: tensors detached, type kept
    assert not values.requires_grad and torch.equal(values, torch.topk(x, 2).values)
    assert torch.equal(indices, torch.topk(x, 2).indices)
    assert fn(aten.sym_size.int, x, 0) == 3  # non-tensor outputs pass through
    assert Stop().stops
    assert Stop().explicit(aten.rsqrt.default, (x,), {}, y, torch.ones_like(y), (0,)) == [None]


def test_decomposed_rms_norm_with_stopped_rsqrt_is_identity() -> None:
    torch.manual_seed(0)
    x0, w = torch.randn(2, 5, 8, dtype=F64), torch.randn(8, dtype=F64)
    eps = 1e-6
    stop_fn, _ = Stop().gxi(aten.rsqrt.default, (0,))
    x = x0.clone().requires_grad_(True)
    # LLaMA's RMSNorm as the exporter sees it: x · rsqrt(mean(x²) + eps) · w, with the rsqrt stopped.
    y = x * stop_fn(aten.rsqrt.default, x.pow(2).mean(-1, keepdim=True) + eps) * w
    assert_close(y, F.rms_norm(x0, [8], w, eps), rtol=1e-14, atol=1e-14)
    g = torch.randn_like(y)
    (gx,) = torch.autograd.grad(y, x, g)
    r_y = y.detach() * g
    assert_close(x0 * gx, r_y, rtol=1e-12, atol=1e-14)  # R_x = R_y
    # ... the same relevance as the fused norm's NormIdentity rule.
    leaf = x0.clone().requires_grad_(True)
    fused = NormIdentity().gxi(aten.rms_norm.default, (0,))[0](aten.rms_norm.default, leaf, [8], w, eps)
    (gf,) = torch.autograd.grad(fused, leaf, g)
    assert_close(x0 * gf, x0 * gx, rtol=1e-12, atol=1e-14)


def test_cp_lrp_gate_stop() -> None:
    # Gated MLP with the gate branch stopped: silu(gate) is a constant, so R_up = R_y and R_gate = 0.
    torch.manual_seed(1)
    gate0, up0 = torch.randn(4, 6, dtype=F64), torch.randn(4, 6, dtype=F64)
    gate, up = gate0.clone().requires_grad_(True), up0.clone().requires_grad_(True)
    stopped = Stop().gxi(aten.silu.default, (0,))[0](aten.silu.default, gate)
    fn, extra = Uniform().gxi(aten.mul.Tensor, (1,))  # only `up` carries relevance
    y = fn(aten.mul.Tensor, stopped, up, **extra)
    g = torch.randn_like(y)
    y.backward(g)
    assert gate.grad is None
    assert_close(up0 * up.grad, y.detach() * g, rtol=1e-12, atol=1e-14)
