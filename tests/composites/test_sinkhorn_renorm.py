"""Sinkhorn–Knopp normalization of softmax mixing weights (``C / (Σ_i C + ε)``, then ``C / (Σ_j C + ε)``,
alternating: a hyper-connection's doubly stochastic stream-mixing matrix) gets the renormalization rule by
graph structure, and the books of a model that mixes its streams with it close in zero-bias mode; a
hand-written softmax ``exp(x) / Σ exp(x)`` is not a renormalization of weights."""

from __future__ import annotations

import pytest
import torch

import lxt_fx
from lxt_fx.composites.routing import renormalizes_weights


def _sinkhorn(c: torch.Tensor, iters: int, eps: float = 1e-6) -> torch.Tensor:
    c = c / (c.sum(dim=-2, keepdim=True) + eps)
    for _ in range(iters - 1):
        c = c / (c.sum(dim=-1, keepdim=True) + eps)
        c = c / (c.sum(dim=-2, keepdim=True) + eps)
    return c


class _Mixer(torch.nn.Module):
    """N streams mixed by a doubly stochastic matrix made from the streams themselves (as mHC does)."""

    def __init__(self, streams: int = 3, hidden: int = 8, iters: int = 4) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.n, self.iters = streams, iters
        self.fn = torch.nn.Linear(streams * hidden, streams * streams, bias=False)
        self.out = torch.nn.Linear(hidden, 4, bias=False)

    def forward(self, inputs_embeds: torch.Tensor) -> dict[str, torch.Tensor]:
        b, s, d = inputs_embeds.shape
        streams = torch.stack([inputs_embeds, 2 * inputs_embeds, -inputs_embeds], dim=2)  # [B, S, N, D]
        comb = torch.softmax(self.fn(streams.reshape(b, s, -1)).view(b, s, self.n, self.n), dim=-1) + 1e-6
        comb = _sinkhorn(comb, self.iters)
        mixed = torch.einsum("bsij,bsjd->bsid", comb, streams)
        return {"logits": self.out(mixed.mean(dim=2))}


def test_sinkhorn_divisions_get_the_renormalization_rule() -> None:
    x = torch.randn(1, 3, 8)
    _, report = lxt_fx.attnlrp.rewrite(_Mixer().eval(), {"inputs_embeds": x}, strict=True)
    divisions = [r for r in report.rewritten if r.op.startswith("aten.div")]
    assert len(divisions) == 2 * 4 - 1 and {r.rule for r in divisions} == {"renormalize"}


def test_sinkhorn_mixing_closes_the_books_in_zero_bias_mode() -> None:
    x = torch.randn(1, 3, 8)
    report = lxt_fx.check(_Mixer().eval(), {"inputs_embeds": x}, composite="attnlrp", zero_bias=True)
    assert not report.unhandled
    assert report.verdict.verified, report.verdict.reason


def test_gradient_times_input_through_a_renormalization_sums_to_zero() -> None:
    """Why the plain gradient would not do (float64 Jacobian): ``w / Σw`` is homogeneous of degree 0, so
    Σ_i w_i ∂ŵ_j/∂w_i = 0 for every j — relevance sent into the weights would vanish there."""
    w = torch.rand(5, dtype=torch.float64) + 0.1
    jac = torch.autograd.functional.jacobian(lambda v: v / v.sum(), w)
    assert torch.allclose(jac @ w, torch.zeros(5, dtype=torch.float64), atol=1e-12)


class _Divide(torch.nn.Module):
    def __init__(self, how: str) -> None:
        super().__init__()
        self.how = how

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.how == "softmax-eps":      # first Sinkhorn step
            c = torch.softmax(x, dim=-1) + 1e-6
            return c / (c.sum(dim=-2, keepdim=True) + 1e-6)
        if self.how == "sigmoid":          # sigmoid gates normalized over a dim
            c = torch.sigmoid(x)
            return c / c.sum(dim=-1, keepdim=True)
        if self.how == "exp":              # a hand-written softmax: not matched
            return x.exp() / x.exp().sum(dim=-1, keepdim=True)
        if self.how == "other-sum":        # divided by another tensor's sum: not matched
            return torch.softmax(x, dim=-1) / x.sum(dim=-1, keepdim=True)
        raise KeyError(self.how)


@pytest.mark.parametrize(("how", "matched"), [("softmax-eps", True), ("sigmoid", True), ("exp", False),
                                              ("other-sum", False)])
def test_weight_renormalization_is_matched_by_structure(how: str, matched: bool) -> None:
    graph = torch.export.export(_Divide(how), (torch.randn(3, 3),), strict=False).graph
    divisions = [n for n in graph.nodes if n.op == "call_function" and "div" in str(n.target)]
    assert len(divisions) == 1, divisions
    assert renormalizes_weights(divisions[0]) is matched
