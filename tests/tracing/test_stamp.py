"""A stamped capture (each kind of repeated block traced once) equals the full export, family by family.

The reference is ``torch.export`` of every block (``capture(..., stamp=False)``) on a copy of the same model:
the stamped graph must be that graph node for node (op, target, arguments, name, module stack, source line,
the generated code), and so give bitwise the same forward, the same rewrite report and bitwise the same
relevance. Blocks that differ (Gemma-3's sliding and global layers, dense and sparse MoE layers, a hybrid's
convolution and attention layers) must be told apart; a model whose graph depends on the block index falls
back to the full export with a named reason.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import pytest
import torch
import transformers as tf
from test_families_more import V, _text  # tiny text configs (vocabulary of 96)

from lxt_fx.composites import for_model
from lxt_fx.session import rewritten_graph
from lxt_fx.tracing import capture, capture_count
from lxt_fx.tracing.blocks import find_stacks
from lxt_fx.tracing.graph_codec import same_graph

# name → model factory: several blocks of one kind, or of several kinds
FAMILIES: dict[str, Callable[[], torch.nn.Module]] = {
    "llama": lambda: tf.LlamaForCausalLM(tf.LlamaConfig(**_text(num_hidden_layers=3, num_key_value_heads=2,
                                                                head_dim=8))),
    "gemma3": lambda: _gemma3(["sliding_attention", "full_attention"] * 2),
    "qwen3-moe": lambda: _qwen3_moe(4),  # dense and sparse blocks alternate
    "gpt2": lambda: tf.GPT2LMHeadModel(tf.GPT2Config(vocab_size=V, n_embd=32, n_layer=3, n_head=4, n_positions=64)),
    "bert": lambda: tf.BertForSequenceClassification(tf.BertConfig(**_text(num_hidden_layers=3, num_labels=3))),
    "lfm2": lambda: _lfm2(["conv", "full_attention"] * 2),  # a hybrid: convolution and attention blocks
}


def _gemma3(types: list[str]) -> torch.nn.Module:
    return tf.Gemma3ForCausalLM(tf.Gemma3TextConfig(**_text(
        num_hidden_layers=len(types), num_key_value_heads=2, head_dim=8, sliding_window=4, layer_types=types)))


def _qwen3_moe(layers: int) -> torch.nn.Module:
    return tf.Qwen3MoeForCausalLM(tf.Qwen3MoeConfig(**_text(
        num_hidden_layers=layers, num_key_value_heads=2, head_dim=8, num_experts=4, num_experts_per_tok=2,
        moe_intermediate_size=24, norm_topk_prob=True, decoder_sparse_step=2)))


def _lfm2(types: list[str]) -> torch.nn.Module:
    return tf.Lfm2ForCausalLM(tf.Lfm2Config(**_text(num_hidden_layers=len(types), num_key_value_heads=2,
                                                    layer_types=types)))


def _pair(name: str) -> tuple[torch.nn.Module, torch.nn.Module, dict[str, torch.Tensor]]:
    torch.manual_seed(0)
    model = FAMILIES[name]().eval()
    ids = torch.randint(3, V, (2, 9))
    emb = model.get_input_embeddings()(ids).detach()
    return model, copy.deepcopy(model), {"inputs_embeds": emb, "attention_mask": torch.ones_like(ids)}


def _relevance(model: torch.nn.Module, tensors: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict]:
    composite = for_model(model)
    result = rewritten_graph(model, composite, tensors, {})
    emb = tensors["inputs_embeds"].clone().requires_grad_(True)
    out = result({**tensors, "inputs_embeds": emb})
    logits = out["logits"]
    logits[..., -1, :].max(-1).values.sum().backward() if logits.dim() == 3 else logits.max(-1).values.sum().backward()
    report = result.report.to_dict()
    for key in ("capture_seconds", "rewrite_seconds", "capture_note"):
        report.pop(key, None)
    return (emb * emb.grad).sum(-1), report


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_stamped_capture_equals_the_full_export(name: str) -> None:
    model, reference, tensors = _pair(name)
    full = capture(reference, tensors, stamp=False)
    stamped = capture(model, tensors)
    assert full.route == "full" and "stamp=False" in full.note
    assert stamped.route == "stamped", stamped.note
    assert capture_count(model) == 1
    a, b = full.module(), stamped.module()
    assert same_graph(a, b) is None
    assert a.code == b.code
    with torch.no_grad():
        fa, fb = a(dict(tensors)), b(dict(tensors))
    assert fa.keys() == fb.keys() and all(torch.equal(fa[k], fb[k]) for k in fa)
    with torch.no_grad():  # and both are the model's own forward
        own = model(**tensors).logits
    torch.testing.assert_close(fb["logits"], own, rtol=1e-5, atol=1e-6)
    ra, rep_a = _relevance(reference, tensors)
    rb, rep_b = _relevance(model, tensors)
    assert torch.equal(ra, rb)
    assert rep_a == rep_b and rep_a["rewritten"]


def test_block_kinds_follow_structure_and_config() -> None:
    gemma = _gemma3(["sliding_attention", "sliding_attention", "full_attention"] * 2)
    (stack,) = find_stacks(gemma)
    assert stack.kinds == (0, 0, 1, 0, 0, 1) and stack.prefix == 3 and stack.templates == {0: 1, 1: 2}
    moe = _qwen3_moe(5)  # decoder_sparse_step=2: blocks 1, 3 sparse, 0, 2, 4 dense
    (stack,) = find_stacks(moe)
    assert stack.kinds[0] == stack.kinds[2] == stack.kinds[4] != stack.kinds[1] == stack.kinds[3]
    lfm = _lfm2(["conv", "full_attention", "conv", "conv", "full_attention", "conv"])
    (stack,) = find_stacks(lfm)
    assert [stack.kinds[i] == stack.kinds[1] for i in range(6)] == [False, True, False, False, True, False]


def test_a_graph_that_depends_on_the_block_index_is_exported_in_full() -> None:
    """GPT-2 with ``scale_attn_by_inverse_layer_idx`` scales block i's scores by 1/(i+1): the blocks are one
    kind by structure, but their traced graphs differ, so the capture falls back and says why."""
    torch.manual_seed(0)
    config = tf.GPT2Config(vocab_size=V, n_embd=32, n_layer=4, n_head=4, n_positions=64,
                           scale_attn_by_inverse_layer_idx=True)
    model = tf.GPT2LMHeadModel(config).eval()
    ids = torch.randint(3, V, (1, 7))
    tensors = {"inputs_embeds": model.get_input_embeddings()(ids).detach(), "attention_mask": torch.ones_like(ids)}
    captured = capture(model, tensors)
    assert captured.route == "full"
    assert "full export:" in captured.note and "block" in captured.note
    with torch.no_grad():
        torch.testing.assert_close(captured.module()(dict(tensors))["logits"], model(**tensors).logits)
    _, report = _relevance(model, tensors)
    assert report["rewritten"]


def test_the_model_is_left_as_it_came_in() -> None:
    model, _, tensors = _pair("llama")
    before = list(model.model.layers)
    capture(model, tensors)
    assert list(model.model.layers) == before and len(model.model.layers) == 3
