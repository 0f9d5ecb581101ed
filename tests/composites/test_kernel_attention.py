"""A kernel attention whose weights are an element-wise function of the scores, YOSO's expectation
``A = (1 − acos(q̂·k̂)/π)^τ`` (unit queries and keys; no softmax): ``acos`` and the constant power take the
identity rule (Eq. 9; ``x^τ`` is τ equal factors under the uniform product rule), so relevance is conserved
through the weights; checked against the explicit float64 form (R_in = R_out through both ops, the ½/½ split
of ``A @ V``) and the zero-bias books."""

from __future__ import annotations

import math

import torch

import lxt_fx
from lxt_fx.composites.attnlrp import polynomial_power

TAU = 4


class _KernelAttention(torch.nn.Module):
    def __init__(self, d: int = 8) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.q, self.k, self.v = (torch.nn.Linear(d, d, bias=False) for _ in range(3))
        self.out = torch.nn.Linear(d, 3, bias=False)

    def forward(self, inputs_embeds: torch.Tensor) -> dict[str, torch.Tensor]:
        q = torch.nn.functional.normalize(self.q(inputs_embeds), dim=-1)
        k = torch.nn.functional.normalize(self.k(inputs_embeds), dim=-1)
        a = (1 - torch.acos(q @ k.transpose(-1, -2)) / math.pi) ** TAU
        return {"logits": self.out(a @ self.v(inputs_embeds))}


def test_acos_and_power_take_the_identity_rule() -> None:
    x = torch.randn(1, 4, 8)
    _, report = lxt_fx.attnlrp.rewrite(_KernelAttention().eval(), {"inputs_embeds": x}, strict=True)
    rules = {r.op: r.rule for r in report.rewritten}
    assert rules["aten.acos.default"] == "identity" and rules["aten.pow.Tensor_Scalar"] == "identity"


def test_kernel_attention_closes_the_books_in_zero_bias_mode() -> None:
    report = lxt_fx.check(_KernelAttention().eval(), {"inputs_embeds": torch.randn(1, 4, 8)},
                          composite="attnlrp", zero_bias=True)
    assert not report.unhandled
    assert report.verdict.verified, report.verdict.reason


def test_gxi_through_acos_and_power_matches_the_explicit_identity() -> None:
    """float64: R at the scores s from the GxI form of the rewritten ops equals R at the weights A
    (explicit identity: R_s = R_{1−acos(s)/π} … = R_A, up to the constant 1's share, which the affine step
    books as a bias: R_u = u ⊙ R_b / b for b = 1 − u/π·… is the ε-rule's, computed here in closed form)."""
    from lxt_fx.rules.identity import identity

    torch.manual_seed(3)
    s = (torch.rand(5, 5, dtype=torch.float64) * 1.8 - 0.9).requires_grad_(True)
    u = identity(torch.ops.aten.acos.default, s, epsilon=0.0)
    b = 1 - u / math.pi
    a = identity(torch.ops.aten.pow.Tensor_Scalar, b, TAU, epsilon=0.0)
    r_a = torch.randn_like(a)                                     # relevance arriving at A
    (g,) = torch.autograd.grad(a, s, r_a / a.detach())
    r_s = s.detach() * g
    # explicit: identity through pow (R_b = R_A), the ε-rule through b = 1 − u/π (R_u = (−u/π)/b ⊙ R_b),
    # identity through acos (R_s = R_u)
    u0 = torch.acos(s.detach())
    expected = (-u0 / math.pi) / (1 - u0 / math.pi) * r_a
    assert torch.allclose(r_s, expected, rtol=1e-10, atol=1e-12)


def test_only_constant_powers_of_at_least_one_are_polynomial() -> None:
    class Node:
        def __init__(self, exponent: object) -> None:
            self.args, self.kwargs = ("x", exponent), {}

    assert [polynomial_power(Node(e), None) for e in (1, 2, 3.0, 9)] == [True] * 4
    assert [polynomial_power(Node(e), None) for e in (0.5, -1, 0, True, "x")] == [False] * 5
