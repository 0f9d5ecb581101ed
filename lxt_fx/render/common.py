"""What every renderer shares: the user's text per token, the [-1, 1] normalization, the diverging palette.

Every renderer colours a token by ``relevance / scale``, clipped to [-1, 1], where ``scale`` is the largest
``|relevance|`` of the row (of its encoder and decoder inputs together for encoder-decoder models), on one
diverging palette: blue against the explained output, white zero, red for it. ``skip_first=True`` leaves
the first token (the attention sink, which often takes most of the relevance) out of ``scale``; it is then
shown clipped at full colour while its value (hover, JSON, tables) stays exact.
"""

from __future__ import annotations

import codecs
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from ..tracing.errors import LXTError

if TYPE_CHECKING:
    from ..attribution import Attribution

# Byte-level BPE (GPT-2, LLaMA-3, SmolLM) and SentencePiece markers, as text.
_MARKERS = {"Ġ": " ", "▁": " ", "Ċ": "⏎", "ĉ": "⇥", "\n": "⏎", "\t": "⇥"}
_BYTE_TOKEN = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")
NEWLINE, TAB = "⏎", "⇥"
# Diverging palette end points: negative relevance blue, positive red, zero white.
NEGATIVE = (33, 102, 172)
POSITIVE = (178, 24, 43)
WHITE = (255, 255, 255)


class RenderError(LXTError, ValueError):
    """An attribution this renderer cannot draw (an image for a token renderer, a row that does not exist)."""


# ---- tokens as the user's text ---------------------------------------------------------------------------


def token_text(token: str) -> str:
    """One token as readable text without a tokenizer: ``Ġ``/``▁`` become a space, ``Ċ`` (newline)
    ``⏎``, a byte token ``<0x0A>`` its character (``⏎`` for a newline), a word-piece ``##ing`` ``ing``."""
    byte = _BYTE_TOKEN.match(token)
    if byte:
        value = int(byte.group(1), 16)
        return shown(chr(value)) if value < 0x80 else f"⟨{value:02x}⟩"
    if token.startswith("##") and len(token) > 2:
        token = token[2:]
    return "".join(_MARKERS.get(ch, ch) for ch in token)


def shown(piece: str) -> str:
    """A piece of text with its newlines as ``⏎`` and tabs as ``⇥`` (so every token stays visible)."""
    return piece.replace("\r\n", NEWLINE).replace("\n", NEWLINE).replace("\t", TAB)


@lru_cache(maxsize=1)
def _byte_decoder() -> dict[str, int]:
    """The inverse of the byte-level BPE alphabet: each of its 256 characters → the byte it stands for."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    chars = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in chars:
            chars[b] = chr(256 + extra)
            extra += 1
    return {c: b for b, c in chars.items()}


def _looks_byte_level(tokens: Sequence[str]) -> bool:
    """Whether a row's tokens look like byte-level BPE: every character one of its 256, no SentencePiece
    marks or byte tokens, no word-piece continuations."""
    alphabet = _byte_decoder()
    text = "".join(tokens)
    return bool(text) and "▁" not in text and all(ch in alphabet for ch in text) and \
        not any(_BYTE_TOKEN.match(t) or (t.startswith("##") and len(t) > 2) for t in tokens)


def _byte_level_tokenizer(tokenizer: Any) -> bool:
    """Whether a (fast) tokenizer decodes with the byte-level decoder (GPT-2, LLaMA-3, SmolLM, Qwen)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    return "ByteLevel" in str(getattr(backend, "decoder", "") or "")


def _pending_marker(token: str) -> str:
    """What a token that holds only part of a multi-byte character shows: its bytes in hex."""
    byte = _BYTE_TOKEN.match(token)
    if byte:
        return f"⟨{byte.group(1).lower()}⟩"
    return "⟨…⟩"


def _byte_level_pieces(tokens: Sequence[str]) -> list[str]:
    """Byte-level BPE tokens decoded as one UTF-8 stream: a character split over several tokens shows on
    the token that completes it; the bytes a token adds to a character still incomplete show in hex
    (``⟨e6⟩``) after whatever complete text the token has."""
    decoder = _byte_decoder()
    utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
    pieces = []
    for token in tokens:
        before = utf8.getstate()[0]
        text = utf8.decode(bytes(decoder[ch] for ch in token))
        pending = utf8.getstate()[0]
        new = pending if text else pending[len(before):]
        pieces.append(text + (f"⟨{new.hex(' ')}⟩" if new else ""))
    return pieces


def _decode(tokenizer: Any, ids: Sequence[int]) -> str:
    try:
        return tokenizer.decode(list(ids), skip_special_tokens=False, clean_up_tokenization_spaces=False)
    except TypeError:  # tokenizers without the clean-up option
        return tokenizer.decode(list(ids), skip_special_tokens=False)


def _tokenizer_pieces(ids: Sequence[int], tokens: Sequence[str], tokenizer: Any, window: int = 6) -> list[str]:
    """Each token's share of ``tokenizer.decode``: ``decode(ids[s:i+1])`` minus ``decode(ids[s:i])`` over a
    short window (constant cost per token). Handles SentencePiece (``▁``, byte fallback ``<0xE2>``),
    byte-level BPE (``Ġ``, ``Ċ``, bytes of a character split over tokens) and WordPiece (``##``) alike,
    because the tokenizer itself decides."""
    pieces: list[str] = []
    for i in range(len(ids)):
        start = max(0, i - window)
        before = _decode(tokenizer, ids[start:i]).rstrip("\ufffd") if i > start else ""
        now = _decode(tokenizer, ids[start:i + 1])
        token = tokens[i] if i < len(tokens) else str(ids[i])
        if now.endswith("\ufffd") and not token_text(token).endswith("\ufffd"):
            # part of a character the next token(s) complete: the complete text, then a byte marker
            done = now.rstrip("\ufffd")
            pieces.append((done[len(before):] if done.startswith(before) else "") + _pending_marker(token))
        elif now.startswith(before):
            pieces.append(now[len(before):] or token_text(token))
        else:
            pieces.append(token_text(token))
    return pieces


def display_tokens(tokens: Sequence[str], ids: Sequence[int] | None = None, tokenizer: Any = None) -> list[str]:
    """The text each token stands for in the user's text, one string per token (never empty).

    With a ``tokenizer`` (and the ``ids``) the tokenizer's own ``decode`` decides, so word-piece markers
    (``▁``, ``Ġ``, ``##``, ``Ċ``) and byte tokens come out as the text they encode. Without one, a row of
    byte-level BPE tokens is decoded as UTF-8 and any other row token by token with :func:`token_text`.
    Newlines stay ``"\\n"`` here; renderers show them as ``⏎`` (see :func:`shown`). Tokens that are only
    their ids (explained without a tokenizer) are separated by spaces, ``4 5 6``, so that ids never run together.
    """
    if tokenizer is None and ids is not None and len(ids) == len(tokens) and \
            all(t == str(i) for t, i in zip(tokens, ids, strict=True)):
        return [str(i) if k == 0 else f" {i}" for k, i in enumerate(ids)]
    if tokenizer is not None and _byte_level_tokenizer(tokenizer) and _looks_byte_level(tokens):
        pieces = _byte_level_pieces(tokens)  # exact, and shows the bytes of split characters
    elif tokenizer is not None and ids is not None and len(ids) == len(tokens):
        pieces = _tokenizer_pieces(list(ids), list(tokens), tokenizer)
    elif _looks_byte_level(tokens):
        pieces = _byte_level_pieces(tokens)
    else:
        pieces = [token_text(t) for t in tokens]
    pieces = [p.replace(NEWLINE, "\n").replace(TAB, "\t") for p in pieces]
    return [p if p else "∅" for p in pieces]


# ---- rows, normalized --------------------------------------------------------------------------------------


@dataclass
class Token:
    """One token as drawn: its text (``"\\n"`` for newlines), relevance and colour value in [-1, 1]."""

    text: str
    relevance: float
    value: float
    raw: str = ""

    @property
    def shown(self) -> str:
        return shown(self.text)


@dataclass
class Row:
    """One explained output: its label and score, the token segments (``[("", tokens)]`` for decoder-only
    and encoder-only models, ``[("encoder", …), ("decoder", …)]`` for encoder-decoder ones) and the scale."""

    index: int
    label: str
    score: float
    scale: float
    segments: list[tuple[str, list[Token]]] = field(default_factory=list)
    skip_first: bool = False
    mark_from: int | None = None

    @property
    def tokens(self) -> list[Token]:
        return [t for _, seg in self.segments for t in seg]

    @property
    def total(self) -> float:
        return sum(t.relevance for t in self.tokens)


def is_image(attribution: Attribution) -> bool:
    """Whether ``attribution`` holds pixel relevance ``[batch, H, W]`` (an image model) and no tokens."""
    return attribution.relevance.dim() == 3


def has_tokens(attribution: Attribution) -> bool:
    """Whether ``attribution`` holds token relevance (an image or audio model explained without text holds
    none: its relevance is in its maps)."""
    return attribution.has_tokens()


def has_maps(attribution: Attribution) -> bool:
    """Whether ``attribution`` holds an image or audio map (``image_relevance`` / ``audio_relevance``)."""
    return attribution.image_relevance is not None or attribution.audio_relevance is not None


NO_TOKENS = ("no tokens: this attribution holds no token relevance ({model} explained without text) and no "
             "image or audio map")


def require_tokens(attribution: Attribution, what: str) -> None:
    if is_image(attribution):
        raise RenderError(f"{what} draws token relevance, but this attribution is pixel relevance "
                          f"{tuple(attribution.relevance.shape)}: use save_png(path) or "
                          "save_image_overlay(path, image)")


def _row_values(attribution: Attribution, row: int, decoder: bool) -> tuple[list[str], list[float], list[int]]:
    if decoder:
        assert attribution.decoder_relevance is not None and attribution.decoder_tokens is not None
        tokens = attribution.decoder_tokens[row]
        n = len(tokens)
        values = attribution.decoder_relevance[row, :n].tolist()
        ids = attribution.decoder_input_ids[row, :n].tolist() if attribution.decoder_input_ids is not None else []
        return named_tokens(tokens, ids), values, ids
    keep = attribution.attention_mask[row].bool()  # the real tokens: left / right padding and holes left out
    ids = attribution.input_ids[row][keep].tolist()
    return named_tokens(attribution.tokens[row], ids), attribution.relevance[row][keep].tolist(), ids


def unknown_id(token_id: int | str) -> str:
    """How a token id the tokenizer cannot decode reads everywhere: ``⟨id 41⟩``."""
    return f"⟨id {token_id}⟩"


def named_tokens(tokens: Sequence[str | None], ids: Sequence[int]) -> list[str]:
    """Tokens with a name for ids the tokenizer does not know (``convert_ids_to_tokens`` gives None):
    :func:`unknown_id`."""
    return [t if t is not None else unknown_id(ids[i] if i < len(ids) else "?") for i, t in enumerate(tokens)]


def decoded_text(tokenizer: Any, ids: Sequence[int]) -> str:
    """``tokenizer.decode(ids)`` with every id the tokenizer does not know shown as :func:`unknown_id` in its
    place (``decode`` alone drops them silently)."""
    ids = [int(i) for i in ids]
    known = tokenizer.convert_ids_to_tokens(ids)
    parts, run = [], []
    for i, token in zip(ids, known, strict=True):
        if token is None:
            if run:
                parts.append(_decode(tokenizer, run))
                run = []
            parts.append(unknown_id(i))
        else:
            run.append(i)
    if run:
        parts.append(_decode(tokenizer, run))
    return "".join(parts)


def check_labels(attribution: Attribution, labels: Sequence[str] | None) -> None:
    """:class:`RenderError` unless ``labels`` is None or one label per row of ``attribution``."""
    if labels is not None and (isinstance(labels, str) or len(labels) != len(attribution)):
        got = "one str" if isinstance(labels, str) else f"{len(labels)}"
        raise RenderError(f"labels= gives {got} label(s) for {len(attribution)} row(s): give one label per row "
                          "(a list of str), or leave labels out for the explained tokens")


def rows(attribution: Attribution, *, tokenizer: Any = None, skip_first: bool = False,
         labels: Sequence[str] | None = None, mark_from: Sequence[int | None] | int | None = None) -> list[Row]:
    """Every row of a token attribution, normalized to [-1, 1] by its max|R| (see the module doc).

    ``labels``: what each row explains, as text (default: the target token, see :func:`target_label`);
    ``mark_from``: the index from which tokens are marked (e.g. generated tokens), one per row or one for all.
    """
    require_tokens(attribution, "this renderer")
    check_labels(attribution, labels)
    if isinstance(mark_from, Sequence) and len(mark_from) != len(attribution):
        raise RenderError(f"mark_from= gives {len(mark_from)} value(s) for {len(attribution)} row(s): give one "
                          "per row, or one int for all")
    out = []
    for r in range(len(attribution)):
        parts = [("", *_row_values(attribution, r, False))]
        if _is_pair_row(attribution, r):
            parts = _pair_parts(attribution, r, parts[0][1:])
        if attribution.decoder_relevance is not None and attribution.decoder_tokens is not None:
            parts = [("encoder", *parts[0][1:]), ("decoder", *_row_values(attribution, r, True))]
        values = [v for _, _, vals, _ in parts for v in vals]
        considered = values[1:] if skip_first and len(values) > 1 else values
        scale = max((abs(v) for v in considered), default=0.0)
        div = scale if scale > 0 else 1.0
        segments = []
        for name, tokens, vals, ids in parts:
            texts = display_tokens(tokens, ids, tokenizer)
            segments.append((name, [Token(t, v, max(-1.0, min(1.0, v / div)), raw)
                                    for t, v, raw in zip(texts, vals, tokens, strict=True)]))
        mark = mark_from[r] if isinstance(mark_from, Sequence) else mark_from
        label = labels[r] if labels is not None else target_label(attribution, r, tokenizer)
        out.append(Row(r, label, float(attribution.target_scores[r]), scale, segments, skip_first, mark))
    return out


def _is_pair_row(attribution: Attribution, row: int) -> bool:
    segments = getattr(attribution, "segment_ids", None)
    return segments is not None and bool((segments[row] == 1).any())


def _pair_parts(attribution: Attribution, row: int, values: tuple[list[str], list[float], list[int]]
                ) -> list[tuple[str, list[str], list[float], list[int]]]:
    """A text pair's row as two segments, ``text`` and ``text_pair``, each named with its relevance sum (its own
    tokens, special tokens left out): the first text with the special tokens before and after it, then the
    second with the rest."""
    tokens, vals, ids = values
    seg = attribution.segment_ids[row][attribution.attention_mask[row].bool()].tolist()
    cut = next((k for k, s in enumerate(seg) if s == 1), len(seg))
    sums = attribution.segment_relevance(row)
    return [(f"text (Σ {sums['text']:+.4f})", tokens[:cut], vals[:cut], ids[:cut]),
            (f"text_pair (Σ {sums['text_pair']:+.4f})", tokens[cut:], vals[cut:], ids[cut:])]


def normalized(attribution: Attribution, row: int = 0, *, tokenizer: Any = None, skip_first: bool = False
               ) -> tuple[list[tuple[str, float, float]], float]:
    """``([(text, relevance, relevance / scale), ...], scale)`` for row ``row``, padding left out; text as
    shown (newlines as ``⏎``)."""
    view = rows(attribution, tokenizer=tokenizer, skip_first=skip_first)[row]
    return [(t.shown, t.relevance, t.value) for t in view.tokens], view.scale


# ---- colours and labels -----------------------------------------------------------------------------------


def rgb(value: float) -> tuple[int, int, int]:
    """Colour of a normalized relevance in [-1, 1]: white at 0, blue at -1, red at +1 (linear)."""
    v = max(-1.0, min(1.0, float(value)))
    end = POSITIVE if v >= 0 else NEGATIVE
    a = abs(v)
    r, g, b = (round(w + (e - w) * a) for w, e in zip(WHITE, end, strict=True))
    return r, g, b


def text_rgb(value: float) -> tuple[int, int, int]:
    """Readable text colour on top of ``rgb(value)``."""
    return (255, 255, 255) if abs(value) > 0.55 else (0, 0, 0)


def hex_colour(colour: tuple[int, int, int]) -> str:
    return "#{:02x}{:02x}{:02x}".format(*colour)


def target_label(attribution: Attribution, row: int = 0, tokenizer: Any = None) -> str:
    """The explained output of row ``row`` as text: the token if known, else its id (or 'a function')."""
    tid = int(attribution.target_ids[row])
    if tokenizer is not None and tid >= 0:
        return repr(decoded_text(tokenizer, [tid]))
    if attribution.target_tokens is not None and tid >= 0:
        return repr(token_text(named_tokens(attribution.target_tokens[row:row + 1], [tid])[0]))
    return f"id {tid}" if tid >= 0 else "a function of the outputs"


def report_summary(attribution: Attribution) -> str:
    """One line: composite, rules applied with their counts, unhandled count."""
    report = attribution.report
    rules = ", ".join(f"{name}×{n}" for name, n in sorted(report.rule_counts().items()))
    return (f"{report.model_class} under {report.composite!r}: {len(report.rewritten)} nodes rewritten "
            f"(rules applied: {rules or 'none'}), {len(report.unhandled)} unhandled")


def scale_note(row: Row) -> str:
    """How the colours of ``row`` are scaled, in words."""
    note = f"colours scaled by max|R| = {row.scale:.3g}"
    return note + " (first token left out of the scale)" if row.skip_first else note
