"""The rewriter: rule nodes are opaque call_function nodes that stay in the graph, keep their metadata,
and their custom backward runs (a rule that was traced through or dropped would give plain gradients)."""

from __future__ import annotations

import torch
from conftest import VOCAB, make_model
from helpers import relative_error

import lxt_fx
from lxt_fx.rules import attention, identity, softmax, stop, uniform
from lxt_fx.session import rewritten_graph

RULE_FUNCTIONS = {uniform.uniform, identity.identity, softmax.softmax_dt, stop.stop, attention.attention}


def test_every_decision_is_an_opaque_rule_node_with_metadata() -> None:
    model = make_model("gemma3", "sdpa")
    ids = torch.randint(0, VOCAB, (2, 6))
    graph = rewritten_graph(model, lxt_fx.attnlrp, {"inputs_embeds": model.get_input_embeddings()(ids)}, {})
    nodes = {n.name: n for n in graph.module.graph.nodes}
    assert graph.report.rewritten
    for row in graph.report.rewritten:
        node = nodes[row.name]
        assert node.op == "call_function" and node.target in RULE_FUNCTIONS, row
        assert str(node.args[0]) == row.op  # the original ATen op is the rule's first argument
        assert node.meta["nn_module_stack"] and node.meta.get("stack_trace"), row
        assert row.module_path and row.source.endswith(tuple("0123456789"))
    assert sum(n.target in RULE_FUNCTIONS for n in nodes.values()) == len(graph.report.rewritten)
    code = graph.module.code
    assert code.count("lxt_fx_rules_") >= len(graph.report.rewritten)
    assert "attention" in {r.rule for r in graph.report.rewritten}
    assert attention.Attention().gxi(None, (0, 1, 2))[0] is attention.attention


def test_rule_backwards_run() -> None:
    """AttnLRP differs from plain Input×Gradient of the same graph (the rules act in backward)."""
    model = make_model("llama", "sdpa")
    ids = torch.randint(0, VOCAB, (1, 9))
    att = lxt_fx.explain(model, ids)
    emb = model.get_input_embeddings()(ids).detach().requires_grad_(True)
    logit = model(inputs_embeds=emb).logits[0, -1, int(att.target_ids[0])]
    (grad,) = torch.autograd.grad(logit, emb)
    plain = (emb * grad).sum(-1).detach()
    assert relative_error(att.relevance, plain) > 1e-2
    assert torch.isfinite(att.relevance).all()
