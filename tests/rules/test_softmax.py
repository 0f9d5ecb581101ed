"""Softmax deep-Taylor rule (Prop. 3.1): GxI form == explicit form == ``R_x = x ⊙ (R_y − s · Σ_dim R_y)``.

float64 unless stated. Masked logits (``−inf``, ``finfo.min``) must get exactly 0 relevance and no NaN."""

from __future__ import annotations

from typing import Any

import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.testing import assert_close

from lxt_fx.rules import SoftmaxDT

aten = torch.ops.aten
F64 = torch.float64
OPS = [(aten._softmax.default, (False,)), (aten.softmax.int, ()), (aten._safe_softmax.default, ())]


def closed(x: torch.Tensor, s: torch.Tensor, r_y: torch.Tensor, dim: int) -> torch.Tensor:
    return x * (r_y - s * r_y.sum(dim, keepdim=True))


def run(op: Any, x: torch.Tensor, dim: int, extra_args: tuple = (),
        g: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(s, R_y, GxI x ⊙ grad, explicit R_x) for softmax along ``dim``."""
    rule = SoftmaxDT()
    leaf = x.detach().clone().requires_grad_(True)
    fn, kw = rule.gxi(op, (0,))
    s = fn(op, leaf, dim, *extra_args, **kw)
    g = torch.randn_like(s) if g is None else g
    (gx,) = torch.autograd.grad(s, leaf, g)
    r_y = s.detach() * g
    ex = rule.explicit(op, (x, dim, *extra_args), {}, s.detach(), r_y, (0,))
    assert all(r is None for r in ex[1:])
    return s.detach(), r_y, x * gx, ex[0]


def test_three_forms_every_dim() -> None:
    torch.manual_seed(0)
    x = torch.randn(3, 4, 5, 6, dtype=F64) * 3
    for op, extra in OPS:
        for dim in (0, 1, 2, 3, -1, -2, -3):
            s, r_y, gxi, ex = run(op, x, dim, extra)
            assert torch.equal(s, torch.softmax(x, dim))
            c = closed(x, s, r_y, dim)
            assert_close(gxi, c, rtol=1e-12, atol=1e-14)
            assert_close(ex, c, rtol=1e-12, atol=1e-14)


def test_dim_is_respected_not_the_last_one() -> None:
    # The reference implementation summed over the last dim whatever `dim` was; the forms must not.
    torch.manual_seed(1)
    x = torch.randn(4, 5, dtype=F64)
    s, r_y, gxi, ex = run(aten._softmax.default, x, 0, (False,))
    wrong = closed(x, s, r_y, -1)
    assert (ex - wrong).abs().max() > 1e-3
    assert_close(ex, closed(x, s, r_y, 0))


@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(1, 6), min_size=1, max_size=4), st.data(), st.floats(0.1, 20.0),
       st.integers(0, 2**16))
def test_softmax_property(shape: list[int], data: st.DataObject, spread: float, seed: int) -> None:
    dim = data.draw(st.integers(-len(shape), len(shape) - 1))
    torch.manual_seed(seed)
    x = torch.randn(shape, dtype=F64) * spread
    s, r_y, gxi, ex = run(aten._softmax.default, x, dim, (False,))
    c = closed(x, s, r_y, dim)
    atol = 1e-12 * float(c.abs().max().clamp_min(1.0))
    assert_close(gxi, c, rtol=1e-9, atol=atol)
    assert_close(ex, c, rtol=1e-9, atol=atol)


def masked_logits(dtype: torch.dtype, fill: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(scores, mask with True = masked, masked logits z) along dim 1 of a (2, 7, 3) tensor."""
    g = torch.Generator().manual_seed(2)
    scores = torch.randn(2, 7, 3, generator=g).to(dtype)
    masked = torch.rand(2, 7, 3, generator=g) < 0.4
    masked[:, 0] = False  # no fully masked slice along dim 1
    if fill == "-inf":
        z = scores.masked_fill(masked, float("-inf"))
    else:  # an additive float mask, as HF builds it
        z = scores + torch.zeros_like(scores).masked_fill(masked, torch.finfo(dtype).min)
    return scores, masked, z


def test_masks_get_exactly_zero_and_no_nan() -> None:
    for dtype in (F64, torch.float32, torch.bfloat16):
        for fill in ("-inf", "finfo.min"):
            scores, masked, z = masked_logits(dtype, fill)
            # GxI through the masking op: relevance of the unmasked scores (the mask is a constant).
            leaf = scores.clone().requires_grad_(True)
            zz = leaf.masked_fill(masked, float("-inf")) if fill == "-inf" else leaf + (z - scores)
            s = SoftmaxDT().gxi(aten._softmax.default, (0,))[0](aten._softmax.default, zz, 1, False)
            g = torch.randn(s.shape, generator=torch.Generator().manual_seed(3)).to(dtype)
            (gz, gs) = torch.autograd.grad(s, [zz, leaf], g)
            r_scores = scores * gs
            r_y = s.detach() * g
            ex = SoftmaxDT().explicit(aten._softmax.default, (z, 1, False), {}, s.detach(), r_y, (0,))[0]
            assert torch.isfinite(gz).all() and torch.isfinite(ex).all() and torch.isfinite(r_scores).all()
            assert (s.detach()[masked] == 0).all()
            assert (ex[masked] == 0).all() and (r_scores[masked] == 0).all() and (gz[masked] == 0).all()
            if fill == "finfo.min":  # the masked logits are finite: x ⊙ grad is 0 there, not NaN
                assert ((z * gz)[masked] == 0).all()
            # Unmasked: z = scores (exactly for -inf; up to the rounding of scores + 0 otherwise).
            c = closed(scores.to(F64), s.detach().to(F64), r_y.to(F64), 1).masked_fill(masked, 0.0)
            tol = {F64: 1e-12, torch.float32: 1e-5, torch.bfloat16: 2**-5}[dtype]
            scale = float(c.abs().max())
            assert_close(ex.to(F64), c, rtol=0, atol=tol * scale)
            assert_close(r_scores.to(F64), c, rtol=0, atol=tol * scale)


def test_fully_masked_slice_safe_softmax() -> None:
    x = torch.randn(3, 4, dtype=F64)
    x[1] = float("-inf")  # a fully masked (padding) row: _safe_softmax gives 0 there, not NaN
    s, r_y, _, ex = run(aten._safe_softmax.default, x, -1)
    assert (s[1] == 0).all() and (ex[1] == 0).all() and torch.isfinite(ex).all()
    assert_close(ex[[0, 2]], closed(x, s, r_y, -1)[[0, 2]])


def test_bf16_within_bound() -> None:
    # Bound: s and s ⊙ g in bf16 carry a relative error ≤ 2^-8 each, and R_x = x ⊙ (R_y − s Σ R_y) cancels,
    # so the error is bounded relative to |x| · (|R_y| + s · Σ|R_y|) element-wise, not to |R_x|:
    # |R_bf16 − R_exact| ≤ 2^-5 · |x| · (|R_y| + s Σ|R_y|), with R_exact in float64 from the bf16 inputs.
    torch.manual_seed(4)
    x = (torch.randn(8, 16, 32) * 4).to(torch.bfloat16)
    g = torch.randn(8, 16, 32).to(torch.bfloat16)
    for dim in (-1, 1):
        s, r_y, gxi, ex = run(aten._softmax.default, x, dim, (False,), g=g)
        x64, g64 = x.to(F64), g.to(F64)
        s64 = torch.softmax(x64, dim)
        r64 = s64 * g64
        exact = closed(x64, s64, r64, dim)
        bound = 2**-5 * x64.abs() * (r64.abs() + s64 * r64.abs().sum(dim, keepdim=True))
        for got in (gxi, ex):
            assert got.dtype == torch.bfloat16 and torch.isfinite(got).all()
            assert ((got.to(F64) - exact).abs() <= bound).all()
