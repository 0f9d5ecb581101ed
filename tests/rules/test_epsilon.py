"""ε-LRP (Eq. 8): GxI form == explicit form == ``R_x = x ⊙ Wᵀ(R_y / (y + ε·sign(y)))``, sign(0) = 1.

All in float64, so GxI and explicit agree to ~1e-12 (same stabilizer on both sides)."""

from __future__ import annotations

import torch
from helpers import gxi_and_explicit
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.nn import functional as F
from torch.testing import assert_close

from lxt_fx.rules import Epsilon

aten = torch.ops.aten
F64 = torch.float64



def sign1(t: torch.Tensor) -> torch.Tensor:
    return torch.where(t >= 0, 1.0, -1.0).to(t.dtype)


def closed_linear(x: torch.Tensor, w: torch.Tensor, y: torch.Tensor, r_y: torch.Tensor,
                  eps: float) -> torch.Tensor:
    return x * ((r_y / (y + eps * sign1(y))) @ w)


def test_linear_with_bias_three_forms() -> None:
    torch.manual_seed(0)
    x, w, b = torch.randn(2, 5, 7, dtype=F64), torch.randn(4, 7, dtype=F64), torch.randn(4, dtype=F64)
    for eps in (0.0, 1e-6, 0.1, 3.0):  # large ε so that the stabilizer really matters
        y, r_y, gxi, ex = gxi_and_explicit(Epsilon(eps), aten.linear.default, (x, w, b), (0,))
        assert_close(y, F.linear(x, w, b), rtol=0, atol=0)
        closed = closed_linear(x, w, y, r_y, eps)
        assert ex[1] is None and ex[2] is None
        assert_close(gxi[0], closed, rtol=1e-10, atol=1e-12)
        assert_close(ex[0], closed, rtol=1e-10, atol=1e-12)


def test_linear_without_bias_conserves_relevance_as_eps_goes_to_zero() -> None:
    torch.manual_seed(1)
    x, w = torch.randn(3, 6, dtype=F64), torch.randn(5, 6, dtype=F64)
    _, r_y, gxi, ex = gxi_and_explicit(Epsilon(0.0), aten.linear.default, (x, w, None), (0,))
    assert_close(gxi[0].sum(-1), r_y.sum(-1))
    assert_close(ex[0].sum(-1), r_y.sum(-1))
    # ε > 0 absorbs relevance: |Σ R_x| < |Σ R_y| row by row, never more.
    _, r_y, gxi, _ = gxi_and_explicit(Epsilon(1.0), aten.linear.default, (x, w, None), (0,))
    assert (gxi[0].sum(-1).abs() <= r_y.sum(-1).abs() + 1e-12).all()


def test_sign_of_zero_output_is_one_no_nan() -> None:
    x = torch.tensor([[0.0, 0.0], [1.0, -1.0]], dtype=F64)  # first row: y = 0 exactly
    w = torch.tensor([[1.0, 1.0], [2.0, 0.5]], dtype=F64)
    y, r_y, gxi, ex = gxi_and_explicit(Epsilon(1e-6), aten.linear.default, (x, w, None), (0,))
    assert (y[0] == 0).all() and (y[1, 0] == 0)
    for r in (gxi[0], ex[0]):
        assert torch.isfinite(r).all()
        assert_close(r, closed_linear(x, w, y, r_y, 1e-6), rtol=1e-10, atol=1e-12)
        assert (r[0] == 0).all()


def test_add_of_two_carrying_tensors() -> None:
    torch.manual_seed(2)
    a, b = torch.randn(4, 5, dtype=F64), torch.randn(4, 5, dtype=F64)
    for eps in (0.0, 0.5):
        y, r_y, gxi, ex = gxi_and_explicit(Epsilon(eps), aten.add.Tensor, (a, b), (0, 1))
        n = r_y / (y + eps * sign1(y))
        for i, t in ((0, a), (1, b)):
            assert_close(gxi[i], t * n)
            assert_close(ex[i], t * n)
        if eps == 0.0:
            assert_close(gxi[0] + gxi[1], r_y)  # element-wise conservation


@settings(max_examples=20, deadline=None)
@given(st.integers(1, 3), st.integers(1, 6), st.integers(1, 9), st.integers(1, 9), st.booleans(),
       st.sampled_from([0.0, 1e-6, 0.25]), st.integers(0, 2**16))
def test_linear_property(batch: int, seq: int, d_in: int, d_out: int, bias: bool, eps: float, seed: int) -> None:
    torch.manual_seed(seed)
    x, w = torch.randn(batch, seq, d_in, dtype=F64), torch.randn(d_out, d_in, dtype=F64)
    b = torch.randn(d_out, dtype=F64) if bias else None
    y, r_y, gxi, ex = gxi_and_explicit(Epsilon(eps), aten.linear.default, (x, w, b), (0,))
    closed = closed_linear(x, w, y, r_y, eps)
    # ε = 0: near-zero outputs make R_y / y large; compare relative to the largest relevance.
    atol = 1e-9 * float(closed.abs().max().clamp_min(1.0))
    assert_close(gxi[0], closed, rtol=1e-8, atol=atol)
    assert_close(ex[0], closed, rtol=1e-8, atol=atol)


def test_other_linear_ops_gxi_equals_explicit() -> None:
    torch.manual_seed(3)
    cases = [
        (aten.mm.default, (torch.randn(3, 4, dtype=F64), torch.randn(4, 5, dtype=F64)), {}),
        (aten.bmm.default, (torch.randn(2, 3, 4, dtype=F64), torch.randn(2, 4, 5, dtype=F64)), {}),
        (aten.addmm.default, (torch.randn(5, dtype=F64), torch.randn(3, 4, dtype=F64),
                              torch.randn(4, 5, dtype=F64)), {}),
        (aten.conv1d.default, (torch.randn(2, 3, 9, dtype=F64), torch.randn(4, 3, 3, dtype=F64),
                               torch.randn(4, dtype=F64)), {}),
        (aten.conv2d.default, (torch.randn(1, 2, 6, 6, dtype=F64), torch.randn(3, 2, 3, 3, dtype=F64),
                               None, [1, 1], [1, 1]), {}),
        (aten.sub.Tensor, (torch.randn(3, 4, dtype=F64), torch.randn(3, 4, dtype=F64)), {"alpha": 2.0}),
    ]
    for op, args, kwargs in cases:
        carrying = (1,) if op is aten.addmm.default else (0,)
        rule = Epsilon(0.01)
        assert rule.supports(op)
        _, _, gxi, ex = gxi_and_explicit(rule, op, args, carrying, kwargs)
        assert_close(gxi[carrying[0]], ex[carrying[0]], rtol=1e-10, atol=1e-12)
