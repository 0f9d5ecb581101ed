"""``explain`` (and ``check``) edge cases of the call itself: inference mode, input length limits."""

from __future__ import annotations

import pytest
import torch
from conftest import make_model

import lxt_fx


@pytest.fixture(scope="module")
def model():
    return make_model("llama")


def test_explain_inside_inference_mode_equals_outside(model) -> None:
    ids = torch.tensor([[3, 4, 5, 6, 7], [8, 9, 10, 11, 12]])
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    outside = lxt_fx.explain(model, ids, attention_mask=mask)
    with torch.inference_mode():
        inside = lxt_fx.explain(model, ids.clone(), attention_mask=mask.clone())  # inference tensors as inputs
        assert torch.is_inference_mode_enabled()  # the caller's mode is as it was
    assert not torch.is_inference_mode_enabled()
    torch.testing.assert_close(inside.relevance, outside.relevance, rtol=0, atol=0)
    assert torch.equal(inside.target_ids, outside.target_ids)
    with torch.inference_mode():
        report = lxt_fx.check(model, ids, zero_bias=False)
    assert report.score == lxt_fx.check(model, ids, zero_bias=False).score


@pytest.fixture(scope="module")
def gpt2():
    import transformers as tf

    cfg = tf.GPT2Config(n_layer=1, n_embd=32, n_head=4, vocab_size=96, n_positions=8, bos_token_id=1,
                        eos_token_id=2)
    torch.manual_seed(0)
    return tf.GPT2LMHeadModel(cfg).eval()


def test_an_input_longer_than_the_learned_positions_is_named(gpt2, model) -> None:
    from lxt_fx.explain import InputTooLongError
    from lxt_fx.generation import explain_continuation

    fits = torch.arange(3, 11)[None]  # 8 tokens: every learned position
    att = lxt_fx.explain(gpt2, fits)
    with torch.no_grad():
        logits = gpt2(input_ids=fits).logits[0, -1]
    torch.testing.assert_close(att.target_scores[0], logits.max(), rtol=1e-5, atol=1e-5)
    too_long = torch.arange(3, 12)[None]  # 9 tokens
    for call in (lambda: lxt_fx.explain(gpt2, too_long), lambda: lxt_fx.check(gpt2, too_long),
                 lambda: explain_continuation(gpt2, list(range(3, 10)), [10, 11, 12]),
                 lambda: lxt_fx.explain_generation(gpt2, list(range(3, 10)), tokenizer=None, max_new_tokens=3)):
        with pytest.raises(InputTooLongError, match=r"9 tokens.*8 \(config\.n_positions = 8\)") as info:
            call()
        assert isinstance(info.value, ValueError)
    from lxt_fx.explain import position_limit

    assert position_limit(gpt2) == ("n_positions", 8)
    assert position_limit(model) is None  # rotary positions: no table, no limit read from the config
