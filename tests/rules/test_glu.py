"""GLU ``a ⊙ σ(b)`` (RULES.md: uniform rule for a gate product + identity through the sigmoid): GxI form ==
explicit form == the closed form ``R_a = R_b = R_y / 2`` element-wise; CP-LRP's ``gate="stop"``:
``R_a = R_y``, ``R_b = 0``. The closed forms are written here from ``R_y = y ⊙ g`` alone. float64."""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

import lxt_fx
from lxt_fx.rules import GatedUnit
from lxt_fx.rules.glu import GateChoiceError

aten = torch.ops.aten
F64 = torch.float64


def _forms(rule: GatedUnit, x: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(R_y, GxI R_x = x ⊙ grad, explicit R_x) for a random output gradient."""
    leaf = x.clone().requires_grad_(True)
    fn, extra = rule.gxi(aten.glu.default, (0,))
    y = fn(aten.glu.default, leaf, dim, **extra)
    assert torch.equal(y.detach(), torch.nn.functional.glu(x, dim))  # the value is GLU's, exactly
    g = torch.randn_like(y)
    (gx,) = torch.autograd.grad(y, leaf, g)
    r_y = y.detach() * g
    explicit = rule.explicit(aten.glu.default, (x, dim), {}, y.detach(), r_y, (0,))
    assert explicit[1] is None
    return r_y, x * gx, explicit[0]


@pytest.mark.parametrize("dim", [-1, 1, 0])
def test_uniform_gate_halves_the_relevance_between_value_and_gate(dim: int) -> None:
    torch.manual_seed(0)
    x = torch.randn(4, 6, 10, dtype=F64) * 2
    r_y, gxi, explicit = _forms(GatedUnit(epsilon=0.0), x, dim)
    closed = torch.cat([r_y / 2, r_y / 2], dim=dim)  # R_a = R_σ(b) = R_y / 2, identity through σ: R_b = R_σ(b)
    assert_close(gxi, closed, rtol=1e-12, atol=1e-15)
    assert_close(explicit, closed, rtol=0, atol=0)
    assert_close(gxi.sum(), r_y.sum())  # conserves
    # the plain gradient would not: a ⊙ σ(b) is not homogeneous in b (GxI through σ' ≠ identity)
    leaf = x.clone().requires_grad_(True)
    torch.nn.functional.glu(leaf, dim).backward(r_y / torch.nn.functional.glu(x, dim))
    assert not torch.allclose((x * leaf.grad).sum(), r_y.sum())


def test_epsilon_bounds_the_sigmoid_ratio_at_zero() -> None:
    x = torch.tensor([[1.5, -2.0, 0.0, 1e-9]], dtype=F64)  # a = (1.5, -2), b = (0, 1e-9)
    r_y, gxi, _ = _forms(GatedUnit(epsilon=1e-6), x, -1)
    assert torch.isfinite(gxi).all()
    b = x[:, 2:]
    assert_close(gxi[:, :2], r_y / 2, rtol=1e-12, atol=0)
    assert_close(gxi[:, 2:], r_y / 2 * b.abs() / (b.abs() + 1e-6), rtol=1e-9, atol=1e-300)  # b σ(b)/(b+ε)


def test_stop_gate_gives_the_value_everything() -> None:
    torch.manual_seed(1)
    x = torch.randn(3, 8, dtype=F64)
    r_y, gxi, explicit = _forms(GatedUnit(gate="stop"), x, -1)
    closed = torch.cat([r_y, torch.zeros_like(r_y)], dim=-1)
    assert_close(gxi, closed, rtol=1e-12, atol=1e-15)
    assert_close(explicit, closed, rtol=0, atol=0)


def test_unknown_gate_is_a_named_error() -> None:
    with pytest.raises(GateChoiceError, match="'uniform'.*'stop'"):
        GatedUnit(gate="half")


class _Conv(torch.nn.Module):
    """A conformer-style convolution module: pointwise conv → GLU over channels → pointwise conv."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.up = torch.nn.Conv1d(8, 16, 1, bias=False)
        self.down = torch.nn.Conv1d(8, 4, 1, bias=False)

    def forward(self, inputs_embeds: torch.Tensor) -> dict[str, torch.Tensor]:
        h = torch.nn.functional.glu(self.up(inputs_embeds.transpose(1, 2)), dim=1)
        return {"logits": self.down(h).transpose(1, 2)}


def test_attnlrp_gives_glu_its_rule_and_the_books_close() -> None:
    model, x = _Conv().eval(), torch.randn(1, 5, 8)
    _, report = lxt_fx.attnlrp.rewrite(model, {"inputs_embeds": x}, strict=True)
    assert [(r.op, r.rule) for r in report.rewritten] == [("aten.glu.default", "glu")]
    leaf = x.clone().requires_grad_(True)
    with lxt_fx.attnlrp.context(model):
        score = model(inputs_embeds=leaf)["logits"][0, -1, 1]
    score.backward()
    relevance = (leaf * leaf.grad).detach()
    assert abs(float(relevance.sum()) - float(score.detach())) < 1e-5 * max(1.0, abs(float(score.detach())))
