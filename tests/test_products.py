"""Products whose factors sit in a list argument (``einsum``, ``linalg_multi_dot``) and in-place products
(``a.mul_(b)``): the relevance-carrying analysis sees list elements, the uniform rule splits ``1/k`` over the
``k`` carrying operands, list ops that only rearrange (``cat``) stay linear, and an in-place product keeps
the model's forward value and aliasing.

References are independent: the matmul form of the same model, closed forms of the uniform rule, and the
conservation identity Σ R_in = score (zero biases, no softmax, so nothing may be lost)."""

from __future__ import annotations

import pytest
import torch
from helpers import graph_gxi, gxi_and_explicit
from torch import nn
from torch.testing import assert_close

import lxt_fx
from lxt_fx.check import check
from lxt_fx.reference import explicit_relevance
from lxt_fx.rewrite import describe_positions
from lxt_fx.rules import Uniform
from lxt_fx.rules.base import arg_at
from lxt_fx.session import rewritten_graph

aten = torch.ops.aten
F64 = torch.float64


class Scores(nn.Module):
    """``head(q kᵀ)`` with ``q``, ``k`` linear in the input and every bias zero; the product written as
    ``matmul``, ``einsum`` (two operands in a list) or ``einsum`` with a third, constant-free operand."""

    def __init__(self, mode: str) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.q, self.k, self.v = (nn.Linear(8, 8, bias=False) for _ in range(3))
        self.head = nn.Linear(5, 3, bias=False)
        self.mode = mode

    def forward(self, inputs_embeds: torch.Tensor) -> torch.Tensor:
        q, k = self.q(inputs_embeds), self.k(inputs_embeds)
        if self.mode == "matmul":
            s = q @ k.transpose(1, 2)
        elif self.mode == "einsum":
            s = torch.einsum("bid,bjd->bij", q, k)
        else:  # three carrying operands: an element-wise triple product, then the same contraction
            s = torch.einsum("bid,bjd,bjd->bij", q, k, self.v(inputs_embeds))
        return self.head(s)



def test_einsum_of_two_carrying_tensors_conserves_like_matmul() -> None:
    x = torch.randn(1, 5, 8, generator=torch.Generator().manual_seed(1))
    r_matmul, s_matmul, _ = graph_gxi(Scores("matmul").eval(), x)
    r_einsum, s_einsum, graph = graph_gxi(Scores("einsum").eval(), x)
    assert_close(s_einsum, s_matmul)
    for r, s in ((r_matmul, s_matmul), (r_einsum, s_einsum)):
        assert abs(float(r.sum() / s) - 1.0) < 1e-5, float(r.sum() / s)  # before the fix: 2.000 for einsum
    assert_close(r_einsum, r_matmul, rtol=1e-5, atol=1e-6)
    rows = {row.name: row for row in graph.report.rewritten}
    assert rows["einsum"].rule == "uniform" and rows["einsum"].carrying == ((1, 0), (1, 1))
    assert describe_positions(rows["einsum"].carrying) == "1[0], 1[1]"
    assert not graph.report.unhandled
    # the explicit-form reference (float64) walks the same list positions
    ref = explicit_relevance(graph, {"inputs_embeds": x}, {"output": _seed(graph, x)})["inputs_embeds"]
    assert_close(ref.float(), r_einsum, rtol=1e-4, atol=1e-6)


def _seed(graph: object, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        out = graph({"inputs_embeds": x})["output"]
    seed = torch.zeros_like(out)
    seed[0, -1, 0] = out[0, -1, 0]
    return seed


def test_zero_bias_books_close_on_einsum() -> None:
    report = check(Scores("einsum").eval(), {"inputs_embeds": torch.randn(1, 5, 8)})
    assert report.zero_bias is not None and report.zero_bias.relative_gap < 1e-5
    assert report.ok


def test_einsum_with_three_carrying_operands_gives_each_a_third() -> None:
    x = torch.randn(1, 5, 8, generator=torch.Generator().manual_seed(2))
    r, s, graph = graph_gxi(Scores("einsum3").eval(), x)
    assert abs(float(r.sum() / s) - 1.0) < 1e-5
    assert {row.name: row.carrying for row in graph.report.rewritten}["einsum"] == ((1, 0), (1, 1), (1, 2))
    # rule level, element-wise triple product: closed form R_a = R_b = R_c = R_y / 3
    a, b, c = (torch.randn(4, 6, dtype=F64, generator=torch.Generator().manual_seed(i)) for i in range(3))
    op, args, carrying = aten.einsum.default, ("ij,ij,ij->ij", [a, b, c]), ((1, 0), (1, 1), (1, 2))
    y, r_y, gxi, ex = _list_gxi_and_explicit(Uniform(), op, args, carrying)
    assert_close(y, a * b * c)
    for p in carrying:
        assert_close(gxi[p], r_y / 3, rtol=1e-12, atol=1e-14)
        assert_close(arg_at(ex, p), r_y / 3, rtol=1e-6, atol=1e-12)


def _list_gxi_and_explicit(rule: Uniform, op: object, args: tuple, carrying: tuple
                           ) -> tuple[torch.Tensor, torch.Tensor, dict, list]:
    """:func:`helpers.gxi_and_explicit` for factors that sit in a list argument."""
    leaves = {p: arg_at(args, p).detach().clone().requires_grad_(True) for p in carrying}
    call = [list(a) if isinstance(a, list) else a for a in args]
    for (i, j), leaf in leaves.items():
        call[i][j] = leaf
    fn, extra = rule.gxi(op, carrying)
    y = fn(op, *call, **extra)
    g = torch.randn_like(y)
    grads = torch.autograd.grad(y, list(leaves.values()), g)
    r_y = y.detach() * g
    gxi = {p: arg_at(args, p) * gr for p, gr in zip(carrying, grads, strict=True)}
    return y.detach(), r_y, gxi, rule.explicit(op, args, {}, y.detach(), r_y, carrying)


def test_multi_dot_closed_form() -> None:
    """``A B C`` with all three carrying: ``N = R_y / (3y)``, ``R_A = (N (BC)ᵀ) ⊙ A``,
    ``R_B = (Aᵀ N Cᵀ) ⊙ B``, ``R_C = ((AB)ᵀ N) ⊙ C``."""
    gen = torch.Generator().manual_seed(4)
    a, b, c = (torch.randn(n, m, dtype=F64, generator=gen) for n, m in ((3, 5), (5, 4), (4, 2)))
    carrying = ((0, 0), (0, 1), (0, 2))
    y, r_y, gxi, ex = _list_gxi_and_explicit(Uniform(), aten.linalg_multi_dot.default, ([a, b, c],), carrying)
    n = r_y / (3 * y)
    closed = {(0, 0): (n @ (b @ c).T) * a, (0, 1): (a.T @ n @ c.T) * b, (0, 2): ((a @ b).T @ n) * c}
    for p in carrying:
        assert_close(gxi[p], closed[p], rtol=1e-8, atol=1e-10)
        assert_close(arg_at(ex, p), closed[p], rtol=1e-6, atol=1e-10)


class Concat(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a, self.b = nn.Linear(8, 4, bias=False), nn.Linear(8, 4, bias=False)

    def forward(self, inputs_embeds: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.a(inputs_embeds), self.b(inputs_embeds)], dim=-1).sum(-1)


def test_cat_of_two_carrying_tensors_stays_linear() -> None:
    x = torch.randn(1, 5, 8)
    graph = rewritten_graph(Concat().eval(), lxt_fx.attnlrp, {"inputs_embeds": x}, {})
    cat = next(n for n in graph.module.graph.nodes if "cat" in n.name)
    assert graph.plan.carrying[cat.name] == ((0, 0), (0, 1))
    assert not graph.report.rewritten and not graph.report.unhandled


class InPlace(nn.Module):
    """``a = x W1; b = x W2; a.mul_(b)`` (or ``a * b``), then a head; no biases."""

    def __init__(self, inplace: bool) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.w1, self.w2 = nn.Parameter(torch.randn(8, 8)), nn.Parameter(torch.randn(8, 8))
        self.head = nn.Linear(8, 3, bias=False)
        self.inplace = inplace

    def forward(self, inputs_embeds: torch.Tensor) -> torch.Tensor:
        a, b = inputs_embeds @ self.w1, inputs_embeds @ self.w2
        if self.inplace:
            a.mul_(b)
        else:
            a = a * b
        return self.head(a) + a.sum(-1, keepdim=True)  # a read again after the write: aliasing kept


def test_inplace_product_gets_the_uniform_rule_and_keeps_the_forward() -> None:
    x = torch.randn(1, 5, 8, generator=torch.Generator().manual_seed(3))
    model = InPlace(True).eval()
    with torch.no_grad():
        expected = model(x)
    r_inplace, s_inplace, graph = graph_gxi(model, x)  # before the fix: "ScaleGradient is a view …"
    r_outplace, s_outplace, _ = graph_gxi(InPlace(False).eval(), x)
    with torch.no_grad():
        assert torch.equal(graph({"inputs_embeds": x})["output"], expected)
    assert {row.name: row.rule for row in graph.report.rewritten} == {"mul_": "uniform"}
    assert_close(s_inplace, s_outplace)
    assert_close(r_inplace, r_outplace, rtol=1e-5, atol=1e-6)
    assert abs(float(r_inplace.sum() / s_inplace) - 1.0) < 1e-5


def test_check_books_close_node_by_node_on_an_inplace_product() -> None:
    x = torch.randn(1, 5, 8, generator=torch.Generator().manual_seed(3))
    model = InPlace(True).eval()
    with torch.no_grad():
        expected = model(x)
    report = check(model, {"inputs_embeds": x})
    zero = report.zero_bias
    # the edge into mul_ is tapped on a fresh tensor that mul_ then writes (see lxt_fx.taps.insert_taps)
    assert zero.verdict().status == "closes", zero.verdict().reason
    assert report.ok
    # the tapped graph's forward is the model's: `a` read after the write sees the written value
    assert abs(report.score - float(expected[0, -1].max())) < 1e-5
    with torch.no_grad():
        assert torch.equal(model(x), expected)  # the check leaves the model as it was


def test_inplace_product_of_a_tensor_with_itself() -> None:
    a = torch.randn(4, 5, dtype=F64, requires_grad=True)
    fn, extra = Uniform().gxi(aten.mul_.Tensor, (0, 1))
    start = a * 1.0  # a non-leaf, as in a graph
    out = fn(aten.mul_.Tensor, start, start, **extra)
    assert out is start and torch.equal(out, a.detach() ** 2)
    (grad,) = torch.autograd.grad(out.sum(), a)
    assert_close(grad * a.detach(), (a.detach() ** 2))  # ½ + ½ of R_y = a² each element


@pytest.mark.parametrize("eps", [0.0, 0.5])
def test_mul_rule_unchanged_for_top_level_factors(eps: float) -> None:
    a, b = torch.randn(3, 4, dtype=F64), torch.randn(3, 4, dtype=F64)
    _, r_y, gxi, _ = gxi_and_explicit(Uniform(eps), aten.mul.Tensor, (a, b), (0, 1))
    if not eps:
        assert_close(gxi[0], r_y / 2)
    assert Uniform().gxi(aten.einsum.default, ((1, 0), (1, 1)))[1] == {"scales": (1.0, (0.5, 0.5))}
