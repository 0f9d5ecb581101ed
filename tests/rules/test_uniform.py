"""Uniform rule (Prop. 3.2 / 3.3): GxI form == explicit form == the paper's closed form.

Element-wise product: ``R_a = R_b = R_y / 2``. Bilinear matmul: ``N = R_y / (2y + ε·sign(y))``,
``R_A = (N Bᵀ) ⊙ A``, ``R_B = (Aᵀ N) ⊙ B``. float64 throughout. The explicit form always stabilizes with
at least ε = 1e-12 while the GxI form with ε = 0 does not, so those two are compared with rtol 1e-6."""

from __future__ import annotations

import torch
from helpers import gxi_and_explicit
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.testing import assert_close

from lxt_fx.rules import Uniform

aten = torch.ops.aten
F64 = torch.float64



def sign1(t: torch.Tensor) -> torch.Tensor:
    return torch.where(t >= 0, 1.0, -1.0).to(t.dtype)


def closed_matmul(a: torch.Tensor, b: torch.Tensor, y: torch.Tensor, r_y: torch.Tensor,
                  eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    n = r_y / (2 * y + eps * sign1(y))
    return (n @ b.transpose(-2, -1)) * a, (a.transpose(-2, -1) @ n) * b


def test_gxi_scales() -> None:
    assert Uniform().gxi(aten.mul.Tensor, (0, 1))[1] == {"scales": (0.5, 0.5)}
    assert Uniform().gxi(aten.mul.Tensor, (1,))[1] == {"scales": (1.0, 1.0)}
    assert Uniform(1e-3).gxi(aten.mm.default, (0, 1))[1] == {"scales": (0.5, 0.5), "epsilon": 1e-3}


def test_mul_halves_and_conserves() -> None:
    torch.manual_seed(0)
    a, b = torch.randn(3, 4, 5, dtype=F64), torch.randn(3, 4, 5, dtype=F64)
    y, r_y, gxi, ex = gxi_and_explicit(Uniform(), aten.mul.Tensor, (a, b), (0, 1))
    assert torch.equal(y, a * b)
    for i in (0, 1):
        assert_close(gxi[i], r_y / 2, rtol=1e-12, atol=1e-15)
        assert_close(ex[i], r_y / 2, rtol=1e-6, atol=1e-12)
    assert_close(gxi[0] + gxi[1], r_y, rtol=1e-12, atol=1e-15)  # element-wise conservation


def test_mul_with_broadcast_sums_over_broadcast_dims() -> None:
    torch.manual_seed(1)
    a, b = torch.randn(2, 1, 6, dtype=F64), torch.randn(2, 5, 6, dtype=F64)  # routing weight × expert out
    _, r_y, gxi, ex = gxi_and_explicit(Uniform(), aten.mul.Tensor, (a, b), (0, 1))
    closed_a, closed_b = (r_y / 2).sum(1, keepdim=True), r_y / 2
    for got in (gxi, ex):
        assert_close(got[0], closed_a, rtol=1e-6, atol=1e-12)
        assert_close(got[1], closed_b, rtol=1e-6, atol=1e-12)
    assert_close(gxi[0].sum() + gxi[1].sum(), r_y.sum())


def test_mul_with_one_carrying_factor_is_plain_gradient() -> None:
    torch.manual_seed(2)
    a, c = torch.randn(4, 5, dtype=F64), torch.randn(4, 5, dtype=F64)  # c: a constant (RoPE table, scale)
    _, r_y, gxi, ex = gxi_and_explicit(Uniform(), aten.mul.Tensor, (a, c), (0,))
    assert ex[1] is None
    assert_close(gxi[0], r_y, rtol=1e-12, atol=1e-15)
    assert_close(ex[0], r_y, rtol=1e-6, atol=1e-12)


def test_matmul_three_forms() -> None:
    torch.manual_seed(3)
    cases = [(aten.mm.default, torch.randn(5, 7, dtype=F64), torch.randn(7, 4, dtype=F64)),
             (aten.bmm.default, torch.randn(2, 5, 7, dtype=F64), torch.randn(2, 7, 4, dtype=F64)),
             (aten.matmul.default, torch.randn(2, 3, 5, 7, dtype=F64), torch.randn(2, 3, 7, 4, dtype=F64))]
    for op, a, b in cases:
        for eps in (0.0, 0.1, 2.0):
            y, r_y, gxi, ex = gxi_and_explicit(Uniform(eps), op, (a, b), (0, 1))
            closed = closed_matmul(a, b, y, r_y, eps)
            for i in (0, 1):
                # GxI with ε > 0 uses the same stabilizer as the closed form: tight. ε = 0: see module doc.
                assert_close(gxi[i], closed[i], rtol=1e-10 if eps else 1e-12, atol=1e-12)
                assert_close(ex[i], closed[i], rtol=1e-10 if eps else 1e-6, atol=1e-9)
            if eps == 0.0:
                assert_close(gxi[0].sum() + gxi[1].sum(), r_y.sum())  # conservation as ε → 0


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 3), st.integers(1, 6), st.integers(1, 6), st.integers(1, 6),
       st.sampled_from([0.0, 1e-3, 0.5]), st.integers(0, 2**16))
def test_matmul_property(batch: int, m: int, k: int, n: int, eps: float, seed: int) -> None:
    torch.manual_seed(seed)
    a, b = torch.randn(batch, m, k, dtype=F64), torch.randn(batch, k, n, dtype=F64)
    y, r_y, gxi, ex = gxi_and_explicit(Uniform(eps), aten.matmul.default, (a, b), (0, 1))
    closed = closed_matmul(a, b, y, r_y, eps)
    scale = float(max(c.abs().max() for c in closed).clamp_min(1.0))
    for i in (0, 1):
        assert_close(gxi[i], closed[i], rtol=1e-8, atol=1e-10 * scale)
        assert_close(ex[i], closed[i], rtol=1e-6, atol=1e-8 * scale)


def test_baddbmm_added_term_keeps_its_share_and_factors_split_the_product() -> None:
    # BLOOM's ALiBi scores: y = β·bias + α·(q @ kᵀ). ε-rule: R_bias = β·bias ⊙ R_y / y, and q and k share
    # the product's α·(q @ kᵀ) ⊙ R_y / y with the bilinear closed form (written out here with N = R_y / (2y)).
    torch.manual_seed(7)
    bias, q, k = (torch.randn(3, 4, 5, dtype=F64), torch.randn(3, 4, 6, dtype=F64),
                  torch.randn(3, 6, 5, dtype=F64))
    beta, alpha = 0.7, 1.3
    op = aten.baddbmm.default
    y, r_y, gxi, ex = gxi_and_explicit(Uniform(), op, (bias, q, k), (0, 1, 2), {"beta": beta, "alpha": alpha})
    assert torch.equal(y, torch.baddbmm(bias, q, k, beta=beta, alpha=alpha))
    n = r_y / (2 * y)
    closed = {0: beta * bias * r_y / y, 1: alpha * (n @ k.transpose(-2, -1)) * q,
              2: alpha * (q.transpose(-2, -1) @ n) * k}
    for i in (0, 1, 2):
        assert_close(gxi[i], closed[i], rtol=1e-9, atol=1e-12)
        assert_close(ex[i], closed[i], rtol=1e-6, atol=1e-12)
    assert_close(sum(v.sum() for v in gxi.values()), r_y.sum())  # conserved
    # only one factor carries relevance: linear, so the uniform rule does not apply
    assert not Uniform().applies((0, 1), op) and Uniform().applies((1, 2), op) and Uniform().applies((0, 1, 2), op)
