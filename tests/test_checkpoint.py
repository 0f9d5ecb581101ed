"""Checkpointing inside the rewritten graph: same relevance, fewer saved bytes, a safe fallback."""

from __future__ import annotations

import pytest
import torch
from conftest import VOCAB, make_model

import lxt_fx
from lxt_fx.checkpoint import CheckpointWarning, saved_activation_bytes
from lxt_fx.session import rewritten_graph


def checkpointed_segments(model: torch.nn.Module, ids: torch.Tensor, mode: str, **kw) -> int:
    """How many segments of the model's cached rewritten graph run under checkpointing in ``mode``."""
    emb = model.get_input_embeddings()(ids)
    graph = rewritten_graph(model, lxt_fx.attnlrp, {"inputs_embeds": emb, **kw}, {})
    return len(graph.segmented(mode).checkpointed)


@pytest.mark.parametrize("family", ["llama", "qwen3", "gemma3"])
def test_every_mode_gives_the_unsegmented_relevance(family: str) -> None:
    model = make_model(family, layers=5)  # sqrt: segments of 3 blocks → 2 segments, the first checkpointed
    ids = torch.randint(0, VOCAB, (2, 10))
    mask = torch.ones_like(ids)
    mask[0, 7:] = 0
    base = lxt_fx.explain(model, ids, attention_mask=mask)
    for mode, expected in (("layer", 4), ("sqrt", 1)):
        got = lxt_fx.explain(model, ids, attention_mask=mask, checkpoint=mode)
        torch.testing.assert_close(got.relevance, base.relevance, atol=1e-6, rtol=0)
        assert checkpointed_segments(model, ids, mode, attention_mask=mask) == expected
    emb = model.get_input_embeddings()(ids).detach().requires_grad_(True)
    with lxt_fx.attnlrp.context(model, checkpoint="sqrt"):
        model(inputs_embeds=emb, attention_mask=mask).logits[0, int(base.positions[0]),
                                                             int(base.target_ids[0])].backward()
    torch.testing.assert_close((emb * emb.grad).sum(-1)[0], base.relevance[0], atol=1e-6, rtol=0)


def test_sqrt_mode_saves_fewer_bytes_than_none() -> None:
    import transformers as tf

    cfg = tf.LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=9,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=8)
    torch.manual_seed(0)
    model = tf.LlamaForCausalLM(cfg).eval()
    emb = model.get_input_embeddings()(torch.randint(0, VOCAB, (1, 32))).detach().requires_grad_(True)
    graph = rewritten_graph(model, lxt_fx.attnlrp, {"inputs_embeds": emb}, {})
    params = list(model.parameters())

    def run(mode):
        def go():
            out = graph({"inputs_embeds": emb}, mode)
            seg = graph.segmented(mode)
            return out, (seg.boundary if seg is not None else [])
        return saved_activation_bytes(go, exclude=params)

    none, layer, sqrt = run(None), run("layer"), run("sqrt")
    assert graph.segmented("sqrt").segments == 3 and graph.segmented("layer").segments == 9
    assert len(graph.segmented("sqrt").checkpointed) == 2 and len(graph.segmented("layer").checkpointed) == 8
    # sqrt keeps 2 boundaries + the last 3 blocks' activations; layer keeps 8 boundaries + 1 block
    assert layer < sqrt < none / 2


class Flat(torch.nn.Module):
    """No repeated blocks: checkpointing has nothing to split."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = torch.nn.Embedding(10, 8)
        self.head = torch.nn.Linear(8, 10)

    def get_input_embeddings(self) -> torch.nn.Module:
        return self.emb

    def forward(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor | None = None) -> dict:
        return {"logits": self.head(torch.tanh(inputs_embeds))}


def test_no_block_structure_falls_back_with_a_warning() -> None:
    model = Flat().eval()
    ids = torch.tensor([[1, 2, 3, 4]])
    base = lxt_fx.explain(model, ids)
    with pytest.warns(CheckpointWarning, match="no repeated blocks"):
        got = lxt_fx.explain(model, ids, checkpoint="sqrt")
    assert torch.equal(got.relevance, base.relevance)
    with pytest.raises(ValueError, match="checkpoint='every'"):
        lxt_fx.explain(model, ids, checkpoint="every")


def test_encoder_decoder_and_moe_checkpointing_is_exact() -> None:
    """T5's encoder and decoder stacks (``encoder.block.i`` / ``decoder.block.i``) and Mixtral's MoE blocks."""
    import transformers as tf

    torch.manual_seed(0)
    t5 = tf.T5ForConditionalGeneration(tf.T5Config(
        vocab_size=VOCAB, d_model=32, d_kv=8, d_ff=48, num_layers=4, num_decoder_layers=3, num_heads=4,
        decoder_start_token_id=0)).eval()
    ids, dec = torch.randint(2, VOCAB, (2, 6)), torch.randint(2, VOCAB, (2, 3))
    base = lxt_fx.explain(t5, ids, decoder_inputs=dec)
    for mode in ("layer", "sqrt"):
        got = lxt_fx.explain(t5, ids, decoder_inputs=dec, checkpoint=mode)
        torch.testing.assert_close(got.relevance, base.relevance, atol=1e-6, rtol=0)
        torch.testing.assert_close(got.decoder_relevance, base.decoder_relevance, atol=1e-6, rtol=0)

    mixtral = tf.MixtralForCausalLM(tf.MixtralConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2, head_dim=8)).eval()
    ids = torch.randint(2, VOCAB, (2, 6))
    base = lxt_fx.explain(mixtral, ids)
    for mode in ("layer", "sqrt"):
        torch.testing.assert_close(lxt_fx.explain(mixtral, ids, checkpoint=mode).relevance, base.relevance,
                                   atol=1e-6, rtol=0)
