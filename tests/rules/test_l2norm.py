"""Identity through L2 normalisation ``y = x / ‖x‖₂`` (Prop. 3.4, the norm a constant).

The GxI form (``x ⊙ grad`` after ``x / n.detach()``) and the rule's explicit form are each checked against
an independent reference: the closed form ``R_x = R_y``, and ``x ⊙ Jᵀ(R_y / y)`` with ``J`` the Jacobian
matrix of ``x ↦ x / n`` at a frozen ``n`` built entry by entry. The forward must be the exact op."""

from __future__ import annotations

import torch
from torch.testing import assert_close

from lxt_fx.rules import L2Normalize

aten = torch.ops.aten
F64 = torch.float64


def _frozen_jacobian_reference(x: torch.Tensor, n: torch.Tensor, r_y: torch.Tensor) -> torch.Tensor:
    """x ⊙ Jᵀ(R_y / y) per row, J[i, j] = δ_ij / n (n held constant), written out as a matrix."""
    rows, d = x.reshape(-1, x.shape[-1]), x.shape[-1]
    norms = n.expand_as(x).reshape(-1, d)[:, 0]
    out = torch.empty_like(rows)
    for i, row in enumerate(rows):
        jac = torch.zeros(d, d, dtype=x.dtype)
        for j in range(d):
            jac[j, j] = 1.0 / norms[i]
        y = jac @ row
        out[i] = row * (jac.T @ (r_y.reshape(-1, d)[i] / y))
    return out.reshape(x.shape)


def test_gxi_and_explicit_equal_identity_and_the_frozen_jacobian() -> None:
    torch.manual_seed(0)
    rule = L2Normalize()
    x = torch.randn(3, 4, 8, dtype=F64)
    n = x.pow(2).sum(-1, keepdim=True).pow(0.5)
    leaf = x.clone().requires_grad_(True)
    norm = leaf.pow(2).sum(-1, keepdim=True).pow(0.5)  # the norm computed from x, as in the graph
    fn, extra = rule.gxi(aten.div.Tensor, (0, 1))
    y = fn(aten.div.Tensor, leaf, norm, **extra)
    assert torch.equal(y.detach(), x / n)  # the exact forward
    g = torch.randn_like(y)
    (gx,) = torch.autograd.grad(y, leaf, g)
    r_y = y.detach() * g
    gxi = x * gx
    reference = _frozen_jacobian_reference(x, n, r_y)
    assert_close(gxi, r_y, rtol=1e-12, atol=1e-14)          # closed form R_x = R_y
    assert_close(gxi, reference, rtol=1e-10, atol=1e-12)
    explicit = rule.explicit(aten.div.Tensor, (x, n), {}, y.detach(), r_y, (0, 1))
    assert explicit[1] is None                              # nothing flows into the norm
    assert_close(explicit[0], reference, rtol=1e-9, atol=1e-12)
    assert_close(gxi.sum(-1), r_y.sum(-1))                  # conservation per row


def test_plain_gradient_would_lose_everything() -> None:
    # why the rule exists: x / ‖x‖ is homogeneous of degree 0, so x ⊙ ∂(g·y)/∂x sums to 0 per row
    torch.manual_seed(1)
    x = torch.randn(5, 6, dtype=F64, requires_grad=True)
    y = x / x.pow(2).sum(-1, keepdim=True).pow(0.5)
    g = torch.randn_like(y)
    (gx,) = torch.autograd.grad(y, x, g)
    assert_close((x * gx).sum(-1), torch.zeros(5, dtype=F64), rtol=0, atol=1e-12)
    assert (y * g).sum(-1).abs().min() > 1e-3


def test_rule_is_for_the_numerator_of_a_division() -> None:
    rule = L2Normalize()
    assert rule.supports(aten.div.Tensor) and rule.supports(aten.div_.Tensor)
    assert not rule.supports(aten.mul.Tensor)
    assert rule.applies((0, 1)) and rule.applies((0,)) and not rule.applies((1,))
    assert rule.flows((0, 1)) == (0,)
