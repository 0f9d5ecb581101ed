"""PA-LRP on tiny random LLaMA (RoPE), GPT-2 (learned positions), BERT (learned positions and token types)
and ViT (learned patch positions): the composite resolves by name, finds the positional tables from the
graph, and the zero-bias books close with the positions as inputs (:func:`lxt_fx.check.check`).

Checked from outside the fast path: the GxI relevance of tokens and positions equals the explicit-form
float64 reference (:func:`lxt_fx.reference.explicit_relevance`); in zero-bias mode nothing is left for the
``embedding`` cause once the position tables are inputs (what AttnLRP books there, PA-LRP reads as position
relevance), and an RoPE model's position relevance is exactly what its token map lost against AttnLRP
summed over the rows' positions and tokens, up to the softmax rule's term."""

from __future__ import annotations

import functools

import pytest
import torch
import transformers as tf
from torch.testing import assert_close

import lxt_fx
from lxt_fx.attribution import NoPositionsError
from lxt_fx.check import check
from lxt_fx.composites import palrp, resolve_composite
from lxt_fx.reference import explicit_relevance
from lxt_fx.session import rewritten_graph

V = 64
IDS = torch.tensor([[1, 7, 9, 3, 12, 5], [2, 4, 11, 8, 6, 10]])
MASK = torch.ones_like(IDS)


@functools.cache
def model(kind: str) -> torch.nn.Module:
    torch.manual_seed(0)
    if kind == "llama":
        cfg = tf.LlamaConfig(vocab_size=V, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2)
        return tf.LlamaForCausalLM(cfg).eval()
    if kind == "gpt2":
        return tf.GPT2LMHeadModel(tf.GPT2Config(vocab_size=V, n_embd=32, n_layer=2, n_head=4, n_positions=16)).eval()
    if kind == "bert":
        cfg = tf.BertConfig(vocab_size=V, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                            intermediate_size=48, max_position_embeddings=16, num_labels=3)
        return tf.BertForSequenceClassification(cfg).eval()
    cfg = tf.ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
                       image_size=16, patch_size=4, num_labels=3)
    return tf.ViTForImageClassification(cfg).eval()


@pytest.fixture(scope="module", autouse=True)
def _free_models():
    yield
    model.cache_clear()


def test_resolves_by_name() -> None:
    assert resolve_composite("palrp") is palrp
    assert palrp.name == "palrp"


@pytest.mark.parametrize(("kind", "keys"), [
    ("llama", {"positions:model.rotary_emb"}),
    ("gpt2", {"positions:transformer.wpe"}),
    ("bert", {"positions:bert.embeddings.position_embeddings", "token_types:bert.embeddings.token_type_embeddings"}),
])
def test_text_positions_found_and_reported(kind: str, keys: set[str]) -> None:
    m = model(kind)
    given = {"token_type_ids": torch.zeros_like(IDS)} if kind == "bert" else {}  # as a tokenizer gives them
    att = lxt_fx.explain(m, IDS, attention_mask=MASK, composite="palrp", **given)
    assert set(att.position_maps) == keys
    assert att.position_relevance.shape == IDS.shape
    assert_close(att.pair_relevance(), att.relevance + att.position_relevance)
    assert att.to_dict()["rows"][0]["position_relevance"] == att.position_relevance[0].tolist()
    rules = att.report.rule_counts()
    assert rules.get("pa_rotary" if kind == "llama" else "pa_additive", 0) >= 1
    plain = lxt_fx.explain(m, IDS, attention_mask=MASK, **given)
    assert plain.position_relevance is None
    with pytest.raises(NoPositionsError):
        plain.pair_relevance()
    if kind != "llama":  # an added table changes nothing upstream: the token map is AttnLRP's
        assert_close(att.relevance, plain.relevance, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", ["llama", "gpt2", "bert"])
def test_equals_float64_reference(kind: str) -> None:
    m = model(kind)
    att = lxt_fx.explain(m, IDS[:1], attention_mask=MASK[:1], composite=palrp)
    emb = m.get_input_embeddings()(IDS[:1]).detach()
    tensors = {"inputs_embeds": emb, "attention_mask": MASK[:1]}
    graph = rewritten_graph(m, palrp, tensors, {})
    with torch.no_grad():
        logits = m(inputs_embeds=emb, attention_mask=MASK[:1]).logits
    seed = torch.zeros_like(logits)
    index = (0, int(att.positions[0]), int(att.target_ids[0])) if logits.dim() == 3 else (0, int(att.target_ids[0]))
    seed[index] = logits[index]
    ref = explicit_relevance(graph, tensors, {"logits": seed})
    scale = float(att.relevance.abs().max())
    assert_close(att.relevance.double(), ref["inputs_embeds"].sum(-1), rtol=0, atol=1e-4 * scale)
    for key, value in att.position_maps.items():
        assert_close(value.double(), ref[key], rtol=0, atol=1e-4 * scale)


@pytest.mark.parametrize("kind", ["llama", "gpt2", "bert", "vit"])
def test_zero_bias_books_close_with_positions_as_inputs(kind: str) -> None:
    m = model(kind)
    inputs = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(0)) if kind == "vit" else IDS[:1]
    if kind == "bert":  # token types as a tokenizer gives them
        inputs = {"input_ids": IDS[:1], "attention_mask": MASK[:1], "token_type_ids": torch.zeros_like(IDS[:1])}
    before = check(m, inputs, composite="attnlrp").zero_bias
    after = check(m, inputs, composite="palrp").zero_bias
    assert after.verdict().status == "closes", after.verdict().message
    assert before.verdict().status == "closes", before.verdict().message
    absorbed_before, absorbed_after = before.by_cause()["embedding"], after.by_cause()["embedding"]
    if kind == "llama":
        assert absorbed_before == 0.0
    else:  # what AttnLRP left to the added tables is an input now
        assert abs(absorbed_before) > 1e-3 * abs(before.score)
    assert abs(absorbed_after) <= 1e-6 * abs(after.score) + 1e-7


def test_vit_position_map_covers_cls_and_patches() -> None:
    att = lxt_fx.explain(model("vit"), images=torch.randn(2, 3, 16, 16), composite="palrp")
    (key, value), = att.position_maps.items()
    assert key == "positions:vit.embeddings.position_embeddings"
    assert value.shape == (2, 1 + 16)
