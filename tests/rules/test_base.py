"""The rule base: the sign-aware stabilizer, the gradient-scaling functions, the VJP and the explicit
ε-rule template that the other rules build on. float64 wherever a tolerance is tight."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.testing import assert_close

from lxt_fx.rules import Epsilon, Identity, Rule, Stop, Uniform, safe_divide, scale_gradient, stabilize
from lxt_fx.rules import stabilize_gradient as stabilize_grad
from lxt_fx.rules.base import epsilon_explicit, tensor_positions, vjp

aten = torch.ops.aten
F64 = torch.float64


def test_stabilize_is_sign_aware_with_sign_of_zero_one() -> None:
    z = torch.tensor([-2.0, -1e-9, 0.0, -0.0, 1e-9, 3.0], dtype=F64)
    out = stabilize(z, 0.5)
    # sign(0) = 1 (also for -0.0): the stabilizer pushes away from zero, never across it.
    assert_close(out, torch.tensor([-2.5, -0.5 - 1e-9, 0.5, 0.5, 0.5 + 1e-9, 3.5], dtype=F64))


@settings(max_examples=25, deadline=None)
@given(st.lists(st.floats(-1e6, 1e6, allow_nan=False, width=32), min_size=1, max_size=16),
       st.floats(1e-9, 1.0))
def test_stabilize_never_crosses_zero(values: list[float], eps: float) -> None:
    z = torch.tensor(values, dtype=F64)
    out = stabilize(z, eps)
    assert (out != 0).all()
    assert (torch.sign(out) == torch.where(z >= 0, 1.0, -1.0).to(F64)).all()
    assert_close(out.abs(), z.abs() + eps)


def test_safe_divide_is_finite_and_keeps_numerator_dtype() -> None:
    den = torch.tensor([0.0, -0.0, 1e-30, -1e-30, 2.0], dtype=torch.bfloat16)
    num = torch.ones(5, dtype=torch.bfloat16)
    out = safe_divide(num, den, 1e-6)
    assert out.dtype == torch.bfloat16
    assert torch.isfinite(out).all()
    # Computed in float32, rounded once to bf16: 1 / (0 + 1e-6) = 1e6, 1 / 2 = 0.5.
    assert_close(out[[0, 1, 4]].float(), torch.tensor([1e6, 1e6, 0.5]), rtol=2**-8, atol=0)


def test_scale_gradient_scales_backward_only() -> None:
    x = torch.randn(3, 4, dtype=F64, requires_grad=True)
    y = scale_gradient(x, 0.25)
    assert torch.equal(y, x)
    g = torch.randn(3, 4, dtype=F64)
    (gx,) = torch.autograd.grad(y, x, g)
    assert_close(gx, 0.25 * g, rtol=0, atol=0)


def test_scale_gradient_no_op_cases_return_the_input() -> None:
    x = torch.randn(3, dtype=F64, requires_grad=True)
    assert scale_gradient(x, 1.0) is x
    c = torch.randn(3)
    assert scale_gradient(c, 0.5) is c


def test_stabilize_gradient_backward() -> None:
    y0 = torch.tensor([-1.0, -1e-3, 0.0, 1e-3, 2.0], dtype=F64, requires_grad=True)
    y = stabilize_grad(y0, 1e-2)
    assert torch.equal(y, y0)
    g = torch.randn(5, dtype=F64)
    (gy,) = torch.autograd.grad(y, y0, g)
    den = y0.detach() + 1e-2 * torch.tensor([-1.0, -1.0, 1.0, 1.0, 1.0], dtype=F64)
    assert_close(gy, g * y0.detach() / den)
    assert gy[2] == 0.0  # y = 0: g · 0 / ε = 0, not NaN
    assert stabilize_grad(y0, 0.0) is y0


def test_vjp_matches_autograd_and_has_no_side_effects() -> None:
    a = torch.randn(3, 4, dtype=F64)
    b = torch.randn(4, 5, dtype=F64)
    g = torch.randn(3, 5, dtype=F64)
    ga, gb = vjp(aten.mm.default, [a, b], {}, [0, 1], g)
    assert_close(ga, g @ b.T)
    assert_close(gb, a.T @ g)
    assert a.grad is None and not a.requires_grad
    (unused,) = vjp(lambda x, w: x * 2.0, [a, b], {}, [1], torch.ones(3, 4, dtype=F64))
    assert torch.equal(unused, torch.zeros_like(b))


def test_epsilon_explicit_closed_form_with_share() -> None:
    torch.manual_seed(0)
    x = torch.randn(4, 6, dtype=F64)
    w = torch.randn(3, 6, dtype=F64)
    y = x @ w.T
    r = torch.randn(4, 3, dtype=F64)
    for share, eps in ((1, 1e-3), (2, 0.1)):
        (rx, rw) = epsilon_explicit(aten.mm.default, [x, w.T], {}, y, r, [0], eps, share=share)
        assert rw is None
        sign = torch.where(y >= 0, 1.0, -1.0).to(F64)
        assert_close(rx, x * ((r / (share * y + eps * sign)) @ w))


def test_tensor_positions() -> None:
    args = (torch.randn(2), 3, torch.ones(2, dtype=torch.long), None, torch.randn(1, dtype=torch.bfloat16))
    assert tensor_positions(args) == [0, 4]


def test_rule_identity_equality_and_repr() -> None:
    assert Epsilon(1e-3) == Epsilon(1e-3)
    assert Epsilon(1e-3) != Epsilon(1e-4)
    assert Epsilon(1e-3) != Uniform(1e-3)
    assert len({Epsilon(1e-3), Epsilon(1e-3), Stop()}) == 2
    assert repr(Epsilon(0.5)) == "Epsilon(epsilon=0.5)"
    assert Epsilon().supports(aten.linear.default) and not Epsilon().supports(aten.mul.Tensor)
    assert Identity().supports(aten.silu.default)  # no ops listed: any element-wise op
    base = Rule()
    for call in (lambda: base.gxi(aten.mul.Tensor, (0,)),
                 lambda: base.explicit(aten.mul.Tensor, (), {}, None, None, ())):
        try:
            call()
        except NotImplementedError:
            continue
        raise AssertionError("Rule base methods must be abstract")
