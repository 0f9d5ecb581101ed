"""Latent relevance from one backward: ``explain(..., capture=...)`` and ``Attribution.latent``; block sums
agree with the check report; the softmax leak measured with taps equals score − input sum."""

from __future__ import annotations

import pytest
import torch
from conftest import VOCAB, make_model

import lxt_fx
from lxt_fx.check import check
from lxt_fx.ops import SOFTMAX, packet
from lxt_fx.session import rewritten_graph


def test_capture_modules_and_nodes() -> None:
    model = make_model("llama", "sdpa")
    ids = torch.randint(0, VOCAB, (1, 7))
    att = lxt_fx.explain(model, ids, capture=["inputs_embeds", "model.layers.0", "model.layers.*.mlp"])
    plain = lxt_fx.explain(model, ids)
    assert set(att.latents) == {"inputs_embeds", "model.layers.0", "model.layers.0.mlp", "model.layers.1.mlp"}
    assert att.latent("model.layers.0").shape == (1, 7, 32)  # per neuron
    torch.testing.assert_close(att.relevance, plain.relevance, rtol=0, atol=0)  # taps change nothing
    torch.testing.assert_close(att.latent("inputs_embeds").sum(-1), att.relevance, rtol=1e-5, atol=1e-7)
    with pytest.raises(KeyError, match="capture"):
        att.latent("model.layers.1")
    report = check(model, ids, zero_bias=False)  # the residual stream entering block 1 = block 0's output
    entering = dict(report.conservation.boundaries())["entering block 1"]
    assert abs(float(att.latent("model.layers.0").sum()) - entering) <= 1e-5 * abs(report.score)


def test_softmax_leak_measured_with_taps_is_the_whole_gap() -> None:
    model = make_model("llama", "eager")  # explicit softmax nodes; no biases
    ids = torch.randint(0, VOCAB, (1, 8))
    emb = model.get_input_embeddings()(ids).detach()
    graph = rewritten_graph(model, lxt_fx.attnlrp, {"inputs_embeds": emb, "attention_mask": torch.ones_like(ids)},
                            {})
    softmaxes = [n for n in graph.module.graph.nodes if n.op == "call_function"
                 and packet(n.meta.get("lxt_original_target", n.target)) in SOFTMAX]
    assert len(softmaxes) == 2
    pairs = [(n.args[1].name, n.name) for n in softmaxes]  # (scores + mask, softmax) per layer
    att = lxt_fx.explain(model, ids, capture=[name for pair in pairs for name in pair])
    leak = sum(float(att.latent(out).sum() - att.latent(inp).sum()) for inp, out in pairs)
    score, input_sum = float(att.target_scores[0]), float(att.relevance.sum())
    assert abs(score - input_sum) > 1e-3 * abs(score)
    assert abs((score - input_sum) - leak) <= 1e-4 * abs(score)  # total leak = score − input sum
    report = check(model, ids, zero_bias=False)
    assert abs(report.conservation.by_cause()["softmax"] - leak) <= 1e-5 * abs(score)
