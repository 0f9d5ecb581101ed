"""Identity through the normalizing scale (Prop. 3.4): GxI form == explicit form == closed form.

RMSNorm: ``R_x = R_y``. LayerNorm: ``R_x = x ⊙ C(r · w · R_y / y)``, checked against the slow reference
``x ⊙ Jᵀ(R_y / y)`` with ``J`` the Jacobian matrix of the normalization with ``r`` held constant.
The forward must be the exact fused op. float64 unless stated."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.nn import functional as F
from torch.testing import assert_close

from lxt_fx.rules import NormIdentity

aten = torch.ops.aten
F64 = torch.float64


def run(op: Any, x: torch.Tensor, args: Sequence[Any], kwargs: dict[str, Any] | None = None,
        g: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(y, R_y, GxI x ⊙ grad, explicit R_x)."""
    kwargs = kwargs or {}
    rule = NormIdentity()
    leaf = x.detach().clone().requires_grad_(True)
    fn, extra = rule.gxi(op, (0,))
    y = fn(op, leaf, *args, **kwargs, **extra)
    g = torch.randn_like(y) if g is None else g
    (gx,) = torch.autograd.grad(y, leaf, g)
    r_y = y.detach() * g
    ex = rule.explicit(op, (x, *args), kwargs, y.detach(), r_y, (0,))
    assert all(r is None for r in ex[1:])
    return y.detach(), r_y, x * gx, ex[0]


def layer_norm_closed(x: torch.Tensor, shape: Sequence[int], w: torch.Tensor | None, b: torch.Tensor | None,
                      eps: float, r_y: torch.Tensor) -> torch.Tensor:
    """x ⊙ Jᵀ(R_y / y), J the (n × n) Jacobian of y = (x − μ) · r · w + b with r constant, per row."""
    n = 1
    for d in shape:
        n *= d
    rows = x.reshape(-1, n)
    wv = torch.ones(n, dtype=x.dtype) if w is None else w.reshape(n)
    bv = torch.zeros(n, dtype=x.dtype) if b is None else b.reshape(n)
    centring = torch.eye(n, dtype=x.dtype) - torch.full((n, n), 1.0 / n, dtype=x.dtype)
    out = torch.empty_like(rows)
    for i, row in enumerate(rows):
        r = 1.0 / torch.sqrt(((row - row.mean()) ** 2).mean() + eps)
        jac = r * torch.diag(wv) @ centring  # ∂y/∂x with r held constant
        y = jac @ row + bv
        out[i] = row * (jac.T @ (r_y.reshape(-1, n)[i] / y))
    return out.reshape(x.shape)


def test_rms_norm_three_forms_forward_exact_and_conservation() -> None:
    torch.manual_seed(0)
    x, w = torch.randn(2, 5, 8, dtype=F64), torch.randn(8, dtype=F64)
    for weight, eps in ((w, 1e-6), (None, None), (w, 0.1)):
        y, r_y, gxi, ex = run(aten.rms_norm.default, x, ([8], weight, eps))
        assert torch.equal(y, F.rms_norm(x, [8], weight, eps))
        assert_close(gxi, r_y, rtol=1e-12, atol=1e-14)  # closed form R_x = R_y
        assert_close(ex, r_y, rtol=1e-9, atol=1e-12)  # explicit divides by y + 1e-12 sign(y)
        assert_close(gxi.sum(-1), r_y.sum(-1))


def test_rms_norm_keyword_arguments_are_honoured() -> None:
    # weight and eps passed by keyword (as an fx graph may carry them) must reach the backward.
    torch.manual_seed(1)
    x, w = torch.randn(3, 6, dtype=F64), torch.randn(6, dtype=F64) * 3
    y, r_y, gxi, ex = run(aten.rms_norm.default, x, ([6],), {"weight": w, "eps": 1e-3})
    assert torch.equal(y, F.rms_norm(x, [6], w, 1e-3))
    assert_close(gxi, r_y, rtol=1e-12, atol=1e-14)
    assert_close(ex, r_y, rtol=1e-9, atol=1e-12)
    x2 = torch.randn(3, 4, 5, dtype=F64)
    w2, b2 = torch.randn(4, 5, dtype=F64), torch.randn(4, 5, dtype=F64)
    y, r_y, gxi, ex = run(aten.layer_norm.default, x2, ([4, 5],), {"weight": w2, "bias": b2, "eps": 0.5})
    assert torch.equal(y, F.layer_norm(x2, [4, 5], w2, b2, 0.5))
    c = layer_norm_closed(x2, [4, 5], w2, b2, 0.5, r_y)
    assert_close(gxi, c)
    assert_close(ex, c, rtol=1e-6, atol=1e-12)


def test_layer_norm_three_forms_forward_exact() -> None:
    torch.manual_seed(2)
    x = torch.randn(2, 3, 4, 5, dtype=F64) * 2 + 0.5
    for shape in ([5], [4, 5]):
        w, b = torch.randn(shape, dtype=F64), torch.randn(shape, dtype=F64)
        for weight, bias, eps in ((w, b, 1e-5), (None, None, 1e-5), (w, None, 0.3), (None, b, 1e-5)):
            y, r_y, gxi, ex = run(aten.layer_norm.default, x, (shape, weight, bias, eps))
            assert torch.equal(y, F.layer_norm(x, shape, weight, bias, eps))
            c = layer_norm_closed(x, shape, weight, bias, eps, r_y)
            assert_close(gxi, c, rtol=1e-9, atol=1e-12)
            assert_close(ex, c, rtol=1e-6, atol=1e-12)  # explicit divides by y + 1e-12 sign(y)


def test_layer_norm_without_bias_conserves() -> None:
    # y = C(x) r w is linear without bias and Σ_i x_i ∂y_j/∂x_i = y_j: relevance is conserved per row.
    torch.manual_seed(3)
    x, w = torch.randn(4, 7, dtype=F64), torch.randn(7, dtype=F64)
    _, r_y, gxi, _ = run(aten.layer_norm.default, x, ([7], w, None, 1e-5))
    assert_close(gxi.sum(-1), r_y.sum(-1))


@settings(max_examples=20, deadline=None)
@given(st.lists(st.integers(1, 4), min_size=0, max_size=2), st.integers(2, 9), st.booleans(), st.booleans(),
       st.integers(0, 2**16))
def test_norm_property(lead: list[int], d: int, affine: bool, layer: bool, seed: int) -> None:
    torch.manual_seed(seed)
    x = torch.randn([*lead, d], dtype=F64)
    w = torch.randn(d, dtype=F64) if affine else None
    if layer:
        b = torch.randn(d, dtype=F64) if affine else None
        y, r_y, gxi, ex = run(aten.layer_norm.default, x, ([d], w, b, 1e-5))
        c = layer_norm_closed(x, [d], w, b, 1e-5, r_y)
    else:
        y, r_y, gxi, ex = run(aten.rms_norm.default, x, ([d], w, 1e-6))
        c = r_y
    atol = 1e-10 * float(c.abs().max().clamp_min(1.0))
    assert_close(gxi, c, rtol=1e-7, atol=atol)
    assert_close(ex, c, rtol=1e-6, atol=atol)


def test_bf16_rms_norm_within_bound() -> None:
    # Bound: the GxI backward computes g · r · w in float32 and rounds once to bf16, x ⊙ grad rounds once
    # more (2 × 2^-9 relative); the bf16 forward y = x · r · w that defines R_y = y ⊙ g carries up to 3
    # roundings of 2^-9. So |R_x − R_y| ≤ 5 · 2^-9 < 2^-6 · |R_y| element-wise (observed: 0.6 · 2^-6).
    torch.manual_seed(4)
    x = torch.randn(4, 9, 64).to(torch.bfloat16)
    w = (torch.randn(64) * 2).to(torch.bfloat16)
    g = torch.randn(4, 9, 64).to(torch.bfloat16)
    y, _, gxi, ex = run(aten.rms_norm.default, x, ([64], w, 1e-6), g=g)
    r_y = y.to(F64) * g.to(F64)
    for got in (gxi, ex):
        assert got.dtype == torch.bfloat16 and torch.isfinite(got).all()
        assert ((got.to(F64) - r_y).abs() <= 2**-6 * r_y.abs() + 1e-30).all()


def test_supports() -> None:
    rule = NormIdentity()
    assert rule.supports(aten.layer_norm.default) and rule.supports(aten.rms_norm.default)
    assert not rule.supports(aten.native_layer_norm.default)


def group_norm_closed(x: torch.Tensor, groups: int, w: torch.Tensor | None, b: torch.Tensor | None, eps: float,
                      r_y: torch.Tensor) -> torch.Tensor:
    """x ⊙ Jᵀ(R_y / y) per sample, J the full Jacobian of the group norm with each group's r constant."""
    n, c = x.shape[:2]
    spatial = x[0, 0].numel()
    wv = torch.ones(c, dtype=x.dtype) if w is None else w
    bv = torch.zeros(c, dtype=x.dtype) if b is None else b
    out = torch.empty_like(x)
    size = c * spatial
    for s in range(n):
        flat = x[s].reshape(size)
        jac = torch.zeros(size, size, dtype=x.dtype)
        per = size // groups
        for g in range(groups):
            sl = slice(g * per, (g + 1) * per)
            part = flat[sl]
            r = 1.0 / torch.sqrt(((part - part.mean()) ** 2).mean() + eps)
            jac[sl, sl] = r * (torch.eye(per, dtype=x.dtype) - torch.full((per, per), 1.0 / per, dtype=x.dtype))
        scale = wv.repeat_interleave(spatial)
        jac = torch.diag(scale) @ jac
        y = jac @ flat + bv.repeat_interleave(spatial)
        out[s] = (flat * (jac.T @ (r_y[s].reshape(size) / y))).reshape(x[s].shape)
    return out


def test_group_norm_three_forms_forward_exact() -> None:
    # BiT / PoolFormer: aten.group_norm(x, groups, weight, bias, eps) over [N, C, *spatial].
    torch.manual_seed(5)
    x = torch.randn(2, 6, 3, 4, dtype=F64) * 1.5 + 0.3
    w, b = torch.randn(6, dtype=F64), torch.randn(6, dtype=F64)
    for groups, weight, bias in ((3, w, b), (1, None, None), (6, w, None), (2, None, b)):
        y, r_y, gxi, ex = run(aten.group_norm.default, x, (groups, weight, bias, 1e-5))
        assert torch.equal(y, F.group_norm(x, groups, weight, bias, 1e-5))
        c = group_norm_closed(x, groups, weight, bias, 1e-5, r_y)
        assert_close(gxi, c, rtol=1e-9, atol=1e-12)
        assert_close(ex, c, rtol=1e-6, atol=1e-12)
    y, r_y, gxi, _ = run(aten.group_norm.default, x.flatten(2), (3, w, None, 1e-5))  # [N, C, L], no bias
    assert_close(gxi.sum(), r_y.sum())  # linear without bias: conserved
