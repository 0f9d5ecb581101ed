"""γ-rule (Montavon et al. 2019): GxI form == explicit form == closed form
``R_x = x ⊙ W_γᵀ (R_y / stab(z_γ))`` with ``W_γ = W + γW⁺``, ``b_γ = b + γb⁺``; γ = 0 is the ε-rule.

The closed forms are written without autograd: a matrix product for linear/addmm, ``unfold`` (im2col)
for convolutions. All in float64."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.testing import assert_close

from lxt_fx.rules import Epsilon, Gamma
from lxt_fx.rules.gamma import gamma_args

aten = torch.ops.aten
F64 = torch.float64


def sign1(t: torch.Tensor) -> torch.Tensor:
    return torch.where(t >= 0, 1.0, -1.0).to(t.dtype)


def plus(p: torch.Tensor, g: float) -> torch.Tensor:
    return p + g * p.clamp(min=0)


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


def closed_linear(x, w, b, r_y, gamma, eps):
    """x [.., in], w [out, in]: the γ-rule as a plain matrix formula."""
    wg = plus(w, gamma)
    z = x @ wg.T + (0 if b is None else plus(b, gamma))
    return x * ((r_y / (z + eps * sign1(z))) @ wg)


def closed_conv2d(x, w, b, r_y, gamma, eps, stride, padding):
    """Convolution as im2col: z = W_γ · cols + b_γ; R_x = x ⊙ fold(W_γᵀ (R_y / stab(z)))."""
    n, _, h, wd = x.shape
    k = w.shape[-2:]
    cols = F.unfold(x, k, padding=padding, stride=stride)                # [n, c·kh·kw, L]
    wg = plus(w, gamma).reshape(w.shape[0], -1)                          # [out, c·kh·kw]
    z = wg @ cols + (0 if b is None else plus(b, gamma)[:, None])        # [n, out, L]
    s = r_y.reshape(n, w.shape[0], -1) / (z + eps * sign1(z))
    back = F.fold(wg.T @ s, (h, wd), k, padding=padding, stride=stride)  # Σ over every window
    return x * back


@pytest.mark.parametrize("gamma", [0.0, 0.1, 0.25, 1.0, 100.0])
@pytest.mark.parametrize("bias", [True, False])
def test_linear_three_forms(gamma: float, bias: bool) -> None:
    torch.manual_seed(0)
    x, w = torch.randn(2, 5, 7, dtype=F64), torch.randn(4, 7, dtype=F64)
    b = torch.randn(4, dtype=F64) if bias else None
    for eps in (1e-6, 0.3):
        y, r_y, gxi, ex = run(Gamma(gamma, eps), aten.linear.default, (x, w, b))
        assert torch.equal(y, F.linear(x, w, b))  # the forward is exact
        closed = closed_linear(x, w, b, r_y, gamma, eps)
        assert_close(gxi, closed, rtol=1e-9, atol=1e-12)
        assert_close(ex, closed, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("gamma", [0.0, 0.25, 100.0])
def test_addmm_gpt2_conv1d_layout(gamma: float) -> None:
    torch.manual_seed(1)
    b, x, w = torch.randn(5, dtype=F64), torch.randn(3, 4, dtype=F64), torch.randn(4, 5, dtype=F64)  # w: [in, out]
    y, r_y, gxi, ex = run(Gamma(gamma, 1e-6), aten.addmm.default, (b, x, w))
    assert torch.equal(y, torch.addmm(b, x, w))
    closed = closed_linear(x, w.T, b, r_y, gamma, 1e-6)
    assert_close(gxi, closed, rtol=1e-9, atol=1e-12)
    assert_close(ex, closed, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("gamma", [0.0, 0.25, 100.0])
@pytest.mark.parametrize("stride,padding", [(1, 0), (1, 1), (2, 1), (4, 0)])
def test_conv2d_three_forms(gamma: float, stride: int, padding: int) -> None:
    torch.manual_seed(2)
    x, w, b = torch.randn(2, 3, 8, 8, dtype=F64), torch.randn(5, 3, 3, 3, dtype=F64), torch.randn(5, dtype=F64)
    if stride == 4:  # a ViT patch embedding: kernel = stride, no overlap
        w = torch.randn(5, 3, 4, 4, dtype=F64)
    args = (x, w, b, [stride, stride], [padding, padding])
    y, r_y, gxi, ex = run(Gamma(gamma, 1e-6), aten.conv2d.default, args)
    assert torch.equal(y, F.conv2d(x, w, b, stride, padding))
    closed = closed_conv2d(x, w, b, r_y, gamma, 1e-6, stride, padding)
    assert_close(gxi, closed, rtol=1e-9, atol=1e-12)
    assert_close(ex, closed, rtol=1e-9, atol=1e-12)


def test_conv1d_and_grouped_conv_gxi_equals_explicit() -> None:
    torch.manual_seed(3)
    cases = [
        (aten.conv1d.default, (torch.randn(2, 4, 9, dtype=F64), torch.randn(6, 4, 3, dtype=F64),
                               torch.randn(6, dtype=F64))),
        (aten.conv2d.default, (torch.randn(1, 4, 6, 6, dtype=F64), torch.randn(4, 2, 3, 3, dtype=F64), None,
                               [1, 1], [1, 1], [1, 1], 2)),  # groups = 2
    ]
    for op, args in cases:
        _, _, gxi, ex = run(Gamma(0.25, 1e-6), op, args)
        assert_close(gxi, ex, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("op,args", [
    (aten.linear.default, (torch.randn(3, 6, dtype=F64), torch.randn(4, 6, dtype=F64), torch.randn(4, dtype=F64))),
    (aten.conv2d.default, (torch.randn(1, 2, 5, 5, dtype=F64), torch.randn(3, 2, 3, 3, dtype=F64),
                           torch.randn(3, dtype=F64))),
])
def test_gamma_zero_is_the_epsilon_rule(op, args) -> None:
    for eps in (1e-6, 0.5):
        _, _, g_gamma, e_gamma = run(Gamma(0.0, eps), op, args)
        _, _, g_eps, e_eps = run(Epsilon(eps), op, args)
        assert_close(g_gamma, g_eps, rtol=1e-10, atol=1e-13)
        assert_close(e_gamma, e_eps, rtol=1e-10, atol=1e-13)


def test_large_gamma_favours_positive_contributions() -> None:
    # x ≥ 0 and the relevance of a positive output: as γ grows, relevance concentrates on inputs with
    # positive weights (z⁺-rule); negative relevance shrinks.
    torch.manual_seed(4)
    x = torch.rand(1, 8, dtype=F64)
    w = torch.randn(1, 8, dtype=F64)
    w[0, 0] = abs(w[0, 0]) + 1.0  # at least one positive weight
    neg = [float(run(Gamma(g, 1e-9), aten.linear.default, (x, w, None))[2].clamp(max=0).abs().sum())
           for g in (0.0, 1.0, 100.0)]
    _, r_y, gxi, _ = run(Gamma(1e6, 1e-9), aten.linear.default, (x, w, None))
    zplus = x * w.clamp(min=0)
    assert_close(gxi, zplus / zplus.sum() * r_y, rtol=1e-4, atol=1e-5 * float(r_y.abs().max()))  # O(1/γ)
    assert neg[0] >= neg[1] >= neg[2]


def test_sign_of_zero_modified_output_no_nan() -> None:
    x = torch.tensor([[0.0, 0.0], [1.0, -1.0]], dtype=F64)  # first row: z_γ = 0 exactly
    w = torch.tensor([[1.0, 1.0]], dtype=F64)
    _, r_y, gxi, ex = run(Gamma(0.5, 1e-6), aten.linear.default, (x, w, None))
    for r in (gxi, ex):
        assert torch.isfinite(r).all()
        assert_close(r, closed_linear(x, w, None, r_y, 0.5, 1e-6))


def test_bfloat16_bounded_drift() -> None:
    torch.manual_seed(5)
    x, w, b = torch.randn(4, 16), torch.randn(8, 16), torch.randn(8)
    rule = Gamma(0.25, 1e-6)
    leaf = x.to(torch.bfloat16).requires_grad_(True)
    fn, extra = rule.gxi(aten.linear.default, (0,))
    y = fn(aten.linear.default, leaf, w.to(torch.bfloat16), b.to(torch.bfloat16), **extra)
    g = torch.randn(y.shape)
    (grad,) = torch.autograd.grad(y, leaf, g.to(torch.bfloat16))
    assert grad.dtype == torch.bfloat16
    r_bf = (leaf.detach().float() * grad.float())
    r_32 = closed_linear(x.double(), w.double(), b.double(), (F.linear(x, w, b) * g).double(), 0.25, 1e-6)
    assert float((r_bf - r_32).abs().max() / r_32.abs().max()) < 0.05


def test_weights_untouched_and_rule_contract() -> None:
    w = torch.randn(3, 4, requires_grad=True)
    before = w.detach().clone()
    x = torch.randn(2, 4, requires_grad=True)
    fn, extra = Gamma(2.0).gxi(aten.linear.default, (0,))
    fn(aten.linear.default, x, w, None, **extra).sum().backward()
    assert torch.equal(w.detach(), before) and w.grad is None  # an explanation pass: no weight gradient
    assert gamma_args(aten.linear.default, [x, w, None], 0.0)[1] is not w
    rule = Gamma()
    assert rule.supports(aten.conv2d.default) and rule.supports(aten.addmm.default)
    assert not rule.supports(aten.mul.Tensor)
    with pytest.raises(ValueError, match="only relevance-carrying"):
        rule.gxi(aten.linear.default, (1,))
    with pytest.raises(ValueError, match="γ ≥ 0"):
        Gamma(-1.0)


@settings(max_examples=15, deadline=None)
@given(st.integers(1, 3), st.integers(1, 8), st.integers(1, 8), st.booleans(),
       st.sampled_from([0.0, 0.05, 0.25, 3.0]), st.integers(0, 2**16))
def test_linear_property(batch: int, d_in: int, d_out: int, bias: bool, gamma: float, seed: int) -> None:
    torch.manual_seed(seed)
    x, w = torch.randn(batch, d_in, dtype=F64), torch.randn(d_out, d_in, dtype=F64)
    b = torch.randn(d_out, dtype=F64) if bias else None
    _, r_y, gxi, ex = run(Gamma(gamma, 1e-6), aten.linear.default, (x, w, b), seed=seed)
    closed = closed_linear(x, w, b, r_y, gamma, 1e-6)
    atol = 1e-9 * float(closed.abs().max().clamp_min(1.0))
    assert_close(gxi, closed, rtol=1e-8, atol=atol)
    assert_close(ex, closed, rtol=1e-8, atol=atol)
