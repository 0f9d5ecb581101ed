"""PA-LRP rules (Bakish et al. 2025): GxI form == explicit form == closed form, float64.

Eq. 5 (additive): ``R(E) = E ⊙ R_z / z``, ``R(P) = P ⊙ R_z / z``. Eq. 10 (rotary): the rotation
``q̃ = q ⊙ cos + rot(q) ⊙ sin`` gives ½ of ``R(q̃)`` to the tables and ½ to ``q``, checked on the whole
rotation written out with the rules (ε-split of the sum, uniform split of each product) against the
closed form ``R(cos) + R(sin) = ½ R(q̃)`` per element."""

from __future__ import annotations

import torch
from helpers import gxi_and_explicit
from torch.testing import assert_close

from lxt_fx.rules import AdditivePosition, RotaryPosition
from lxt_fx.rules.position import per_position, position_relevance

aten = torch.ops.aten
F64 = torch.float64


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    a, b = x.chunk(2, -1)
    return torch.cat([-b, a], -1)


def test_additive_closed_form_and_conservation() -> None:
    torch.manual_seed(0)
    e, p = torch.randn(2, 5, 8, dtype=F64), torch.randn(2, 5, 8, dtype=F64)
    y, r_y, gxi, ex = gxi_and_explicit(AdditivePosition(), aten.add.Tensor, (e, p), (0, 1))
    z = e + p
    for got in (gxi, ex):
        assert_close(got[0], e * r_y / z, rtol=1e-6, atol=1e-10)
        assert_close(got[1], p * r_y / z, rtol=1e-6, atol=1e-10)
    assert_close(gxi[0] + gxi[1], r_y, rtol=1e-12, atol=1e-12)  # element-wise: nothing absorbed


def test_additive_epsilon_absorbs_its_share() -> None:
    torch.manual_seed(1)
    e, p = torch.randn(3, 4, dtype=F64), torch.randn(3, 4, dtype=F64)
    _, r_y, gxi, ex = gxi_and_explicit(AdditivePosition(0.1), aten.add.Tensor, (e, p), (0, 1))
    z = e + p
    denominator = z + 0.1 * torch.where(z >= 0, 1.0, -1.0).to(F64)
    for got in (gxi, ex):
        assert_close(got[1], p * r_y / denominator, rtol=1e-6, atol=1e-10)


def test_rotary_product_halves() -> None:
    torch.manual_seed(2)
    q, cos = torch.randn(2, 3, 5, 8, dtype=F64), torch.randn(2, 3, 5, 8, dtype=F64)
    _, r_y, gxi, ex = gxi_and_explicit(RotaryPosition(), aten.mul.Tensor, (q, cos), (0, 1))
    for got in (gxi, ex):
        assert_close(got[0], r_y / 2, rtol=1e-6, atol=1e-12)
        assert_close(got[1], r_y / 2, rtol=1e-6, atol=1e-12)


def test_rotation_gives_half_to_the_position_eq10() -> None:
    """The whole rotation in GxI form (rule functions for both products, plain gradient through the sum and
    ``rot``): per element, the tables get exactly half of ``R(q̃) = q̃ ⊙ g``, and per position the token
    gets the other half (``rot`` moves relevance between the two halves of the head dim, so the token's half
    holds per position, not per element)."""
    torch.manual_seed(3)
    b, h, n, d = 2, 3, 6, 8
    q = torch.randn(b, h, n, d, dtype=F64, requires_grad=True)
    angle = torch.rand(n, d // 2, dtype=F64) * 6
    cos = torch.cat([angle.cos()] * 2, -1).expand(b, h, n, d).clone().requires_grad_(True)
    sin = torch.cat([angle.sin()] * 2, -1).expand(b, h, n, d).clone().requires_grad_(True)
    rule = RotaryPosition()
    fn, extra = rule.gxi(aten.mul.Tensor, (0, 1))
    rotated = fn(aten.mul.Tensor, q, cos, **extra) + fn(aten.mul.Tensor, rotate_half(q), sin, **extra)
    g = torch.randn_like(rotated)
    gq, gcos, gsin = torch.autograd.grad(rotated, (q, cos, sin), g)
    r_out = (rotated * g).detach()
    r_tables = (cos * gcos + sin * gsin).detach()
    r_token = (q * gq).detach()
    assert_close(r_tables, r_out / 2, rtol=1e-12, atol=1e-12)                      # Eq. 10, per element
    assert_close(r_token.sum(-1), r_out.sum(-1) / 2, rtol=1e-10, atol=1e-12)       # the token's half
    assert_close(per_position(r_tables), (r_out / 2).sum((1, 3)), rtol=1e-12, atol=1e-12)


def test_position_relevance_reduces_to_rows_and_positions() -> None:
    torch.manual_seed(4)
    table, grad = torch.randn(2, 4, 7, 3), torch.randn(2, 4, 7, 3)
    got = position_relevance(table, grad)
    assert got.shape == (2, 7)
    assert_close(got, torch.einsum("bhnd,bhnd->bn", table, grad))
    assert torch.equal(position_relevance(table, None), torch.zeros(2, 7))
