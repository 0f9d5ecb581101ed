"""What every renderer shares: readable token text, the [-1, 1] normalization and the diverging palette."""

from __future__ import annotations

from ..attribution import Attribution

# Byte-level BPE (GPT-2, LLaMA-3, SmolLM) and SentencePiece markers, as text.
_MARKERS = {"Ġ": " ", "▁": " ", "Ċ": "⏎", "ĉ": "⇥", "\n": "⏎", "\t": "⇥"}
# Diverging palette end points: negative relevance blue, positive red, zero white.
NEGATIVE = (33, 102, 172)
POSITIVE = (178, 24, 43)
WHITE = (255, 255, 255)


def token_text(token: str) -> str:
    """A token as readable text: ``Ġ``/``▁`` become a space, ``Ċ`` (newline) becomes ``⏎``."""
    return "".join(_MARKERS.get(ch, ch) for ch in token)


def normalized(attribution: Attribution, row: int = 0) -> tuple[list[tuple[str, float, float]], float]:
    """``([(text, relevance, relevance / max|R|), ...], max|R|)`` for row ``row``, padding left out."""
    pairs = attribution.row(row)
    scale = max((abs(v) for _, v in pairs), default=0.0)
    div = scale if scale > 0 else 1.0
    return [(token_text(t), v, max(-1.0, min(1.0, v / div))) for t, v in pairs], scale


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


def target_label(attribution: Attribution, row: int = 0) -> str:
    """The explained output of row ``row`` as text: the token if known, else its id (or 'function')."""
    if attribution.target_tokens is not None:
        return repr(token_text(attribution.target_tokens[row]))
    tid = int(attribution.target_ids[row])
    return f"id {tid}" if tid >= 0 else "a function of the outputs"


def report_summary(attribution: Attribution) -> str:
    """One line: composite, rules applied with their counts, unhandled count."""
    report = attribution.report
    rules = ", ".join(f"{name}×{n}" for name, n in sorted(report.rule_counts().items()))
    return (f"{report.model_class} under {report.composite!r}: {len(report.rewritten)} nodes rewritten "
            f"(rules applied: {rules or 'none'}), {len(report.unhandled)} unhandled")
