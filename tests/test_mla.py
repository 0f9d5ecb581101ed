"""Multi-head latent attention (DeepSeek-V2/V3 and kin): in-place writes into a buffer, complex rotary
embeddings.

MLA assembles its keys in place: ``key = k.new_empty(...); key[..., :d].copy_(k_nope);
key[..., d:].copy_(k_rope.expand(...))``. No data-flow edge leads from ``k_nope`` / ``k_rope`` to ``key``, so a
relevance-path analysis that follows arguments only sees one carrying factor in ``q @ keyᵀ``: no uniform
rule (relevance doubled by the plain gradient), and the explicit reference and the books lose the key side.
DeepSeek-V2 and Llama 4 rotate q and k as complex products, which a float-only relevance path drops.

References are independent of our GxI path: the same model written with ``torch.cat`` (no in-place op),
closed-form conservation (no bias, no softmax: Σ R_input = score exactly), the float64 explicit-form
reference (:mod:`lxt_fx.reference`) and the zero-bias books of :func:`lxt_fx.check`.
"""

from __future__ import annotations

import pytest
import torch
from helpers import graph_gxi, relative_error
from torch import nn
from torch.testing import assert_close

import lxt_fx
from lxt_fx.check import check
from lxt_fx.reference import explicit_relevance
from lxt_fx.session import rewritten_graph


class LatentKeys(nn.Module):
    """``head(q keyᵀ)``; ``key`` = [per-head ``k_nope`` | one ``k_rope`` shared by every head], built in a
    buffer by ``copy_`` (``mode="buffer"``, as DeepSeek-V3's ``expand_kv``) or by ``torch.cat`` (``"cat"``)."""

    def __init__(self, mode: str) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.q = nn.Linear(8, 2 * 6, bias=False)
        self.k_nope = nn.Linear(8, 2 * 4, bias=False)
        self.k_rope = nn.Linear(8, 2, bias=False)
        self.head = nn.Linear(5, 3, bias=False)
        self.mode = mode

    def forward(self, inputs_embeds: torch.Tensor) -> torch.Tensor:
        b, s, _ = inputs_embeds.shape
        q = self.q(inputs_embeds).view(b, s, 2, 6).transpose(1, 2)
        k_nope = self.k_nope(inputs_embeds).view(b, s, 2, 4).transpose(1, 2)
        k_rope = self.k_rope(inputs_embeds).view(b, 1, s, 2).expand(-1, 2, -1, -1)
        if self.mode == "cat":
            key = torch.cat((k_nope, k_rope), dim=-1)
        else:
            key = k_nope.new_empty(b, 2, s, 6)
            key[..., :4].copy_(k_nope)
            key[..., 4:].copy_(k_rope)
        return self.head(q @ key.transpose(2, 3)).sum(1)



def test_keys_written_into_a_buffer_are_a_product_of_two_carrying_factors() -> None:
    x = torch.randn(1, 5, 8, generator=torch.Generator().manual_seed(1))
    r_cat, s_cat, _ = graph_gxi(LatentKeys("cat").eval(), x)
    r_buf, s_buf, graph = graph_gxi(LatentKeys("buffer").eval(), x)
    assert_close(s_buf, s_cat)
    # no bias, no softmax: the uniform rule conserves exactly (before the fix: Σ R = 2 · score)
    assert abs(float(r_buf.sum() / s_buf) - 1.0) < 1e-5, float(r_buf.sum() / s_buf)
    assert_close(r_buf, r_cat, rtol=1e-5, atol=1e-6)
    rules = {row.name: row.rule for row in graph.report.rewritten}
    assert rules.get("matmul") == "uniform", rules
    assert not graph.report.unhandled
    assert sorted(graph.plan.writes) == ["copy_", "copy__1"]
    assert set(graph.plan.writes.values()) == {"new_empty"}


def test_buffer_writes_in_the_explicit_reference_and_the_books() -> None:
    x = torch.randn(1, 5, 8, generator=torch.Generator().manual_seed(2))
    r_buf, _, graph = graph_gxi(LatentKeys("buffer").eval(), x)
    with torch.no_grad():
        out = graph({"inputs_embeds": x})["output"]
    seed = torch.zeros_like(out)
    seed[0, -1, 0] = out[0, -1, 0]
    ref = explicit_relevance(graph, {"inputs_embeds": x}, {"output": seed}, every_node=True)
    assert_close(ref["tensors_inputs_embeds"].float(), r_buf, rtol=1e-4, atol=1e-6)
    # each write took exactly the entries it filled: the buffer keeps nothing for itself
    assert float(ref["new_empty"].abs().max()) < 1e-12
    books = check(LatentKeys("buffer").eval(), {"inputs_embeds": x}).zero_bias
    assert books is not None and books.verdict().verified, books.verdict().reason
    assert books.relative_gap < 1e-5
    leaks = {leak.name: leak.absorbed for leak in books.leaks}
    for name in ("new_empty", "copy_", "copy__1"):  # the writes' edges into the buffer are booked
        assert abs(leaks[name]) < 1e-6 * abs(books.score), (name, leaks[name])


def test_a_buffer_read_between_two_writes_sees_only_the_first() -> None:
    """``buf[:, :4] = a; y1 = buf.sum(); buf[:, 4:] = b; y2 = (w ⊙ buf).sum()``: the first read gets no share
    of ``b``; relevance equals the closed form of this linear map, ``R_a = a ⊙ ∂y/∂a``, ``R_b = b ⊙ ∂y/∂b``."""

    class TwoReads(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(8, 4, bias=False), nn.Linear(8, 4, bias=False)
            self.w = nn.Parameter(torch.randn(8))

        def forward(self, inputs_embeds: torch.Tensor) -> torch.Tensor:
            a, b = self.a(inputs_embeds), self.b(inputs_embeds)
            buf = a.new_zeros(*a.shape[:-1], 8)
            buf[..., :4].copy_(a)
            first = buf.sum(-1, keepdim=True)
            buf[..., 4:].copy_(b)
            return first + (buf * self.w).sum(-1, keepdim=True)

    torch.manual_seed(3)
    model = TwoReads().eval()
    x = torch.randn(1, 5, 8)
    graph = rewritten_graph(model, lxt_fx.attnlrp, {"inputs_embeds": x}, {})
    leaf = x.clone().requires_grad_(True)
    score = graph({"inputs_embeds": leaf})["output"][0, -1, 0]
    (grad,) = torch.autograd.grad(score, leaf)
    with torch.no_grad():
        a, b = model.a(x)[0, -1], model.b(x)[0, -1]
    assert_close(score.detach(), (a.sum() + (a * model.w[:4]).sum() + (b * model.w[4:]).sum()).detach())
    r_a = a * (1 + model.w[:4])  # the closed form: the contributions of a and b to the linear score
    r_b = b * model.w[4:]
    assert_close((leaf * grad).sum(), (r_a.sum() + r_b.sum()).detach(), rtol=1e-5, atol=1e-6)
    seed = torch.zeros(1, 5, 1)
    seed[0, -1, 0] = score.detach()
    ref = explicit_relevance(graph, {"inputs_embeds": x}, {"output": seed}, every_node=True)
    assert_close(ref["linear"][0, -1].float(), r_a.detach(), rtol=1e-5, atol=1e-6)
    assert_close(ref["linear_1"][0, -1].float(), r_b.detach(), rtol=1e-5, atol=1e-6)


def tiny_deepseek_v3(attn: str) -> nn.Module:
    """A one-layer DeepSeek-V3 (MLA with LoRA queries, interleaved rope) with the sweep's head geometry."""
    import transformers as tf

    cfg = tf.DeepseekV3Config(vocab_size=96, hidden_size=64, intermediate_size=96, moe_intermediate_size=16,
                              num_hidden_layers=1, first_k_dense_replace=1, num_attention_heads=4,
                              num_key_value_heads=4, q_lora_rank=32, kv_lora_rank=32, qk_rope_head_dim=8,
                              qk_nope_head_dim=8, v_head_dim=16, n_routed_experts=4, num_experts_per_tok=2,
                              n_group=1, topk_group=1, max_position_embeddings=64)
    cfg._attn_implementation = attn
    torch.manual_seed(0)
    return tf.AutoModelForCausalLM.from_config(cfg).eval()


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_deepseek_v3_equals_float64_reference_and_books_close(attn: str) -> None:
    from helpers import reference_relevance

    model = tiny_deepseek_v3(attn)
    ids = torch.randint(3, 96, (2, 7), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    att = lxt_fx.explain(model, ids, attention_mask=mask, strict=True)
    rows = {row.name: row for row in att.report.rewritten}
    if attn == "eager":  # q kᵀ: two carrying factors
        assert rows["matmul"].rule == "uniform", rows
    else:  # the fused kernel's keys carry relevance: ¼ of the gradient on q and k, ½ on v
        (sdpa,) = (row for row in rows.values() if row.rule == "attention")
        assert sdpa.carrying == (0, 1, 2), sdpa
    ref = reference_relevance(model, ids, mask, att)
    assert relative_error(att.relevance.double(), ref) < 1e-5
    books = check(model, ids).zero_bias
    assert books is not None and books.verdict().verified, books.verdict().reason


class ComplexRope(nn.Module):
    """``head(rope(q) rope(k)ᵀ)`` with the rotation written as a complex product (``view_as_complex(x) ·
    e^{iθ}``, as DeepSeek-V2 and Llama 4 do) or as the same rotation in real coordinates (cos / sin)."""

    def __init__(self, mode: str) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.q, self.k = nn.Linear(8, 6, bias=False), nn.Linear(8, 6, bias=False)
        self.head = nn.Linear(5, 3, bias=False)
        self.mode = mode
        angles = torch.arange(5.0)[:, None] * torch.tensor([1.0, 0.3, 0.05])
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)

    def rope(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "complex":
            rotated = torch.view_as_complex(x.reshape(*x.shape[:-1], -1, 2)) * torch.complex(self.cos, self.sin)
            return torch.view_as_real(rotated).flatten(-2)
        even, odd = x[..., 0::2], x[..., 1::2]
        pairs = torch.stack((even * self.cos - odd * self.sin, even * self.sin + odd * self.cos), dim=-1)
        return pairs.flatten(-2)

    def forward(self, inputs_embeds: torch.Tensor) -> torch.Tensor:
        q, k = self.rope(self.q(inputs_embeds)), self.rope(self.k(inputs_embeds))
        return self.head(q @ k.transpose(1, 2))


def test_complex_rotary_embedding_carries_relevance() -> None:
    x = torch.randn(1, 5, 8, generator=torch.Generator().manual_seed(4))
    r_real, s_real, _ = graph_gxi(ComplexRope("real").eval(), x)
    r_cplx, s_cplx, graph = graph_gxi(ComplexRope("complex").eval(), x)
    assert_close(s_cplx, s_real)
    assert abs(float(r_cplx.sum() / s_cplx) - 1.0) < 1e-5, float(r_cplx.sum() / s_cplx)  # before: 2 · score
    assert_close(r_cplx, r_real, rtol=1e-5, atol=1e-6)
    assert {row.name: row.rule for row in graph.report.rewritten}.get("matmul") == "uniform"
    assert not graph.report.unhandled
    with torch.no_grad():
        out = graph({"inputs_embeds": x})["output"]
    seed = torch.zeros_like(out)
    seed[0, -1, 0] = out[0, -1, 0]
    ref = explicit_relevance(graph, {"inputs_embeds": x}, {"output": seed})["inputs_embeds"]
    assert_close(ref.float(), r_cplx, rtol=1e-4, atol=1e-6)
    books = check(ComplexRope("complex").eval(), {"inputs_embeds": x}).zero_bias
    assert books is not None and books.verdict().verified, books.verdict().reason
    assert books.relative_gap < 1e-5
