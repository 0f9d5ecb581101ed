"""Edge taps on a view of a buffer that a later in-place write changes through another view (a triangular
solve row by row, ``attn[..., i, :i] = row + …`` after ``row = attn[..., i, :i].clone()``, as chunked
delta-rule linear attention does) keep the value their consumer saw: the books close, with no ± pair booked
at the read view and its clone."""

from __future__ import annotations

import torch

import lxt_fx


class _RowByRowSolve(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.k = torch.nn.Linear(8, 8, bias=False)
        self.v = torch.nn.Linear(8, 8, bias=False)
        self.o = torch.nn.Linear(8, 3, bias=False)

    def forward(self, inputs_embeds: torch.Tensor) -> dict[str, torch.Tensor]:
        k, v = self.k(inputs_embeds), self.v(inputs_embeds)
        attn = -(k @ k.transpose(-1, -2)).tril(-1) * 0.1
        for i in range(1, attn.shape[-1]):
            row = attn[..., i, :i].clone()
            sub = attn[..., :i, :i].clone()
            attn[..., i, :i] = row + (row.unsqueeze(-1) * sub).sum(-2)
        return {"logits": self.o(attn @ v)}


def test_a_view_read_before_a_write_through_another_view_keeps_its_value() -> None:
    x = torch.randn(1, 5, 8)
    report = lxt_fx.check(_RowByRowSolve().eval(), {"inputs_embeds": x}, composite="attnlrp", zero_bias=True)
    assert report.verdict.verified, report.verdict.reason
    leaks = {n.name: abs(n.absorbed) for n in report.zero_bias.top(50) if n.op in ("aten.select.int",
                                                                                     "aten.clone.default")}
    assert max(leaks.values(), default=0.0) < 1e-6 * abs(report.zero_bias.score)
