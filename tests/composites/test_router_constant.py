"""The MoE router held constant (``router_constant``, the Mixtral default): checked against a closed form.

With the routing weights ``ŵ`` constant, a one-layer MoE with linear experts and a linear head,
``f(x) = h · Σ_j ŵ_j W_j x``, is linear in ``x``: LRP's relevance is ``x ⊙ ∂f/∂x`` with ``ŵ`` detached, an
independent plain-autograd computation, and it sums to the score exactly. The pattern matches a router's
softmax (its probabilities feed a ``topk``) and no attention softmax; ``attnlrp`` stays selectable."""

from __future__ import annotations

import pytest
import torch
import transformers as tf
from helpers import ToyMoE, graph_gxi
from torch import nn

import lxt_fx
from lxt_fx import composites
from lxt_fx.composites import registry
from lxt_fx.composites.router_constant import router_constant


class SoftmaxRouter(nn.Module):
    """``ŵ = renorm(topk(softmax(W_g x), k))``, as Mixtral's router computes it; ``hold`` detaches ``ŵ``."""

    def __init__(self, dim: int, experts: int, k: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(experts, dim) * 0.8)
        self.k = k
        self.hold = False

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        probs = torch.softmax(nn.functional.linear(x, self.weight), dim=-1)
        top, index = torch.topk(probs, self.k, dim=-1)
        top = top / top.sum(dim=-1, keepdim=True)
        return (top.detach() if self.hold else top), index


def test_router_constant_equals_the_closed_form_with_the_routing_weights_detached() -> None:
    x = torch.randn(1, 6, 8, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    model = ToyMoE(SoftmaxRouter, seed=3).double().eval()
    r, score, graph = graph_gxi(model, x, router_constant, (0, -1, 1))
    assert [row.rule for row in graph.report.rewritten if "softmax" in row.op] == ["stop"]
    # the independent reference: plain autograd through the same function with ŵ detached
    model.router.hold = True
    leaf = x.clone().requires_grad_(True)
    reference_score = model(leaf)[0, -1, 1]
    (grad,) = torch.autograd.grad(reference_score, leaf)
    model.router.hold = False
    torch.testing.assert_close(r, (x * grad).detach(), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(r.sum(), score, rtol=1e-10, atol=0)  # linear with ŵ constant: conserves
    # the generic AttnLRP sends half of each product into the router, whose softmax term absorbs a share
    r_attn, score_attn, _ = graph_gxi(model, x, lxt_fx.attnlrp, (0, -1, 1))
    assert not torch.allclose(r_attn, r)


def _mixtral(attn: str) -> nn.Module:
    cfg = tf.MixtralConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=1,
                           num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=32,
                           num_local_experts=4, num_experts_per_tok=2, attn_implementation=attn)
    torch.manual_seed(0)
    return tf.MixtralForCausalLM(cfg).eval()


IDS = torch.randint(3, 64, (1, 7), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_only_the_router_softmax_is_held_constant(attn: str) -> None:
    att = lxt_fx.explain(_mixtral(attn), IDS)
    assert att.report.composite == "router_constant"
    stopped = [row for row in att.report.rewritten if row.rule == "stop" and "softmax" in row.op]
    assert len(stopped) == 1 and stopped[0].module_path.endswith("mlp.gate"), stopped
    softmax_dt = [row for row in att.report.rewritten if row.rule == "softmax"]
    assert len(softmax_dt) == (1 if attn == "eager" else 0)  # the eager attention softmax keeps its rule


def test_mixtral_default_is_router_constant_and_attnlrp_stays_selectable() -> None:
    model = _mixtral("sdpa")
    assert composites.for_model(model) is router_constant
    assert composites.resolve_composite("router_constant", model) is router_constant
    generic = lxt_fx.explain(model, IDS, composite="attnlrp")
    assert generic.report.composite == lxt_fx.attnlrp.name
    assert {row.rule for row in generic.report.rewritten} >= {"renormalize", "softmax"}  # the LXT-style rules
    try:
        composites.register("mixtral", lxt_fx.attnlrp)
        torch.testing.assert_close(lxt_fx.explain(model, IDS).relevance, generic.relevance, rtol=0, atol=0)
    finally:
        composites.unregister("mixtral")
        registry.register_defaults()
    assert composites.for_model(model) is router_constant


def test_zero_bias_books_close_with_the_router_constant() -> None:
    books = lxt_fx.check(_mixtral("sdpa"), IDS).zero_bias
    assert books is not None and books.verdict().status == "closes", books.verdict().reason
