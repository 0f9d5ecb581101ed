"""Relevance of spans of the input text: sentences, passages, chat turns, or the user's own character spans.

Token relevance is summed per span through the tokenizer's character offsets (``return_offsets_mapping``).
A token belongs to the span that holds its first non-space character (a byte-level BPE token ``" Paris"``
belongs where ``P`` is); special tokens (empty offsets) and tokens outside every span belong to none, and
their sum is kept as ``outside``. So the spans and ``outside`` partition the row: their relevance adds up
exactly (up to float summation) to the row's total, and each span's relevance is exactly the sum of its
tokens' relevance.

Which passage of a retrieved context carried an answer (ContextCite's question, Cohen-Wang et al. 2024,
arXiv 2409.00729) is then ``explain(model, prompt).spans("passages", tokenizer=tok).ranked()``.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from torch import Tensor

from .tracing.errors import LXTError

if TYPE_CHECKING:
    from .attribution import Attribution


class SpanError(LXTError, ValueError):
    """Spans that cannot be mapped onto an attribution's tokens: no text or tokenizer, a text that does not
    encode to the row's tokens, a tokenizer without character offsets, or spans outside the text."""


@dataclass(frozen=True)
class Span:
    """A labelled character range ``text[start:end]`` of the input text."""

    label: str
    start: int
    end: int


_SENTENCE_END = re.compile(r"[.!?]+[\"'”’)\]]*(?=\s|$)|\n")
_BLANK_LINE = re.compile(r"\n[ \t]*\n\s*")


def _trimmed(text: str, start: int, end: int) -> tuple[int, int] | None:
    """``(start, end)`` with surrounding whitespace removed, or None when nothing is left."""
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return (start, end) if start < end else None


def _within(text: str, within: str | tuple[int, int] | None) -> tuple[int, int]:
    """The character range ``within`` names: all of ``text`` (None), ``(start, end)``, or the first place
    where the string ``within`` occurs in ``text``."""
    if within is None:
        return 0, len(text)
    if isinstance(within, str):
        at = text.find(within)
        if at < 0:
            raise SpanError(f"within={within[:60]!r}… does not occur in the text: give a substring of the "
                            "explained text (e.g. the context you put into the prompt) or (start, end)")
        return at, at + len(within)
    start, end = within
    if not 0 <= start <= end <= len(text):
        raise SpanError(f"within=({start}, {end}) is not a range of the text's {len(text)} characters")
    return start, end


def _split(text: str, pattern: re.Pattern[str], kind: str, within: str | tuple[int, int] | None) -> list[Span]:
    start, end = _within(text, within)
    cuts = [m.end() for m in pattern.finditer(text, start, end)]
    out = []
    for a, b in zip([start, *cuts], [*cuts, end], strict=True):
        found = _trimmed(text, a, b)
        if found is not None:
            out.append(Span(f"{kind} {len(out) + 1}", *found))
    return out


def sentence_spans(text: str, within: str | tuple[int, int] | None = None) -> list[Span]:
    """The sentences of ``text`` (of its part ``within``: a substring or ``(start, end)``): a sentence ends
    at ``.``, ``!`` or ``?`` (with closing quotes or brackets) before a space, or at a newline; labelled
    ``"sentence 1"``, … Abbreviations (``Dr.``) end a sentence too: give your own spans where that matters."""
    return _split(text, _SENTENCE_END, "sentence", within)


def passage_spans(text: str, within: str | tuple[int, int] | None = None) -> list[Span]:
    """The passages of ``text`` (of its part ``within``): blocks separated by blank lines, labelled
    ``"passage 1"``, …"""
    return _split(text, _BLANK_LINE, "passage", within)


def turn_spans(text: str, messages: Sequence[Mapping[str, str]]) -> list[Span]:
    """The chat turns of a templated ``text`` (``tokenizer.apply_chat_template(messages, tokenize=False)``):
    each message's content, found in order, labelled ``"<role> <k>"`` (the template's own markers around it
    belong to no turn)."""
    out, pos = [], 0
    for k, message in enumerate(messages, start=1):
        content = message.get("content")
        if not isinstance(content, str) or not content:
            raise SpanError(f"message {k} has no text content ({message!r}): turns need each message's text")
        at = text.find(content, pos)
        if at < 0:
            raise SpanError(f"message {k}'s content {content[:40]!r} is not in the text after character {pos}: "
                            "give the text the chat template made from these messages")
        out.append(Span(f"{message.get('role', 'turn')} {k}", at, at + len(content)))
        pos = at + len(content)
    return out


SpanSpec = str | Sequence[Span | tuple[int, int] | tuple[str, int, int]] | Mapping[str, tuple[int, int]]


def as_spans(spec: SpanSpec, text: str, within: str | tuple[int, int] | None = None,
             messages: Sequence[Mapping[str, str]] | None = None) -> list[Span]:
    """Spans from ``spec``: ``"sentences"``, ``"passages"``, ``"turns"`` (needs ``messages``), a list of
    :class:`Span`, ``(start, end)`` or ``(label, start, end)``, or a mapping ``{label: (start, end)}``."""
    if isinstance(spec, str):
        if spec in ("sentences", "sentence"):
            return sentence_spans(text, within)
        if spec in ("passages", "passage"):
            return passage_spans(text, within)
        if spec in ("turns", "turn"):
            if messages is None:
                raise SpanError('spans="turns" needs messages=[{"role": ..., "content": ...}, ...] (the messages '
                                "the chat template made the text from)")
            return turn_spans(text, messages)
        raise SpanError(f"spans={spec!r}: give 'sentences', 'passages', 'turns' or your own character spans")
    items = list(spec.items()) if isinstance(spec, Mapping) else list(spec)
    out = []
    for k, item in enumerate(items, start=1):
        if isinstance(item, Span):
            span = item
        elif isinstance(spec, Mapping):
            label, (start, end) = item
            span = Span(str(label), int(start), int(end))
        elif isinstance(item, tuple) and len(item) == 2:
            span = Span(f"span {k}", int(item[0]), int(item[1]))
        elif isinstance(item, tuple) and len(item) == 3:
            span = Span(str(item[0]), int(item[1]), int(item[2]))
        else:
            raise SpanError(f"span {item!r}: give (start, end), (label, start, end) or a Span")
        if not 0 <= span.start < span.end <= len(text):
            raise SpanError(f"span {span.label!r} = ({span.start}, {span.end}) is not a non-empty range of the "
                            f"text's {len(text)} characters")
        out.append(span)
    return out


def context_prompt(tokenizer: Any, context: str, question: str, chat: bool | None = None) -> str:
    """A prompt that asks ``question`` about ``context``, as text that holds ``context`` verbatim (so
    ``within=context`` finds it): ``"<context>\n\nQuestion: <question>\nAnswer:"``, wrapped as one user turn
    by the tokenizer's chat template when it has one (``chat=None``) or when ``chat=True``."""
    if not context.strip() or not question.strip():
        raise SpanError("the context and the question must both hold text")
    if chat is None:
        chat = bool(getattr(tokenizer, "chat_template", None))
    if not chat:
        return f"{context}\n\nQuestion: {question}\nAnswer:"
    if not getattr(tokenizer, "chat_template", None):
        raise SpanError("this tokenizer has no chat template: use chat=False")
    message = f"{context}\n\nQuestion: {question} Answer in a few words."
    return tokenizer.apply_chat_template([{"role": "user", "content": message}], tokenize=False,
                                         add_generation_prompt=True)


def token_offsets(text: str, ids: Sequence[int], tokenizer: Any) -> list[tuple[int, int]]:
    """Character ``(start, end)`` of each of ``ids`` in ``text``, from the tokenizer's offsets mapping
    (special tokens ``(0, 0)``). :class:`SpanError` when ``text`` does not encode to exactly ``ids`` (with or
    without the tokenizer's special tokens) or the tokenizer gives no offsets (a slow tokenizer)."""
    ids = [int(i) for i in ids]
    for special in (True, False):
        try:
            enc = tokenizer(text, add_special_tokens=special, return_offsets_mapping=True)
        except (NotImplementedError, TypeError, ValueError) as exc:
            raise SpanError(f"{type(tokenizer).__name__} gives no character offsets ({exc}): load the fast "
                            "tokenizer (AutoTokenizer.from_pretrained(..., use_fast=True))") from exc
        if list(enc["input_ids"]) == ids:
            return [(int(a), int(b)) for a, b in enc["offset_mapping"]]
    raise SpanError(f"the text does not encode to this row's {len(ids)} tokens: give the exact text the row "
                    "was encoded from (text=...) and the tokenizer that encoded it")


def assign(text: str, offsets: Sequence[tuple[int, int]], spans: Sequence[Span]) -> list[int]:
    """For each token, the index of the span that holds its first non-space character, or -1 (special
    tokens, tokens outside every span). Overlapping spans: the first listed wins."""
    out = []
    for a, b in offsets:
        if a >= b:
            out.append(-1)
            continue
        c = a
        while c < b - 1 and text[c].isspace():
            c += 1
        out.append(next((k for k, s in enumerate(spans) if s.start <= c < s.end), -1))
    return out


@dataclass
class SpanAttribution:
    """Relevance per span of one explained row: ``spans`` with their ``relevance`` (each the exact sum of
    its tokens'), ``outside`` (special tokens and tokens in no span), and per token its ``offsets``,
    ``token_relevance`` and ``token_span`` (span index or -1); ``target`` names what was explained."""

    text: str
    spans: list[Span]
    relevance: list[float]
    outside: float
    offsets: list[tuple[int, int]]
    token_relevance: list[float]
    token_span: list[int]
    target: str
    score: float

    @property
    def total(self) -> float:
        """The row's total relevance: the spans' and ``outside`` together."""
        return math.fsum([*self.relevance, self.outside])

    def span_text(self, k: int) -> str:
        """The text of span ``k``."""
        return self.text[self.spans[k].start:self.spans[k].end]

    def ranked(self) -> list[tuple[str, float, str]]:
        """``(label, relevance, text)`` of every span, most relevant first."""
        order = sorted(range(len(self.spans)), key=lambda k: self.relevance[k], reverse=True)
        return [(self.spans[k].label, self.relevance[k], self.span_text(k)) for k in order]

    def top(self, k: int = 3) -> list[tuple[str, float, str]]:
        """The ``k`` most relevant spans: ``(label, relevance, text)``."""
        return self.ranked()[:k]

    def to_dict(self) -> dict[str, Any]:
        """Plain Python (JSON-ready) form, spans in text order."""
        return {"target": self.target, "score": self.score, "outside": self.outside, "total": self.total,
                "spans": [{"label": s.label, "start": s.start, "end": s.end, "text": self.span_text(k),
                           "relevance": self.relevance[k]} for k, s in enumerate(self.spans)]}

    def show(self, console: Any = None, k: int | None = None) -> None:
        """Print the spans ranked, then the text with each span on its colour (rich); see
        :func:`lxt_fx.render.spans.show_spans`."""
        from .render.spans import show_spans

        show_spans(self, console, k)

    def to_html(self, path: str | os.PathLike[str] | None = None, title: str = "lxt-fx: relevance per span") -> str:
        """Self-contained HTML page: the spans ranked, and the text with every span highlighted (its tokens on
        their own colours inside); see :func:`lxt_fx.render.spans.spans_html`."""
        from .render.spans import spans_html

        return spans_html(self, path, title)


def span_relevance(attribution: Attribution, spans: SpanSpec = "sentences", *, tokenizer: Any,
                   text: str | None = None, row: int = 0, within: str | tuple[int, int] | None = None,
                   messages: Sequence[Mapping[str, str]] | None = None) -> SpanAttribution:
    """Sum row ``row`` of ``attribution`` over ``spans`` of its text (see :func:`as_spans`), through the
    tokenizer's character offsets. ``text``: the text the row was encoded from (default: the text
    ``explain`` was given, kept in ``attribution.texts``); ``within``: split only this part of the text (a
    substring, e.g. the context of a RAG prompt, or ``(start, end)``)."""
    if tokenizer is None:
        raise SpanError("spans need the tokenizer's character offsets: pass tokenizer=...")
    if text is None:
        texts = getattr(attribution, "texts", None)
        if not texts or row >= len(texts) or not isinstance(texts[row], str):
            raise SpanError("this attribution keeps no text for the row (it was explained from ids or a text "
                            "pair): pass text=... (the text the row was encoded from)")
        text = texts[row]
    keep = attribution.kept(row)
    ids = attribution.input_ids[row][keep].tolist()
    values: Tensor = attribution.relevance[row][keep].double()
    offsets = token_offsets(text, ids, tokenizer)
    chosen = as_spans(spans, text, within, messages)
    owner = assign(text, offsets, chosen)
    per_token = values.tolist()
    relevance = [math.fsum(v for v, o in zip(per_token, owner, strict=True) if o == k) for k in range(len(chosen))]
    outside = math.fsum(v for v, o in zip(per_token, owner, strict=True) if o < 0)
    target = attribution.target_tokens[row] if attribution.target_tokens else str(int(attribution.target_ids[row]))
    return SpanAttribution(text, chosen, relevance, outside, offsets, per_token, owner, str(target),
                           float(attribution.target_scores[row]))
