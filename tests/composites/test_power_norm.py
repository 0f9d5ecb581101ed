"""Norms and magnitudes written with ``torch.pow`` (Gemma-3n, Gemma-4): ``pow(·, e)`` with ``e < 1``, ``e ≠ 0``
that scales another relevance-carrying tensor is a norm's scale — identity through the norm (Prop. 3.4),
the scale held constant. Checked against a hand-written model with the scales detached (the closed form of
that rule), and against the books: bias-free, the input relevance sums to the score."""

from __future__ import annotations

import torch
from torch.testing import assert_close

import lxt_fx
from lxt_fx.composites.attnlrp import root_or_reciprocal_power


class _PowNorms(torch.nn.Module):
    """An RMS norm as ``x * pow(mean(x²) + eps, -0.5)`` and a magnitude match ``y * mean(h²) ** 0.5 /
    sqrt(mean(y²))``; ``detach=True`` is the closed form of the identity-through-the-norm rule."""

    def __init__(self, detach: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a = torch.nn.Linear(8, 8, bias=False)
        self.b = torch.nn.Linear(8, 8, bias=False)
        self.head = torch.nn.Linear(8, 4, bias=False)
        self.detach = detach

    def forward(self, inputs_embeds: torch.Tensor) -> dict[str, torch.Tensor]:
        def const(t: torch.Tensor) -> torch.Tensor:
            return t.detach() if self.detach else t

        x = self.a(inputs_embeds)
        normed = x * const(torch.pow(x.pow(2).mean(-1, keepdim=True) + 1e-6, -0.5))
        y = self.b(inputs_embeds)
        matched = y * const((inputs_embeds ** 2).mean(-1, keepdim=True) ** 0.5) / const(
            torch.sqrt(y.pow(2).mean(-1, keepdim=True)))
        return {"logits": self.head(normed + matched)}


def _relevance(model: torch.nn.Module, x: torch.Tensor, in_context: bool) -> tuple[torch.Tensor, float]:
    leaf = x.clone().requires_grad_(True)
    if in_context:
        with lxt_fx.attnlrp.context(model):
            score = model(inputs_embeds=leaf)["logits"][0, -1, 2]
    else:
        score = model(inputs_embeds=leaf)["logits"][0, -1, 2]
    score.backward()
    return (leaf * leaf.grad).detach(), float(score.detach())


def test_pow_norm_scales_are_stopped_and_match_the_detached_closed_form() -> None:
    x = torch.randn(1, 3, 8)
    model = _PowNorms().eval()
    _, report = lxt_fx.attnlrp.rewrite(model, {"inputs_embeds": x}, strict=True)  # no unhandled op
    stopped = [r for r in report.rewritten if r.op == "aten.pow.Tensor_Scalar"]
    assert len(stopped) == 2 and {r.rule for r in stopped} == {"stop"}
    got, score = _relevance(model, x, in_context=True)
    want, want_score = _relevance(_PowNorms(detach=True).eval(), x, in_context=False)
    assert abs(score - want_score) < 1e-6  # the forward is unchanged
    assert_close(got, want, rtol=1e-5, atol=1e-7)
    assert abs(float(got.sum()) - score) < 1e-5 * max(1.0, abs(score))  # bias-free: the books close


def test_only_roots_and_reciprocal_powers_are_scales() -> None:
    class Node:
        def __init__(self, exponent: object) -> None:
            self.args, self.kwargs = ("x", exponent), {}

    assert [root_or_reciprocal_power(Node(e), None) for e in (-0.5, -1, 0.5, 1 / 3)] == [True] * 4
    assert [root_or_reciprocal_power(Node(e), None) for e in (2, 3.0, 1, 0, True, "x")] == [False] * 6


def test_a_square_on_the_relevance_path_is_no_scale_but_identity() -> None:
    """``x.pow(2)`` that carries relevance is not a norm's scale (no stop): it takes the identity rule, as
    ``aten.square`` does (two equal factors under the uniform product rule, Prop. 3.2); the square inside
    the scale needs no rule."""
    class Square(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = torch.nn.Linear(8, 8)

        def forward(self, inputs_embeds: torch.Tensor) -> dict[str, torch.Tensor]:
            x = self.a(inputs_embeds)
            return {"logits": x.pow(2) * torch.pow(x.pow(2).mean(-1, keepdim=True) + 1e-6, -0.5)}

    _, report = lxt_fx.attnlrp.rewrite(Square().eval(), {"inputs_embeds": torch.randn(1, 3, 8)})
    assert not report.unhandled
    rules = sorted(r.rule for r in report.rewritten if r.op.startswith("aten.pow"))
    assert rules == ["identity", "stop"]  # the carrier x², the scale pow(·, -0.5)
