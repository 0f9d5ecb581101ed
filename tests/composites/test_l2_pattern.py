"""The structural L2-normalisation pattern: every spelling of ``x / ‖x‖₂`` is found in the graph (no model
name involved), gets the identity rule through the norm, and the books close.

Each toy model is ``score = v · normalize(W x)`` with bias-free layers, so with the norm held constant the
score is linear in ``x`` and Σ relevance must equal the score exactly; the plain gradient gives Σ = 0
(degree-0 homogeneity), so a missed match fails the conservation assertion as well as ``strict``."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lxt_fx.composites import attnlrp, cp_lrp

SPELLINGS = {
    "pow_half": lambda x: x / x.pow(2).sum(-1, keepdim=True).pow(0.5),       # CLIP, AltCLIP, TIPSv2
    "torch_pow": lambda x: x / torch.pow(torch.sum(torch.pow(x, 2), dim=-1, keepdim=True), 0.5),
    "norm": lambda x: x / x.norm(p=2, dim=-1, keepdim=True),                 # Chinese-CLIP, CLIPSeg
    "vector_norm_clamped": lambda x: x / torch.linalg.vector_norm(x, dim=-1, keepdim=True).clamp_min(1e-12),
    "normalize": lambda x: F.normalize(x, dim=-1),
    "sqrt_of_square": lambda x: x / torch.sqrt((x * x).sum(-1, keepdim=True) + 1e-12),
    "rsqrt": lambda x: x * torch.rsqrt(x.pow(2).sum(-1, keepdim=True) + 1e-12),
    "pow_minus_half": lambda x: x * x.pow(2).sum(-1, keepdim=True).pow(-0.5),
    "cast": lambda x: x / x.float().pow(2).sum(-1, keepdim=True).pow(0.5).to(x.dtype),
}


class Toy(nn.Module):
    def __init__(self, spelling: str) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.proj = nn.Linear(8, 6, bias=False)
        self.head = nn.Linear(6, 1, bias=False)
        self.normalize = SPELLINGS[spelling]

    def forward(self, inputs_embeds: torch.Tensor) -> torch.Tensor:
        return self.head(self.normalize(self.proj(inputs_embeds)))[..., 0]


CASES = [(spelling, attnlrp) for spelling in sorted(SPELLINGS)] + [("pow_half", cp_lrp), ("normalize", cp_lrp)]


@pytest.mark.parametrize(("spelling", "composite"), CASES, ids=[f"{s}-{c.name}" for s, c in CASES])
def test_every_spelling_is_matched_and_conserves(spelling: str, composite) -> None:
    model = Toy(spelling).eval()
    x = torch.randn(3, 8, generator=torch.Generator().manual_seed(1))
    _, report = composite.rewrite(model, {"inputs_embeds": x}, strict=True)  # no unhandled op
    rules = report.rule_counts()
    if spelling in ("rsqrt", "pow_minus_half"):
        assert rules.get("stop", 0) >= 1
    else:
        assert rules.get("l2_normalize") == 1, report
    leaf = x.clone().requires_grad_(True)
    with composite.context(model):
        score = model(leaf)
    (grad,) = torch.autograd.grad(score.sum(), leaf)
    torch.testing.assert_close(score, model(x), rtol=0, atol=0)  # the forward is the model's
    torch.testing.assert_close((x * grad).sum(-1), score.detach(), rtol=1e-5, atol=1e-6)


def test_a_division_by_another_tensors_norm_is_not_an_l2_normalisation() -> None:
    class Other(nn.Module):
        def forward(self, inputs_embeds: torch.Tensor) -> torch.Tensor:
            a, b = inputs_embeds[..., :4], inputs_embeds[..., 4:]
            return (a / b.pow(2).sum(-1, keepdim=True).pow(0.5)).sum(-1)  # b's norm, not a's

    _, report = attnlrp.rewrite(Other(), {"inputs_embeds": torch.randn(2, 8)})
    assert "l2_normalize" not in report.rule_counts()
    # b's norm scaling a is the generic norm scale (a root of a sum of squares, as ``sqrt`` would be): held
    # constant on the pow, not the L2 rule on the div
    assert {(r.op, r.rule) for r in report.rewritten if r.op.startswith(("aten.pow", "aten.div"))} == {
        ("aten.pow.Tensor_Scalar", "stop")}
