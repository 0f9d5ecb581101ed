"""Identity rule for element-wise activations (Eq. 9): GxI form == explicit form == ``R_x = R_y``.

float64 unless stated; bf16 near zero must give finite gradients (the reference divided by ``x + 1e-10``)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.nn import functional as F
from torch.testing import assert_close

from lxt_fx.rules import Identity, Rule
from lxt_fx.rules.identity import activation_ratio

aten = torch.ops.aten
F64 = torch.float64

# Activations whose ratio f(x)/x is analytic, with their positional / keyword arguments after x.
ANALYTIC = [
    (aten.silu.default, (), {}),
    (aten.gelu.default, (), {}),
    (aten.gelu.default, (), {"approximate": "tanh"}),
    (aten.relu.default, (), {}),
    (aten.leaky_relu.default, (0.2,), {}),
    (aten.tanh.default, (), {}),
    (aten.asinh.default, (), {}),
]
# f(0) != 0: the ratio is f(x) / (x + ε·sign(x)).
STABILIZED = [(aten.sigmoid.default, (), {}), (aten.exp.default, (), {}), (aten.softplus.default, (), {})]


def gxi_and_explicit(rule: Rule, op: Any, x: torch.Tensor, args: Sequence[Any] = (),
                     kwargs: dict[str, Any] | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor,
                                                                     torch.Tensor]:
    """(y, R_y, GxI R_x = x ⊙ grad, explicit R_x) for a random output gradient, ``R_y = y ⊙ g``."""
    kwargs = kwargs or {}
    leaf = x.detach().clone().requires_grad_(True)
    fn, extra = rule.gxi(op, (0,))
    y = fn(op, leaf, *args, **kwargs, **extra)
    g = torch.randn_like(y)
    (gx,) = torch.autograd.grad(y, leaf, g)
    r_y = y.detach() * g
    ex = rule.explicit(op, (x, *args), kwargs, y.detach(), r_y, (0,))
    assert all(r is None for r in ex[1:])
    return y.detach(), r_y, x * gx, ex[0]


def test_analytic_activations_three_forms_and_conservation() -> None:
    torch.manual_seed(0)
    x = torch.randn(4, 33, dtype=F64) * 3
    x[0, :5] = torch.tensor([0.0, -0.0, 1e-300, -1e-12, 5e-4], dtype=F64)  # zero and the tanh Taylor branch
    for op, args, kwargs in ANALYTIC:
        y, r_y, gxi, ex = gxi_and_explicit(Identity(), op, x, args, kwargs)
        assert_close(y, op(x, *args, **kwargs), rtol=0, atol=0)
        closed = r_y  # R_x = R_y
        assert torch.equal(ex, closed)
        assert_close(gxi, closed, rtol=1e-12, atol=1e-15, msg=lambda m, op=op: f"{op}: {m}")
        assert_close(gxi.sum(), r_y.sum())  # conservation


def test_stabilized_activations_closed_form() -> None:
    torch.manual_seed(1)
    x = torch.randn(64, dtype=F64)
    x[:3] = torch.tensor([0.0, 1e-7, -1e-7], dtype=F64)
    eps = 1e-6
    for op, args, kwargs in STABILIZED:
        _, r_y, gxi, ex = gxi_and_explicit(Identity(eps), op, x, args, kwargs)
        assert torch.isfinite(gxi).all()
        # GxI: x · g · f(x)/(x + ε sign x) = R_y · |x| / (|x| + ε) — equals R_y up to the stabilizer.
        assert_close(gxi, r_y * x.abs() / (x.abs() + eps), rtol=1e-12, atol=1e-15)
        # Against the explicit R_x = R_y the stabilizer costs a relative ε / (|x| + ε), no more.
        assert ((gxi - ex).abs() <= ex.abs() * eps / (x.abs() + eps) * (1 + 1e-9) + 1e-300).all()


@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(1, 5), min_size=1, max_size=4), st.sampled_from(range(len(ANALYTIC))),
       st.floats(0.01, 100.0), st.integers(0, 2**16))
def test_identity_property(shape: list[int], which: int, spread: float, seed: int) -> None:
    torch.manual_seed(seed)
    op, args, kwargs = ANALYTIC[which]
    x = torch.randn(shape, dtype=F64) * spread
    _, r_y, gxi, ex = gxi_and_explicit(Identity(), op, x, args, kwargs)
    assert_close(gxi, r_y, rtol=1e-10, atol=1e-14)
    assert torch.equal(ex, r_y)


def bf16_near_zero() -> torch.Tensor:
    tiny = torch.tensor([1e-10], dtype=torch.bfloat16)
    values = torch.tensor([0.0, 1e-38, 1e-30, 1e-10, 1e-5, 1e-3, 0.1, 2.0], dtype=torch.bfloat16)
    # -bf16(1e-10) + 1e-10 == 0: the reference's x + 1e-10 divides by exactly zero there.
    return torch.cat([values, -values, -tiny, torch.tensor([-0.0], dtype=torch.bfloat16)])


def test_bf16_near_zero_gradient_is_finite() -> None:
    x = bf16_near_zero()
    for op, args, kwargs in ANALYTIC:
        leaf = x.clone().requires_grad_(True)
        y = Identity().gxi(op, (0,))[0](op, leaf, *args, **kwargs)
        (gx,) = torch.autograd.grad(y, leaf, torch.ones_like(y))
        assert gx.dtype == torch.bfloat16
        assert torch.isfinite(gx).all(), (op, gx)
        assert torch.isfinite(x * gx).all()
        # The gradient is the analytic ratio, here computed in float64 from the same bf16 inputs.
        ratio = activation_ratio(op, x.to(F64), *args, **kwargs)
        assert_close(gx.to(F64), ratio, rtol=2**-8, atol=0, msg=lambda m, op=op: f"{op}: {m}")


def exact_f64(op: Any, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    """f(x) in float64 without cancellation in the negative tail (torch's own float64 GELU computes
    ``½x(1 + erf)``, which is 0 or off by ~1e-16 absolute below x ≈ −8)."""
    if op is aten.gelu.default and kwargs.get("approximate") == "tanh":
        return x * torch.sigmoid(2 * math.sqrt(2 / math.pi) * (x + 0.044715 * x**3))  # ½(1+tanh z) = σ(2z)
    if op is aten.gelu.default:
        return x * 0.5 * torch.erfc(-x / math.sqrt(2))  # Φ(x) = ½ erfc(−x/√2); torch's ndtr cancels too
    return op(x, *args, **kwargs)


def test_bf16_relevance_within_bound() -> None:
    # Bound: the ratio is computed in float32 from the bf16 input, then g·ratio and x·grad are each rounded
    # once to bf16 (relative error ≤ 2^-9 each), so |R_bf16 − R_exact| ≤ 2^-7 · |R_exact| element-wise
    # (2^-7 leaves a 2× margin); R_exact = f(x) · g in float64 from the same bf16 x and g.
    torch.manual_seed(2)
    x = torch.cat([torch.randn(512) * 4, bf16_near_zero().float()]).to(torch.bfloat16)
    g = torch.randn(x.shape).to(torch.bfloat16)
    for op, args, kwargs in ANALYTIC:
        leaf = x.clone().requires_grad_(True)
        y = Identity().gxi(op, (0,))[0](op, leaf, *args, **kwargs)
        (gx,) = torch.autograd.grad(y, leaf, g)
        r_bf16 = (x * gx).to(F64)
        r_exact = exact_f64(op, x.to(F64), *args, **kwargs) * g.to(F64)
        assert torch.isfinite(r_bf16).all()
        err = (r_bf16 - r_exact).abs()
        assert (err <= 2**-7 * r_exact.abs() + 1e-37).all(), (op, float((err - 2**-7 * r_exact.abs()).max()))


def test_gelu_ratios_match_their_functions() -> None:
    x = torch.linspace(-6, 6, 101, dtype=F64)
    x = x[x != 0]
    for approximate in ("none", "tanh"):
        expected = F.gelu(x, approximate=approximate) / x
        assert_close(activation_ratio(aten.gelu.default, x, approximate=approximate), expected)
    assert_close(activation_ratio(aten.tanh.default, x), torch.tanh(x) / x)
    small = torch.tensor([1e-4, -1e-4, 9.9e-4, 1.01e-3], dtype=F64)  # both sides of the Taylor switch
    assert_close(activation_ratio(aten.tanh.default, small), torch.tanh(small) / small, rtol=1e-12, atol=0)
    assert_close(activation_ratio(aten.asinh.default, x), torch.asinh(x) / x)
    assert_close(activation_ratio(aten.asinh.default, small), torch.asinh(small) / small, rtol=1e-12, atol=0)


def test_gelu_ratio_accurate_in_the_negative_tail() -> None:
    # Φ(x) in float32 for x ≪ 0: ½(1 + erf) would cancel to 0 (or ~100 % error); ½ erfc(−x/√2) does not.
    x = torch.linspace(-12, -3, 37)
    exact = 0.5 * torch.erfc(-x.to(F64) / math.sqrt(2))
    assert_close(activation_ratio(aten.gelu.default, x).to(F64), exact, rtol=1e-5, atol=0)
    z = math.sqrt(2 / math.pi) * (x.to(F64) + 0.044715 * x.to(F64) ** 3)
    got = activation_ratio(aten.gelu.default, x, approximate="tanh").to(F64)
    # (σ(2z) drops below float32's smallest normal number, 1.2e-38, for x < −8: that much absolute slack.)
    assert_close(got, torch.sigmoid(2 * z), rtol=1e-5, atol=torch.finfo(torch.float32).tiny)


def test_zero_epsilon_exact_zero_is_finite_and_matches_the_epsilon_limit() -> None:
    """ReLU6 / hardtanh (no closed-form ratio, f(0) = 0) at an exact zero input with ε = 0 — what a
    zero-bias check runs: the ratio is the ε → 0 limit of ``0 / (0 + ε)`` = 0, not 0/0 = NaN (MobileNet's
    stems pad with zeros, so exact zeros reach every ReLU6)."""
    x = torch.tensor([0.0, -0.0, 3.0, 7.0, -2.0, 0.5], dtype=F64)
    closed = torch.tensor([0.0, 0.0, 1.0, 6.0 / 7.0, 0.0, 1.0], dtype=F64)  # clamp(x, 0, 6) / x, 0 where f = 0
    for op, args in [(aten.hardtanh.default, (0.0, 6.0)), (aten.relu6.default, ())]:
        leaf = x.clone().requires_grad_(True)
        y = Identity(epsilon=0.0).gxi(op, (0,))[0](op, leaf, *args, epsilon=0.0)
        (gx,) = torch.autograd.grad(y, leaf, torch.ones_like(y))
        assert torch.isfinite(gx).all(), (op, gx)
        assert_close(gx, closed, rtol=1e-15, atol=0)
        # and the same as the ε > 0 form at ε → 0
        eps_form = activation_ratio(op, x, *args, epsilon=1e-30)
        assert_close(gx, eps_form, rtol=1e-15, atol=0)
