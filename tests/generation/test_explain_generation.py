"""``explain_generation``: one forward and batched seeds give what N separate ``explain`` calls on the
prefixes give, row by row."""

from __future__ import annotations

import pytest
import torch
from conftest import make_model

import lxt_fx
from lxt_fx.generation import GenerationAttribution, explain_generation

N = 8


def _prefix_rows(model, gen: GenerationAttribution) -> torch.Tensor:
    """The reference: one ``explain`` per generated token, on the prefix that predicted it."""
    p, width = gen.prompt_length, len(gen.ids)
    out = torch.zeros(len(gen), width)
    for k, token in enumerate(gen.generated_ids):
        att = lxt_fx.explain(model, torch.tensor([gen.ids[: p + k]]), target=token)
        out[k, : p + k] = att.relevance[0]
    return out


@pytest.mark.parametrize("family,seeds", [("llama", 16), ("qwen3", 3), ("llama", 1), ("llama", None)])
def test_equals_separate_explain_calls_on_the_prefixes(family: str, seeds: int | None) -> None:
    model = make_model(family)
    torch.manual_seed(1)
    prompt = torch.randint(0, 96, (1, 7))
    gen = explain_generation(model, prompt, tokenizer=None, max_new_tokens=N, seeds_per_pass=seeds)
    assert gen.matrix.shape == (N, 7 + N) and len(gen.generated_ids) == N
    # greedy with the untouched model: the generated ids are the model's own argmax continuation
    with torch.no_grad():
        ref_ids = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=N,
                                 do_sample=False, pad_token_id=0)[0].tolist()
    assert gen.ids == ref_ids
    ref = _prefix_rows(model, gen)
    for k in range(N):
        scale = ref[k].abs().max()
        assert (gen.matrix[k] - ref[k]).abs().max() <= 1e-5 * scale, k
        assert (gen.matrix[k, 7 + k:] == 0).all()  # tokens the prediction could not see
    # the explained scores are the logits of the generated tokens at the positions that predicted them
    with torch.no_grad():
        logits = model(torch.tensor([gen.ids[:-1]])).logits[0]
    expected = logits[torch.arange(6, 6 + N), torch.tensor(gen.generated_ids)]
    torch.testing.assert_close(gen.scores, expected, rtol=1e-5, atol=1e-5)


def test_rows_as_attribution_and_span_sum() -> None:
    model = make_model("llama")
    gen = explain_generation(model, [3, 5, 7, 9], tokenizer=None, max_new_tokens=4)
    att = gen.to_attribution([1, 3])
    assert att.attention_mask.sum(-1).tolist() == [5, 7]
    torch.testing.assert_close(att.relevance, gen.matrix[[1, 3]])
    assert att.target_ids.tolist() == [gen.generated_ids[1], gen.generated_ids[3]]
    span = gen.span()
    torch.testing.assert_close(span.relevance[0], gen.matrix.sum(0))
    # the span: the relevance of Σ_k s_k, which explain on the full sequence gives with a function target
    from lxt_fx.generate import SpanTarget

    positions = torch.arange(3, 7)
    ref = lxt_fx.explain(model, torch.tensor([gen.ids[:-1]]),
                         target=SpanTarget(positions, torch.tensor(gen.generated_ids), per_token=False))
    torch.testing.assert_close(span.relevance[0, :-1], ref.relevance[0], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kwargs,message", [
    ({"max_new_tokens": 0}, "max_new_tokens=0"),
    ({"max_new_tokens": 2, "seeds_per_pass": 0}, "seeds_per_pass=0"),
    ({"max_new_tokens": 2, "chat": True}, "chat=True needs the prompt as text"),
])
def test_bad_arguments_are_named(kwargs, message) -> None:
    model = make_model("llama")
    with pytest.raises(lxt_fx.InputError, match=message):
        explain_generation(model, [1, 2, 3], tokenizer=None, **kwargs)


def test_bad_prompt_ids_are_named() -> None:
    model = make_model("llama")
    with pytest.raises(lxt_fx.InputError, match="outside the vocabulary"):
        explain_generation(model, [1, 500], tokenizer=None, max_new_tokens=2)
    with pytest.raises(lxt_fx.InputError, match="one row"):
        explain_generation(model, torch.zeros(2, 3, 4, dtype=torch.long), tokenizer=None, max_new_tokens=2)
    with pytest.raises(lxt_fx.InputError, match="empty"):
        explain_generation(model, [], tokenizer=None, max_new_tokens=2)


def test_an_id_the_tokenizer_does_not_know_reads_as_its_id_not_none() -> None:
    from helpers import word_tokenizer

    from lxt_fx.generate import generate_and_explain

    tok = word_tokenizer(["the", "cat", "sat"])
    model = make_model("llama")
    unknown = len(tok) + 20  # an id of the model's vocabulary (96) that the tokenizer does not know
    assert tok.convert_ids_to_tokens([unknown]) == [None] and tok.decode([unknown]) == ""
    bias = torch.zeros(model.lm_head.out_features)
    bias[unknown] = 1e4  # the model always predicts it
    model.lm_head.bias = torch.nn.Parameter(bias)
    name = f"⟨id {unknown}⟩"
    gen = explain_generation(model, "the cat", tokenizer=tok, max_new_tokens=2)
    assert gen.generated_ids == [unknown, unknown]
    assert gen.labels() == [f"generated token {k} of 2: {name!r}" for k in (1, 2)] and gen.text == name * 2
    result = generate_and_explain(model, tok, "the cat", 2, per_token=True)
    assert result.text == name * 2 and result.per_token.target_tokens == [name, name]
    assert all(name in label and "None" not in label for label in result.labels + result.per_token_labels)


def test_a_list_of_prompts_gives_one_result_per_prompt() -> None:
    from helpers import word_tokenizer

    model = make_model("llama")
    tok = word_tokenizer(["the", "cat", "sat", "on", "a", "mat"])
    prompts = ["the cat sat", "a mat"]
    several = explain_generation(model, prompts, tokenizer=tok, max_new_tokens=3, stop_at_eos=False)
    assert isinstance(several, list) and len(several) == 2
    for prompt, gen in zip(prompts, several, strict=True):
        alone = explain_generation(model, prompt, tokenizer=tok, max_new_tokens=3, stop_at_eos=False)
        assert gen.ids == alone.ids
        torch.testing.assert_close(gen.matrix, alone.matrix, rtol=0, atol=0)
    rows = explain_generation(model, torch.tensor([[3, 4, 5], [6, 7, 8]]), tokenizer=None, max_new_tokens=2)
    assert [g.ids[:3] for g in rows] == [[3, 4, 5], [6, 7, 8]]
    torch.testing.assert_close(rows[1].matrix, explain_generation(model, [6, 7, 8], tokenizer=None,
                                                                  max_new_tokens=2).matrix, rtol=0, atol=0)


def test_a_model_that_does_not_generate_and_a_target_are_named() -> None:
    import transformers as tf

    from lxt_fx.generation import GenerationError

    bert = tf.BertForMaskedLM(tf.BertConfig(vocab_size=96, hidden_size=32, num_hidden_layers=1,
                                            num_attention_heads=4, intermediate_size=48)).eval()
    with pytest.raises(GenerationError, match="does not generate text.*lxt_fx.explain") as info:
        explain_generation(bert, [3, 4, 5], tokenizer=None, max_new_tokens=2)
    assert isinstance(info.value, lxt_fx.LXTError)
    with pytest.raises(GenerationError, match="explain_continuation"):
        explain_generation(make_model("llama"), [3, 4, 5], tokenizer=None, max_new_tokens=2, target=7)
