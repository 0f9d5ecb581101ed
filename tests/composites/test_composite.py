"""Composites: pattern kinds, relevance-path decisions, combination, registry, strict coverage."""

from __future__ import annotations

import operator

import pytest
import torch
import torch.nn.functional as F
from conftest import VOCAB, make_model

import lxt_fx
from lxt_fx.composites import AnyOf, Composite, for_model, register, unregister
from lxt_fx.rules import Identity, SoftmaxDT, Stop, Uniform
from lxt_fx.session import rewritten_graph

aten = torch.ops.aten


def _graph(model, composite, strict: bool = False):
    ids = torch.randint(0, VOCAB, (1, 6))
    emb = model.get_input_embeddings()(ids)
    return rewritten_graph(model, composite, {"inputs_embeds": emb}, {}, strict)


@pytest.fixture(scope="module")
def eager_llama():
    return make_model("llama", "eager")


def _rules_by_op(report) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for row in report.rewritten:
        out.setdefault(row.op, set()).add(row.rule)
    return out


@pytest.mark.parametrize("key", [operator.matmul, torch.matmul, aten.matmul, aten.matmul.default])
def test_torch_functions_and_operators_normalize_to_aten(eager_llama, key) -> None:
    report = _graph(eager_llama, Composite([(key, Uniform())])).report
    assert {r.op for r in report.rewritten} == {"aten.matmul.default"}
    assert len(report.rewritten) == 4  # QKᵀ and A·V in each of 2 layers


@pytest.mark.parametrize("key", [torch.softmax, F.softmax, aten.softmax.int])
def test_softmax_keys(eager_llama, key) -> None:
    assert [r.op for r in _graph(eager_llama, Composite([(key, SoftmaxDT())])).report.rewritten] == \
        ["aten.softmax.int"] * 2


def test_module_class_suffix_glob_and_predicate(eager_llama) -> None:
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    by_class = _graph(eager_llama, Composite([((aten.rsqrt, LlamaRMSNorm), Stop())])).report
    by_suffix = _graph(eager_llama, Composite([((aten.rsqrt, "RMSNorm"), Stop())])).report
    assert len(by_class.rewritten) == len(by_suffix.rewritten) == 5  # 2 per layer + final norm
    by_glob = _graph(eager_llama, Composite([((aten.rsqrt, "model.layers.1.*"), Stop())])).report
    assert {r.module_path for r in by_glob.rewritten} == {"model.layers.1.input_layernorm",
                                                          "model.layers.1.post_attention_layernorm"}
    only_first_mlp = _graph(eager_llama, Composite([(lambda n: n.name == "silu", Identity())])).report
    assert [r.name for r in only_first_mlp.rewritten] == ["silu"]


def test_relevance_path_gate_product_gets_a_rule_rope_and_scaling_do_not(eager_llama) -> None:
    report = _graph(eager_llama, lxt_fx.attnlrp).report
    muls = [r for r in report.rewritten if r.op == "aten.mul.Tensor"]
    assert [r.module_path for r in muls] == ["model.layers.0.mlp", "model.layers.1.mlp"]
    assert all(r.carrying == (0, 1) for r in muls)


def test_missing_rules_are_flagged_unhandled_and_strict_raises(eager_llama) -> None:
    full = list(lxt_fx.attnlrp.entries)
    for drop, expect_op, expect_path in [
        (Identity, "aten.silu.default", "model.layers.0.mlp.act_fn"),
        (Stop, "aten.rsqrt.default", "model.layers.0.input_layernorm"),
        (Uniform, "aten.mul.Tensor", "model.layers.0.mlp"),
    ]:
        partial = Composite([(p, r) for p, r in full if not isinstance(r, drop)], name=f"no-{drop.__name__}")
        report = _graph(eager_llama, partial).report
        assert any(r.op == expect_op and r.module_path == expect_path for r in report.unhandled), report
        with pytest.raises(lxt_fx.UnhandledOpError, match=expect_path.replace(".", r"\.")):
            _graph(eager_llama, partial, strict=True)
    assert _graph(eager_llama, lxt_fx.attnlrp, strict=True).report.unhandled == []


def test_extend_and_or_keep_order() -> None:
    a = Composite([(aten.silu, Identity())], name="a")
    b = Composite([(aten.silu, Stop()), (aten.softmax, SoftmaxDT())], name="b")
    combined = a | b
    assert [type(r) for _, r in combined.entries] == [Identity, Stop, SoftmaxDT]
    assert combined.name == "a|b"
    assert [type(r) for _, r in a.extend([(aten.tanh, Identity())]).entries] == [Identity, Identity]
    with pytest.raises(TypeError, match="not an lxt_fx Rule"):
        Composite([(aten.silu, "identity")])
    with pytest.raises(TypeError, match="not a pattern"):
        Composite([(3.5, Identity())])


def test_registry_per_model_type() -> None:
    model = make_model("qwen2")
    assert for_model(model) is lxt_fx.attnlrp
    custom = lxt_fx.attnlrp.extend([(AnyOf(aten.tanh), Identity())], name="qwen2-custom")
    try:
        register("qwen2", custom)
        assert for_model(model) is custom
        assert lxt_fx.explain(model, torch.tensor([[1, 2, 3]])).report.composite == "qwen2-custom"
    finally:
        unregister("qwen2")
    assert for_model(model) is lxt_fx.attnlrp


def test_rewrite_returns_graph_and_report(eager_llama) -> None:
    ids = torch.randint(0, VOCAB, (2, 5))
    gm, report = lxt_fx.attnlrp.rewrite(eager_llama, {"input_ids": ids})
    assert isinstance(gm, torch.fx.GraphModule)
    assert report.rule_counts() == {"stop": 5, "uniform": 6, "softmax": 2, "identity": 2}
    assert "lxt_fx_rules" in gm.code


class _Mixer(torch.nn.Module):
    """No module named *Norm: an RMS-normalized and an L2-normalized branch, an exp-made decay of a state, and exp as the carrier."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.emb = torch.nn.Embedding(10, 8)
        self.a = torch.nn.Linear(8, 8)
        self.b = torch.nn.Linear(8, 8)
        self.head = torch.nn.Linear(8, 4)

    def get_input_embeddings(self) -> torch.nn.Module:
        return self.emb

    def forward(self, inputs_embeds: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.a(inputs_embeds)
        normed = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)  # a scale of x
        decayed = torch.exp(-F.softplus(self.b(inputs_embeds))) * normed  # a decay of the state
        unit = F.normalize(x, dim=-1)  # x / norm(x).clamp_min(eps).expand_as(x): x only gives a shape there
        return {"logits": self.head(decayed + unit + torch.exp(x))}  # exp(x) itself carries: no scale


def test_scales_and_decays_stop_only_where_they_scale_another_tensor() -> None:
    gm, report = lxt_fx.attnlrp.rewrite(_Mixer().eval(), {"inputs_embeds": torch.randn(1, 3, 8)})
    rules = _rules_by_op(report)
    assert rules["aten.rsqrt.default"] == {"stop"} and rules["aten.linalg_vector_norm.default"] == {"stop"}
    assert [r.module_path for r in report.rewritten if r.op == "aten.exp.default"] == [""]  # the decay only
    assert {r.rule for r in report.rewritten if r.op == "aten.exp.default"} == {"stop"}
    assert [r.op for r in report.unhandled] == ["aten.exp.default"]  # exp(x): a carrier without a rule
    with pytest.raises(lxt_fx.UnhandledOpError, match="aten.exp.default"):
        lxt_fx.attnlrp.rewrite(_Mixer().eval(), {"inputs_embeds": torch.randn(1, 3, 8)}, strict=True)
    # with the decay and the scale constant, the products with them are linear: no uniform rule
    assert "uniform" not in {r.rule for r in report.rewritten}
