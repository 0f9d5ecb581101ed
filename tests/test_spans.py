"""Span aggregation (lxt_fx.spans): sentences, passages, turns and character spans over a tiny random LLaMA with
a word-level fast tokenizer (offsets from the tokenizer itself)."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import VOCAB, make_model
from helpers import word_tokenizer
from rich.console import Console

import lxt_fx
from lxt_fx.spans import Span, SpanError, as_spans, passage_spans, sentence_spans, turn_spans

WORDS = ("the cat sat on a mat . dogs run fast ! why is sky blue ? Alice lives in Paris Bob lives in Rome "
         "question : where does answer user assistant").split()
CONTEXT = "Alice lives in Paris . the cat sat on a mat .\n\nBob lives in Rome . dogs run fast !\n\nwhy is sky blue ?"
PROMPT = CONTEXT + "\nquestion : where does Bob live ? answer :"


@pytest.fixture(scope="module")
def tok():
    return word_tokenizer(WORDS[: VOCAB - 2])


@pytest.fixture(scope="module")
def model():
    return make_model("llama")


def test_sentence_and_passage_splitting() -> None:
    text = "One. Two!  Three?\nFour\n\nFive \"six.\" Seven"
    got = [text[s.start:s.end] for s in sentence_spans(text)]
    assert got == ["One.", "Two!", "Three?", "Four", "Five \"six.\"", "Seven"]
    assert [text[s.start:s.end] for s in passage_spans(text)] == ["One. Two!  Three?\nFour", "Five \"six.\" Seven"]
    inner = sentence_spans(text, within="Five \"six.\" Seven")
    assert [s.label for s in inner] == ["sentence 1", "sentence 2"] and text[inner[1].start:inner[1].end] == "Seven"


def test_turns_are_found_in_order() -> None:
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hi"}]
    text = "<u>hi</u><a>hi</a>"
    spans = turn_spans(text, messages)
    assert [(s.label, s.start, s.end) for s in spans] == [("user 1", 3, 5), ("assistant 2", 12, 14)]
    with pytest.raises(SpanError, match="message 2"):
        turn_spans("<u>hi</u>", messages)


def _owner_sums(att, row: int, text: str, tok, spans: list[Span]) -> tuple[list[float], float]:
    """Independent of lxt_fx.spans: the tokenizer's offsets, each token to the span holding its start."""
    enc = tok(text, return_offsets_mapping=True)
    keep = att.attention_mask[row].bool()
    values = att.relevance[row][keep].double().tolist()
    assert enc["input_ids"] == att.input_ids[row][keep].tolist()
    sums = [0.0] * len(spans)
    outside = []
    for (a, _), v in zip(enc["offset_mapping"], values, strict=True):
        k = next((k for k, s in enumerate(spans) if s.start <= a < s.end), None)
        if k is None:
            outside.append(v)
        else:
            sums[k] += v
    return sums, math.fsum(outside)


def test_spans_sum_exactly_to_their_tokens(model, tok) -> None:
    att = lxt_fx.explain(model, PROMPT, tokenizer=tok, target=5)
    total = math.fsum(att.relevance[0].double().tolist())
    for kind in ("sentences", "passages"):
        got = att.spans(kind, tokenizer=tok, within=CONTEXT)
        want, outside = _owner_sums(att, 0, PROMPT, tok, got.spans)
        assert got.relevance == pytest.approx(want, abs=1e-12)
        assert got.outside == pytest.approx(outside, abs=1e-12)
        assert got.total == pytest.approx(total, abs=1e-12)  # the spans and the rest partition the row
    sentences = att.spans("sentences", tokenizer=tok, within=CONTEXT)
    assert [s.label for s in sentences.spans] == [f"sentence {k}" for k in range(1, 6)]
    assert sentences.span_text(2) == "Bob lives in Rome ."
    ranked = sentences.ranked()
    assert [r for _, r, _ in ranked] == sorted(sentences.relevance, reverse=True)


def test_user_character_spans(model, tok) -> None:
    att = lxt_fx.explain(model, PROMPT, tokenizer=tok, target=5)
    at = PROMPT.index("Bob lives")
    mine = att.spans({"bob": (at, at + len("Bob lives in Rome")), "q": (PROMPT.index("question"), len(PROMPT))},
                     tokenizer=tok)
    enc = tok(PROMPT, return_offsets_mapping=True)
    values = att.relevance[0].double().tolist()
    bob = math.fsum(v for (a, _), v in zip(enc["offset_mapping"], values, strict=True)
                    if at <= a < at + len("Bob lives in Rome"))
    assert mine.relevance[0] == pytest.approx(bob, abs=1e-12)
    assert mine.span_text(0) == "Bob lives in Rome"
    with pytest.raises(SpanError, match="not a non-empty range"):
        as_spans([(5, 3)], PROMPT)


def test_padded_batches_map_offsets_per_row(model, tok) -> None:
    texts = [PROMPT, "Bob lives in Rome . dogs run fast !"]
    right = lxt_fx.explain(model, texts, tokenizer=tok, target=5)  # right padded
    assert int(right.attention_mask[1].sum()) < right.attention_mask.shape[1]
    ids = [tok(t)["input_ids"] for t in texts]
    width = max(map(len, ids))
    left_ids = torch.tensor([[0] * (width - len(r)) + r for r in ids])
    left_mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in ids])
    left = lxt_fx.explain(model, left_ids, attention_mask=left_mask, tokenizer=tok, target=5)
    for row, text in enumerate(texts):
        alone = lxt_fx.explain(model, text, tokenizer=tok, target=5).spans("sentences", tokenizer=tok)
        for att in (right, left):
            got = att.spans("sentences", tokenizer=tok, text=text, row=row)
            assert [s for s in got.spans] == alone.spans
            assert got.relevance == pytest.approx(alone.relevance, rel=1e-4, abs=1e-6)
            want, _ = _owner_sums(att, row, text, tok, got.spans)
            assert got.relevance == pytest.approx(want, abs=1e-12)


def test_named_errors(model, tok) -> None:
    att = lxt_fx.explain(model, PROMPT, tokenizer=tok, target=5)
    with pytest.raises(SpanError, match="does not encode"):
        att.spans("sentences", tokenizer=tok, text="Alice lives in Rome .")
    with pytest.raises(SpanError, match="messages"):
        att.spans("turns", tokenizer=tok)
    with pytest.raises(SpanError, match="does not occur"):
        att.spans("sentences", tokenizer=tok, within="not in it")
    ids = lxt_fx.explain(model, torch.tensor([tok(PROMPT)["input_ids"]]), tokenizer=tok, target=5)
    with pytest.raises(SpanError, match="text="):
        ids.spans("sentences", tokenizer=tok)


def test_renderers(model, tok, tmp_path) -> None:
    spans = lxt_fx.explain(model, PROMPT, tokenizer=tok, target=5).spans("passages", tokenizer=tok, within=CONTEXT)
    console = Console(record=True, width=120)
    spans.show(console)
    text = console.export_text()
    top = spans.ranked()[0][0]
    assert text.index(top) < text.index(spans.ranked()[-1][0])  # ranked, most relevant first
    page = spans.to_html(tmp_path / "spans.html")
    assert (tmp_path / "spans.html").read_text(encoding="utf-8") == page
    assert page.index(f"#1 &nbsp; <b>{top}</b>") < page.index("#2 &nbsp;")
    for k in range(len(spans.spans)):
        assert f"relevance {spans.relevance[k]:+.4f}" in page
    assert spans.to_dict()["spans"][0]["text"] == spans.span_text(0)
