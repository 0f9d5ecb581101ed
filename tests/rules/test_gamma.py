"""γ-rule, both forms, against closed forms written here without lxt_fx.rules and without autograd.

* generalized (default, signed inputs; Andéol et al. 2021): with ``W↑ = W + γW⁺``, ``W↓ = W + γW⁻``,
  ``z_j ≥ 0``: ``c_ij = x_i⁺w↑_ij + x_i⁻w↓_ij``, ``d_j = Σ_i c_ij + b_j + γb_j⁺``; ``z_j < 0``: ``c_ij = x_i⁺w↓_ij +
  x_i⁻w↑_ij``, ``d_j = Σ_i c_ij + b_j + γb_j⁻``; ``R_i = Σ_j c_ij / stab(d_j) · R_j`` — computed by building
  every ``c_ij`` explicitly (einsum over i, j; im2col for convolutions);
* classic (``signed=False``): ``R_x = x ⊙ W_γᵀ (R_y / stab(z_γ))`` with ``W_γ = W + γW⁺``, ``b_γ = b + γb⁺``.

γ = 0 is the ε-rule in both; γ = ∞ (:class:`ZPlus`) is the z⁺ limit. All in float64.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.testing import assert_close

from lxt_fx.rules import Epsilon, Gamma
from lxt_fx.rules.gamma import ZPlus, gamma_args

aten = torch.ops.aten
F64 = torch.float64


def sign1(t: torch.Tensor) -> torch.Tensor:
    return torch.where(t >= 0, 1.0, -1.0).to(t.dtype)


def plus(p: torch.Tensor, g: float) -> torch.Tensor:
    return p + g * p.clamp(min=0)


def classic(gamma: float, eps: float = 1e-6) -> Gamma:
    return Gamma(gamma, eps, signed=False)


def run(rule, op, args, kwargs=None, seed=0):
    """(y, R_y, GxI relevance of the input, explicit relevance of the input) for a random g_y."""
    kwargs = kwargs or {}
    index = 1 if op is aten.addmm.default else 0
    leaves = [a.detach().clone().requires_grad_(True) if i == index else a for i, a in enumerate(args)]
    fn, extra = rule.gxi(op, (index,))
    y = fn(op, *leaves, **kwargs, **extra)
    g = torch.randn(y.shape, dtype=y.dtype, generator=torch.Generator().manual_seed(seed))
    (grad,) = torch.autograd.grad(y, leaves[index], g)
    r_y = y.detach() * g
    ex = rule.explicit(op, list(args), kwargs, y.detach(), r_y, (index,))
    assert all(r is None for i, r in enumerate(ex) if i != index)
    return y.detach(), r_y, args[index] * grad, ex[index]


# ---- closed forms ---------------------------------------------------------------------------------------


def closed_linear(x, w, b, r_y, gamma, eps):
    """Classic γ-rule, x [.., in], w [out, in], as a plain matrix formula."""
    wg = plus(w, gamma)
    z = x @ wg.T + (0 if b is None else plus(b, gamma))
    return x * ((r_y / (z + eps * sign1(z))) @ wg)


def closed_conv2d(x, w, b, r_y, gamma, eps, stride, padding):
    """Classic γ-rule for a convolution as im2col: z = W_γ · cols + b_γ; R_x = x ⊙ fold(W_γᵀ (R_y / stab(z)))."""
    n, _, h, wd = x.shape
    k = w.shape[-2:]
    cols = F.unfold(x, k, padding=padding, stride=stride)                # [n, c·kh·kw, L]
    wg = plus(w, gamma).reshape(w.shape[0], -1)                          # [out, c·kh·kw]
    z = wg @ cols + (0 if b is None else plus(b, gamma)[:, None])        # [n, out, L]
    s = r_y.reshape(n, w.shape[0], -1) / (z + eps * sign1(z))
    back = F.fold(wg.T @ s, (h, wd), k, padding=padding, stride=stride)  # Σ over every window
    return x * back


def contributions(xs, w, b, gamma):
    """Generalized γ: every c_ij and the denominators. xs [n, i, L] (L output positions sharing the weight),
    w [j, i], b [j] or None. Returns (c [n, i, j, L], bias term [n, j, L], z [n, j, L])."""
    if gamma == math.inf:  # the z⁺ limit: only the contributions with the output's sign
        w_up, w_down = w.clamp(min=0), w.clamp(max=0)
        b_up = b_down = None if b is None else (b.clamp(min=0), b.clamp(max=0))
    else:
        w_up, w_down = w + gamma * w.clamp(min=0), w + gamma * w.clamp(max=0)
        b_up = b_down = None if b is None else (b + gamma * b.clamp(min=0), b + gamma * b.clamp(max=0))
    xp, xn = xs.clamp(min=0), xs.clamp(max=0)
    c_pos = torch.einsum("nil,ji->nijl", xp, w_up) + torch.einsum("nil,ji->nijl", xn, w_down)
    c_neg = torch.einsum("nil,ji->nijl", xp, w_down) + torch.einsum("nil,ji->nijl", xn, w_up)
    z = torch.einsum("nil,ji->njl", xs, w) + (0 if b is None else b[None, :, None])
    positive = z >= 0
    c = torch.where(positive[:, None], c_pos, c_neg)
    if b is None:
        bias = torch.zeros_like(z)
    else:
        bias = torch.where(positive, b_up[0][None, :, None], b_down[1][None, :, None])
    return c, bias, z


def redistribute(c, bias, r_y, eps):
    """R_i = Σ_j c_ij / stab(Σ_i c_ij + bias_j) · R_j (Σ over j and the output positions sharing i)."""
    den = c.sum(1) + bias                                                 # [n, j, L]
    return (c / (den + eps * sign1(den))[:, None] * r_y[:, None]).sum(2)  # [n, i, L]


def closed_signed_linear(x, w, b, r_y, gamma, eps):
    """Generalized γ-rule for x [n, in] (or [.., in]), w [out, in]."""
    flat = x.reshape(-1, x.shape[-1], 1)
    c, bias, _ = contributions(flat, w, b, gamma)
    return redistribute(c, bias, r_y.reshape(-1, w.shape[0], 1), eps).reshape(x.shape)


def closed_signed_conv2d(x, w, b, r_y, gamma, eps, stride, padding):
    """Generalized γ-rule for a convolution: im2col columns are the inputs i of every output position;
    fold adds the relevance an input pixel gets from every window it is in (padding zeros get none)."""
    n, _, h, wd = x.shape
    k = w.shape[-2:]
    cols = F.unfold(x, k, padding=padding, stride=stride)                # [n, i, L]
    c, bias, _ = contributions(cols, w.reshape(w.shape[0], -1), b, gamma)
    r_cols = redistribute(c, bias, r_y.reshape(n, w.shape[0], -1), eps)  # [n, i, L]
    return F.fold(r_cols, (h, wd), k, padding=padding, stride=stride)


def both_signs(y: torch.Tensor) -> None:
    assert (y > 0).any() and (y < 0).any(), "the case must have outputs of both signs"


# ---- the generalized (default) form on signed inputs ---------------------------------------------------


@pytest.mark.parametrize("gamma", [0.0, 0.1, 0.25, 1.0, 100.0, math.inf])
@pytest.mark.parametrize("bias", [True, False])
def test_signed_linear_closed_form(gamma: float, bias: bool) -> None:
    torch.manual_seed(0)
    x, w = torch.randn(2, 5, 7, dtype=F64), torch.randn(4, 7, dtype=F64)
    b = torch.randn(4, dtype=F64) if bias else None
    assert (x < 0).any() and (x > 0).any()
    for eps in (1e-6, 0.3):
        y, r_y, gxi, ex = run(Gamma(gamma, eps), aten.linear.default, (x, w, b))
        assert torch.equal(y, F.linear(x, w, b))  # the forward is exact
        both_signs(y)
        closed = closed_signed_linear(x, w, b, r_y, gamma, eps)
        assert_close(gxi, closed, rtol=1e-9, atol=1e-12)
        assert_close(ex, closed, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("gamma", [0.0, 0.25, math.inf])
def test_signed_addmm_gpt2_conv1d_layout(gamma: float) -> None:
    torch.manual_seed(1)
    b, x, w = torch.randn(5, dtype=F64), torch.randn(3, 4, dtype=F64), torch.randn(4, 5, dtype=F64)  # w: [in, out]
    y, r_y, gxi, ex = run(Gamma(gamma, 1e-6), aten.addmm.default, (b, x, w))
    assert torch.equal(y, torch.addmm(b, x, w))
    both_signs(y)
    closed = closed_signed_linear(x, w.T, b, r_y, gamma, 1e-6)
    assert_close(gxi, closed, rtol=1e-9, atol=1e-12)
    assert_close(ex, closed, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("gamma", [0.0, 0.25, 100.0, math.inf])
@pytest.mark.parametrize("stride,padding", [(1, 0), (1, 1), (2, 1), (4, 0)])
def test_signed_conv2d_closed_form(gamma: float, stride: int, padding: int) -> None:
    torch.manual_seed(2)
    x, w, b = torch.randn(2, 3, 8, 8, dtype=F64), torch.randn(5, 3, 3, 3, dtype=F64), torch.randn(5, dtype=F64)
    if stride == 4:  # a ViT patch embedding: kernel = stride, no overlap
        w = torch.randn(5, 3, 4, 4, dtype=F64)
    args = (x, w, b, [stride, stride], [padding, padding])
    y, r_y, gxi, ex = run(Gamma(gamma, 1e-6), aten.conv2d.default, args)
    assert torch.equal(y, F.conv2d(x, w, b, stride, padding))
    both_signs(y)
    closed = closed_signed_conv2d(x, w, b, r_y, gamma, 1e-6, stride, padding)
    assert_close(gxi, closed, rtol=1e-9, atol=1e-12)
    assert_close(ex, closed, rtol=1e-9, atol=1e-12)


def test_signed_by_hand() -> None:
    # x = (−1, −2), w = (1, −1): z = 1 > 0. Classic γ = 2: W_γ = (3, −1), z_γ = −3 + 2 = −1 — the
    # denominator has crossed zero, R = (3, −2): a positive output explained by a sign-flipped split.
    # Generalized γ = 2: both x are negative, so c_i = x_i·w↓_i with w↓ = w + 2w⁻ = (1, −3):
    # c = (−1, 6), d = 5, R = (−0.2, 1.2) — the positive contribution x₂w₂ = 2 is favoured.
    x, w = torch.tensor([[-1.0, -2.0]], dtype=F64), torch.tensor([[1.0, -1.0]], dtype=F64)
    r_y = torch.ones(1, 1, dtype=F64)
    for rule, expected in ((Gamma(2.0, 0.0), [-0.2, 1.2]), (classic(2.0, 0.0), [3.0, -2.0]),
                           (ZPlus(0.0), [0.0, 1.0])):
        fn, extra = rule.gxi(aten.linear.default, (0,))
        leaf = x.clone().requires_grad_(True)
        y = fn(aten.linear.default, leaf, w, None, **extra)
        (g,) = torch.autograd.grad(y, leaf, r_y / y.detach())  # seed so that R_y = 1
        assert_close(x * g, torch.tensor([expected], dtype=F64), rtol=1e-12, atol=1e-12)
        ex = rule.explicit(aten.linear.default, [x, w, None], {}, y.detach(), r_y, (0,))[0]
        assert_close(ex, torch.tensor([expected], dtype=F64), rtol=1e-12, atol=1e-12)
    # a negative output: x = (1, 2), w = (1, −1), z = −1: favour the negative contribution x₂w₂ = −2
    # (γ = 1: w↓ = (1, −2) on x⁺: c = (1, −4), d = −3, R = (−1/3, 4/3) of R_y = 1)
    x = torch.tensor([[1.0, 2.0]], dtype=F64)
    y, r_y, gxi, ex = run(Gamma(1.0, 0.0), aten.linear.default, (x, w, None))
    expected = torch.tensor([[-1 / 3, 4 / 3]], dtype=F64) * r_y
    assert_close(gxi, expected, rtol=1e-12, atol=1e-12)
    assert_close(ex, expected, rtol=1e-12, atol=1e-12)


def test_signed_denominator_keeps_the_output_sign_classic_does_not() -> None:
    # On signed inputs the classic d_j = z_j + γ Σ_i x_i w_ij⁺ crosses zero for some outputs; the
    # generalized d_j = z_j + γ·(contributions of z_j's sign) never does, and |d_j| ≥ |z_j|.
    torch.manual_seed(6)
    x, w = torch.randn(64, 16, dtype=F64), torch.randn(8, 16, dtype=F64)
    c, bias, z = contributions(x[:, :, None], w, None, 1.0)
    d = (c.sum(1) + bias)[..., 0]
    z = z[..., 0]
    assert torch.all(torch.sign(d) == torch.sign(z)) and torch.all(d.abs() >= z.abs() - 1e-12)
    z_classic = x @ plus(w, 1.0).T
    assert (torch.sign(z_classic) != torch.sign(z)).float().mean() > 0.05  # the bug the default fixes
    # and through the rule: with R_y = y the generalized relevance is bounded by Σ_i |c_ij| / |d_j| ≤ …
    _, r_y, gxi, _ = run(Gamma(1.0, 0.0), aten.linear.default, (x, w, None))
    _, _, gxi_classic, _ = run(classic(1.0, 0.0), aten.linear.default, (x, w, None))
    assert float(gxi.abs().sum() / r_y.abs().sum()) < float(gxi_classic.abs().sum() / r_y.abs().sum())


@pytest.mark.parametrize("gamma", [0.0, 0.25, 3.0, math.inf])
def test_signed_conserves(gamma: float) -> None:
    # zero bias, ε = 0: Σ_i R_i = Σ_j R_j exactly; with a bias: Σ_i R_i = Σ_j R_j (1 − (b_j + γb_j^±) / d_j)
    torch.manual_seed(7)
    x, w, b = torch.randn(3, 6, 6, dtype=F64), torch.randn(4, 6, dtype=F64), torch.randn(4, dtype=F64)
    _, r_y, gxi, ex = run(Gamma(gamma, 0.0), aten.linear.default, (x, w, None))
    for r in (gxi, ex):
        assert_close(r.sum(), r_y.sum(), rtol=1e-10, atol=1e-12)
        assert_close(r.sum(-1), r_y.sum(-1), rtol=1e-10, atol=1e-12)  # per row, too
    _, r_y, gxi, _ = run(Gamma(gamma, 0.0), aten.linear.default, (x, w, b))
    c, bias, _ = contributions(x.reshape(-1, 6, 1), w, b, gamma)
    share = (bias / (c.sum(1) + bias))[..., 0].reshape(r_y.shape)
    assert_close(gxi.sum(), (r_y * (1 - share)).sum(), rtol=1e-10, atol=1e-12)
    conv = (torch.randn(2, 3, 8, 8, dtype=F64), torch.randn(4, 3, 4, 4, dtype=F64), None, [4, 4])
    _, r_y, gxi, ex = run(Gamma(gamma, 0.0), aten.conv2d.default, conv)
    assert_close(gxi.sum(), r_y.sum(), rtol=1e-10, atol=1e-12)
    assert_close(ex.sum(), r_y.sum(), rtol=1e-10, atol=1e-12)


def test_zplus_is_the_limit_of_large_gamma() -> None:
    torch.manual_seed(8)
    x, w, b = torch.randn(4, 9, dtype=F64), torch.randn(5, 9, dtype=F64), torch.randn(5, dtype=F64)
    _, r_y, zplus, _ = run(ZPlus(1e-9), aten.linear.default, (x, w, b))
    _, _, big, _ = run(Gamma(1e7, 1e-9), aten.linear.default, (x, w, b))
    assert_close(big, zplus, rtol=1e-5, atol=1e-6 * float(r_y.abs().max()))  # O(1/γ)
    assert ZPlus().name == "zplus" and ZPlus().gamma == math.inf and ZPlus().signed


@pytest.mark.parametrize("op,args", [
    (aten.linear.default, (torch.randn(3, 6, dtype=F64), torch.randn(4, 6, dtype=F64), torch.randn(4, dtype=F64))),
    (aten.conv2d.default, (torch.randn(1, 2, 5, 5, dtype=F64), torch.randn(3, 2, 3, 3, dtype=F64),
                           torch.randn(3, dtype=F64))),
])
@pytest.mark.parametrize("signed", [True, False])
def test_gamma_zero_is_the_epsilon_rule(op, args, signed: bool) -> None:
    for eps in (1e-6, 0.5):
        _, _, g_gamma, e_gamma = run(Gamma(0.0, eps, signed=signed), op, args)
        _, _, g_eps, e_eps = run(Epsilon(eps), op, args)
        assert_close(g_gamma, g_eps, rtol=1e-10, atol=1e-13)
        assert_close(e_gamma, e_eps, rtol=1e-10, atol=1e-13)


def test_default_is_the_generalized_form() -> None:
    assert Gamma().signed and Gamma(0.5).gxi(aten.linear.default, (0,))[1]["signed"] is True
    x, w = torch.randn(3, 6, dtype=F64), torch.randn(4, 6, dtype=F64)
    _, r_y, gxi, _ = run(Gamma(0.5, 1e-6), aten.linear.default, (x, w, None))
    assert_close(gxi, closed_signed_linear(x, w, None, r_y, 0.5, 1e-6), rtol=1e-9, atol=1e-12)
    assert (gxi - closed_linear(x, w, None, r_y, 0.5, 1e-6)).abs().max() > 1e-3  # not the classic one


# ---- the classic form (signed=False) --------------------------------------------------------------------


@pytest.mark.parametrize("gamma", [0.0, 0.1, 0.25, 1.0, 100.0])
@pytest.mark.parametrize("bias", [True, False])
def test_classic_linear_three_forms(gamma: float, bias: bool) -> None:
    torch.manual_seed(0)
    x, w = torch.randn(2, 5, 7, dtype=F64), torch.randn(4, 7, dtype=F64)
    b = torch.randn(4, dtype=F64) if bias else None
    for eps in (1e-6, 0.3):
        y, r_y, gxi, ex = run(classic(gamma, eps), aten.linear.default, (x, w, b))
        assert torch.equal(y, F.linear(x, w, b))  # the forward is exact
        closed = closed_linear(x, w, b, r_y, gamma, eps)
        assert_close(gxi, closed, rtol=1e-9, atol=1e-12)
        assert_close(ex, closed, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("gamma", [0.0, 0.25, 100.0])
def test_classic_addmm_gpt2_conv1d_layout(gamma: float) -> None:
    torch.manual_seed(1)
    b, x, w = torch.randn(5, dtype=F64), torch.randn(3, 4, dtype=F64), torch.randn(4, 5, dtype=F64)  # w: [in, out]
    y, r_y, gxi, ex = run(classic(gamma), aten.addmm.default, (b, x, w))
    assert torch.equal(y, torch.addmm(b, x, w))
    closed = closed_linear(x, w.T, b, r_y, gamma, 1e-6)
    assert_close(gxi, closed, rtol=1e-9, atol=1e-12)
    assert_close(ex, closed, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("gamma", [0.0, 0.25, 100.0])
@pytest.mark.parametrize("stride,padding", [(1, 0), (1, 1), (2, 1), (4, 0)])
def test_classic_conv2d_three_forms(gamma: float, stride: int, padding: int) -> None:
    torch.manual_seed(2)
    x, w, b = torch.randn(2, 3, 8, 8, dtype=F64), torch.randn(5, 3, 3, 3, dtype=F64), torch.randn(5, dtype=F64)
    if stride == 4:
        w = torch.randn(5, 3, 4, 4, dtype=F64)
    args = (x, w, b, [stride, stride], [padding, padding])
    y, r_y, gxi, ex = run(classic(gamma), aten.conv2d.default, args)
    assert torch.equal(y, F.conv2d(x, w, b, stride, padding))
    closed = closed_conv2d(x, w, b, r_y, gamma, 1e-6, stride, padding)
    assert_close(gxi, closed, rtol=1e-9, atol=1e-12)
    assert_close(ex, closed, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("signed", [True, False])
def test_conv1d_and_grouped_conv_gxi_equals_explicit(signed: bool) -> None:
    torch.manual_seed(3)
    cases = [
        (aten.conv1d.default, (torch.randn(2, 4, 9, dtype=F64), torch.randn(6, 4, 3, dtype=F64),
                               torch.randn(6, dtype=F64))),
        (aten.conv2d.default, (torch.randn(1, 4, 6, 6, dtype=F64), torch.randn(4, 2, 3, 3, dtype=F64), None,
                               [1, 1], [1, 1], [1, 1], 2)),  # groups = 2
    ]
    for op, args in cases:
        _, _, gxi, ex = run(Gamma(0.25, 1e-6, signed=signed), op, args)
        assert_close(gxi, ex, rtol=1e-9, atol=1e-12)


def test_classic_large_gamma_favours_positive_contributions() -> None:
    # x ≥ 0 and the relevance of a positive output: as γ grows, relevance concentrates on inputs with
    # positive weights (z⁺-rule); negative relevance shrinks. For x ≥ 0 both forms agree.
    torch.manual_seed(4)
    x = torch.rand(1, 8, dtype=F64)
    w = torch.randn(1, 8, dtype=F64)
    w[0, 0] = abs(w[0, 0]) + 1.0  # at least one positive weight
    neg = [float(run(classic(g, 1e-9), aten.linear.default, (x, w, None))[2].clamp(max=0).abs().sum())
           for g in (0.0, 1.0, 100.0)]
    _, r_y, gxi, _ = run(classic(1e6, 1e-9), aten.linear.default, (x, w, None))
    zplus = x * w.clamp(min=0)
    assert_close(gxi, zplus / zplus.sum() * r_y, rtol=1e-4, atol=1e-5 * float(r_y.abs().max()))  # O(1/γ)
    assert neg[0] >= neg[1] >= neg[2]
    if float(x @ w.T) >= 0:
        _, _, signed_gxi, _ = run(Gamma(3.0, 1e-9), aten.linear.default, (x, w, None))
        _, _, classic_gxi, _ = run(classic(3.0, 1e-9), aten.linear.default, (x, w, None))
        assert_close(signed_gxi, classic_gxi, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("signed", [True, False])
def test_zero_output_no_nan(signed: bool) -> None:
    x = torch.tensor([[0.0, 0.0], [1.0, -1.0]], dtype=F64)  # z = 0 exactly in both rows
    w = torch.tensor([[1.0, 1.0]], dtype=F64)
    for eps in (1e-6, 0.0):
        _, r_y, gxi, ex = run(Gamma(0.5, eps, signed=signed), aten.linear.default, (x, w, None))
        for r in (gxi, ex):
            assert torch.isfinite(r).all()
            if signed:  # 0/0 in the closed form (row 0, ε = 0): no contribution, no relevance
                assert_close(r, closed_signed_linear(x, w, None, r_y, 0.5, eps).nan_to_num(0.0))
            elif eps:
                assert_close(r, closed_linear(x, w, None, r_y, 0.5, eps))


@pytest.mark.parametrize("signed", [True, False])
def test_bfloat16_bounded_drift(signed: bool) -> None:
    torch.manual_seed(5)
    x, w, b = torch.randn(4, 16), torch.randn(8, 16), torch.randn(8)
    rule = Gamma(0.25, 1e-6, signed=signed)
    leaf = x.to(torch.bfloat16).requires_grad_(True)
    fn, extra = rule.gxi(aten.linear.default, (0,))
    y = fn(aten.linear.default, leaf, w.to(torch.bfloat16), b.to(torch.bfloat16), **extra)
    g = torch.randn(y.shape)
    (grad,) = torch.autograd.grad(y, leaf, g.to(torch.bfloat16))
    assert grad.dtype == torch.bfloat16
    r_bf = (leaf.detach().float() * grad.float())
    closed = closed_signed_linear if signed else closed_linear
    r_32 = closed(x.double(), w.double(), b.double(), (F.linear(x, w, b) * g).double(), 0.25, 1e-6)
    assert float((r_bf - r_32).abs().max() / r_32.abs().max()) < 0.05


def test_weights_untouched_and_rule_contract() -> None:
    for rule in (Gamma(2.0), classic(2.0), ZPlus()):
        w = torch.randn(3, 4, requires_grad=True)
        before = w.detach().clone()
        x = torch.randn(2, 4, requires_grad=True)
        fn, extra = rule.gxi(aten.linear.default, (0,))
        fn(aten.linear.default, x, w, None, **extra).sum().backward()
        assert torch.equal(w.detach(), before) and w.grad is None  # an explanation pass: no weight gradient
    assert gamma_args(aten.linear.default, [x, w, None], 0.0)[1] is not w
    rule = Gamma()
    assert rule.supports(aten.conv2d.default) and rule.supports(aten.addmm.default)
    assert not rule.supports(aten.mul.Tensor)
    with pytest.raises(ValueError, match="only relevance-carrying"):
        rule.gxi(aten.linear.default, (1,))
    for bad in (-1.0, float("nan")):
        with pytest.raises(ValueError, match="γ ≥ 0"):
            Gamma(bad)


@settings(max_examples=15, deadline=None)
@given(st.integers(1, 3), st.integers(1, 8), st.integers(1, 8), st.booleans(),
       st.sampled_from([0.0, 0.05, 0.25, 3.0, math.inf]), st.booleans(), st.integers(0, 2**16))
def test_linear_property(batch: int, d_in: int, d_out: int, bias: bool, gamma: float, signed: bool,
                         seed: int) -> None:
    torch.manual_seed(seed)
    x, w = torch.randn(batch, d_in, dtype=F64), torch.randn(d_out, d_in, dtype=F64)
    b = torch.randn(d_out, dtype=F64) if bias else None
    if not signed and gamma == math.inf:
        gamma = 1e3
    _, r_y, gxi, ex = run(Gamma(gamma, 1e-6, signed=signed), aten.linear.default, (x, w, b), seed=seed)
    closed = (closed_signed_linear if signed else closed_linear)(x, w, b, r_y, gamma, 1e-6)
    atol = 1e-9 * float(closed.abs().max().clamp_min(1.0))
    assert_close(gxi, closed, rtol=1e-8, atol=atol)
    assert_close(ex, closed, rtol=1e-8, atol=atol)
