"""Top-k routing weights renormalized by their own sum (``w /= w.sum(-1, keepdim=True)``) get the
renormalization rule whatever the router's class is called (HunYuan-MoE's is a ``…Gate``); a division by
the sum of *another* tensor does not match."""

from __future__ import annotations

import torch

import lxt_fx


class _Gate(torch.nn.Module):
    def __init__(self, own: bool) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.wg = torch.nn.Linear(8, 4, bias=False)
        self.own = own

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        w = torch.softmax(self.wg(h), dim=-1)
        w, _ = torch.topk(w, 2, dim=-1)
        if self.own:
            w /= w.sum(dim=-1, keepdim=True) + 1e-20  # in place, + eps: still w's own sum
            return w
        return w / (h.sum(dim=-1, keepdim=True) + 3.0)  # a carrying divisor that is not w's sum


class _Moe(torch.nn.Module):
    def __init__(self, own: bool = True) -> None:
        super().__init__()
        self.gate = _Gate(own)
        self.up = torch.nn.Linear(8, 8, bias=False)

    def forward(self, inputs_embeds: torch.Tensor) -> dict[str, torch.Tensor]:
        w = self.gate(inputs_embeds)
        return {"logits": w.sum(-1, keepdim=True) * self.up(inputs_embeds)}


def test_own_sum_renormalization_gets_the_rule_without_a_router_class_name() -> None:
    x = torch.randn(1, 3, 8)
    _, report = lxt_fx.attnlrp.rewrite(_Moe().eval(), {"inputs_embeds": x}, strict=True)
    assert {(r.op, r.rule) for r in report.rewritten if r.op.startswith("aten.div")} == {
        ("aten.div_.Tensor", "renormalize")}


def test_division_by_another_tensors_sum_is_not_a_renormalization() -> None:
    _, report = lxt_fx.attnlrp.rewrite(_Moe(own=False).eval(), {"inputs_embeds": torch.randn(1, 3, 8)})
    assert [r.op for r in report.unhandled] == ["aten.div.Tensor"]
