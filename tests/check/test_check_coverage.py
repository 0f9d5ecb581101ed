"""Coverage: every relevance-path op is classified; a composite missing a rule is caught by name and path;
rule opacity: every decision is a rule call in the recompiled code."""

from __future__ import annotations

import pytest
import torch
from check_models import without
from conftest import FAMILIES, VOCAB, make_model

import lxt_fx
from lxt_fx.check import check
from lxt_fx.check.coverage import classify, counts
from lxt_fx.check.opacity import prove
from lxt_fx.session import rewritten_graph


def _graph(model, composite=lxt_fx.attnlrp):
    ids = torch.randint(0, VOCAB, (1, 6))
    tensors = {"inputs_embeds": model.get_input_embeddings()(ids).detach(), "attention_mask": torch.ones_like(ids)}
    return rewritten_graph(model, composite, tensors, {})


@pytest.mark.parametrize("family", FAMILIES)
def test_complete_attnlrp_leaves_nothing_unhandled(family: str) -> None:
    graph = _graph(make_model(family, "sdpa"))
    rows = classify(graph.module, graph.plan)
    assert not [r for r in rows if r.kind == "UNHANDLED"]
    kinds = counts(rows)
    assert kinds["rule"] > 0 and kinds["linear"] > 0 and kinds["off-path"] > 0
    assert len(rows) == sum(1 for n in graph.module.graph.nodes if n.op == "call_function")
    for r in rows:  # everything that carries relevance says where it comes from
        if r.kind in ("rule", "linear", "selection"):
            assert r.source and (r.module_path or r.kind != "rule"), r
    assert all(r.ok for r in prove(graph.module, graph.plan))


def test_eager_attention_is_covered_too() -> None:
    graph = _graph(make_model("llama", "eager"))
    rows = classify(graph.module, graph.plan)
    assert not [r for r in rows if r.kind == "UNHANDLED"]
    assert {r.rule for r in rows if r.kind == "rule"} >= {"softmax", "uniform", "identity", "stop"}


@pytest.fixture(scope="module")
def llama():
    return make_model("llama", "sdpa")


MISSING = {  # (rule classes left out, expected UNHANDLED node name prefix → module path)
    "activation": (("Identity", "IdentityRegion"), {"silu": "model.layers.0.mlp.act_fn",
                                                     "silu_1": "model.layers.1.mlp.act_fn"}),
    "norm": (("Stop", "NormIdentity"), {"rsqrt": "model.layers.0.input_layernorm",
                                        "rsqrt_4": "model.norm"}),
    "gate-product": (("Uniform",), {}),
}


@pytest.mark.parametrize("missing", list(MISSING))
def test_missing_rule_is_flagged_by_node_and_module(llama, missing: str) -> None:
    left_out, expected = MISSING[missing]
    report = check(llama, torch.randint(0, VOCAB, (1, 6)), composite=without(*left_out, name=f"no-{missing}"),
                   zero_bias=False)
    flagged = {r.name: r for r in report.unhandled}
    assert flagged and not report.ok
    assert dict((c, p) for c, p, _ in report.checks())["coverage"] is False
    for name, path in expected.items():
        assert flagged[name].module_path == path and flagged[name].op.startswith("aten.")
        assert "modeling_llama.py" in flagged[name].source or "activations.py" in flagged[name].source
    if missing == "gate-product":  # the gate·up product of every MLP, nothing else (SDPA has its own rule)
        assert {r.module_path for r in flagged.values()} == {"model.layers.0.mlp", "model.layers.1.mlp"}
        assert all(r.op == "aten.mul.Tensor" for r in flagged.values())
    if missing == "norm":
        assert all(r.module_class == "LlamaRMSNorm" for r in flagged.values())
    assert all(r.kind == "UNHANDLED" for r in flagged.values())
    # the rewrite report agrees, node for node
    assert {r.name for r in report.rewrite.unhandled} == set(flagged)


def test_opacity_catches_an_inlined_rule(llama) -> None:
    graph = _graph(llama)
    copy = graph.captured.module()  # the plan, but the rules never applied: every decision is missing
    rows = prove(copy, graph.plan)
    assert rows and not any(r.ok for r in rows)
    assert "not the rule function" in rows[0].problem
