"""``Attribution``: the result of ``explain`` — relevance per input token, with what was explained."""

from __future__ import annotations

import fnmatch
import os
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from .rewrite import RewriteReport
from .taps import CaptureNameError
from .tracing.errors import LXTError


class NoTokensError(LXTError, ValueError):
    """A token view (``row``, ``top``) of an attribution that holds no token relevance (an image or audio
    model explained without text): read its maps (``pixel_relevance``, ``image_relevance``,
    ``audio_relevance``) or draw them with ``show()`` / ``to_html()``."""


def _not_captured(what: str, name: str, captured: dict[str, Tensor] | None, method: str) -> str:
    """Why ``name`` is not among the ``captured`` names: a glob is kept as one entry per module it matched."""
    have = sorted(captured or {})
    if any(c in name for c in "*?["):
        matched = [k for k in have if fnmatch.fnmatchcase(k, name)]
        if matched:
            return (f"{name!r} is a glob: it was captured as one entry per module it matched ({matched}); read "
                    f"one of them, e.g. attribution.{method}({matched[0]!r})")
    return f"no {what} captured at {name!r} (captured: {have}); pass explain(..., capture=[{name!r}])"


class NoPositionsError(LXTError, ValueError):
    """``pair_relevance()`` of an attribution made without a position-aware composite: no position relevance
    was read; explain with ``composite="palrp"``."""


class RowIndexError(LXTError, IndexError):
    """A row the attribution does not have (``row(i)``, ``top(i=...)`` with ``i`` outside its batch)."""


class ViewArgumentError(LXTError, ValueError):
    """An argument of an attribution view of the wrong kind (``top(k)`` with a ``k`` that is not a
    non-negative int)."""


@dataclass
class Attribution:
    """Relevance of every input token for one explained scalar per row.

    ``relevance``: float32 ``[batch, seq]``, exactly 0 on padding; ``tokens``: the tokens of each row
    (without padding); ``target_ids``: the explained output index per row (``-1`` for function targets);
    ``target_scores``: the explained scalar per row; ``positions``: the sequence position explained per row
    (``-1`` for sequence-level outputs); ``report``: the rewrite report of the graph that produced it;
    ``latents``: per-neuron relevance at the names given to ``explain(..., capture=...)``;
    ``latent_values``: the activations there (the ``x`` of ``x ⊙ grad``).

    Encoder-decoder models (T5) also fill ``decoder_relevance`` ``[batch, decoder_seq]``,
    ``decoder_tokens`` and ``decoder_input_ids``: the explained token's relevance splits over the encoder
    input (``relevance``) and the decoder input (``decoder_relevance``). Image models (``explain(model,
    pixel_values)`` or ``explain(model, images=pixel_values)``, the same result) give pixel relevance
    ``[batch, H, W]`` (summed over channels) in ``relevance`` and ``pixel_relevance`` alike, its sum per patch
    in ``image_relevance``, and no tokens: ``row`` and ``top`` raise :class:`NoTokensError`, ``to_dict`` and
    the renderers give the maps.

    Mixed inputs (``explain(..., images=..., audio=...)``, :mod:`lxt_fx.modalities`) fill one map per
    modality from the same backward pass: ``relevance`` for the text tokens (the decoder's text for a
    speech model), ``image_relevance`` ``[batch, H/p, W/p]`` (per image patch), ``pixel_relevance``
    ``[batch, H, W]`` and ``audio_relevance`` ``[batch, frames]``.

    **What the token map includes.** ``relevance`` is read at the token embeddings: the token's own share
    only. With plain AttnLRP a positional encoding is a constant, so the share of an added position
    embedding is absorbed (lost from every map) and a rotary one leaves everything to the tokens. With the
    position-aware composite ``composite="palrp"`` (PA-LRP, Bakish et al. 2025) the positions are inputs of
    their own: ``position_relevance`` ``[batch, seq]`` holds the relevance of each position of the text
    (added tables and rotary tables summed over features, heads and layers), ``pair_relevance()`` the
    position–token pair (``relevance + position_relevance``), and ``position_maps`` every positional table
    by name (``"positions:transformer.wpe"``, ``"positions:model.rotary_emb"``, an image model's
    ``"positions:vit.embeddings.position_embeddings"`` over [CLS] and the patches, BERT's
    ``"token_types:…"``), each ``[batch, positions]``. Under PA-LRP a rotary model's ``relevance`` itself
    changes: half of what reaches each rotated query and key goes to its position (Eq. 10).
    """

    relevance: Tensor
    tokens: list[list[str]]
    input_ids: Tensor
    attention_mask: Tensor
    target_ids: Tensor
    target_scores: Tensor
    positions: Tensor
    report: RewriteReport
    target_tokens: list[str] | None = None
    latents: dict[str, Tensor] | None = None
    decoder_relevance: Tensor | None = None
    decoder_tokens: list[list[str]] | None = None
    decoder_input_ids: Tensor | None = None
    image_relevance: Tensor | None = None
    pixel_relevance: Tensor | None = None
    audio_relevance: Tensor | None = None
    latent_values: dict[str, Tensor] | None = None  # the activation x at each ``capture`` name
    texts: list[str | tuple[str, str]] | None = None  # the text each row was encoded from (text inputs)
    segment_ids: Tensor | None = None  # text pairs: 0 / 1 per token of text / text_pair, -1 special and padding
    position_relevance: Tensor | None = None  # PA-LRP: [batch, seq], the relevance of each text position
    position_maps: dict[str, Tensor] | None = None  # PA-LRP: every positional table, [batch, positions]

    def pair_relevance(self) -> Tensor:
        """Relevance per position–token pair ``[batch, seq]``: ``relevance`` (the token's own share) plus
        ``position_relevance`` (its position's share), for an explanation with a position-aware composite
        (``composite="palrp"``); :class:`NoPositionsError` for any other."""
        if self.position_relevance is None:
            raise NoPositionsError(f"this attribution ({self.report.composite}) holds no position relevance: "
                                   "explain with composite='palrp' (lxt_fx.composites.palrp) to read it")
        return self.relevance + self.position_relevance * self.attention_mask.to(self.relevance.dtype)

    def latent_value(self, name: str) -> Tensor:
        """The activation ``x`` (per neuron) at ``name``, a name passed to ``explain(..., capture=[...])``:
        ``latent(name)`` is ``x ⊙ grad`` of this very tensor."""
        if not self.latent_values or name not in self.latent_values:
            raise CaptureNameError(_not_captured("activation", name, self.latent_values, "latent_value"))
        return self.latent_values[name]

    def latent(self, name: str) -> Tensor:
        """Latent relevance ``x ⊙ grad`` (per neuron) at ``name``, a node or module path passed to
        ``explain(..., capture=[...])``."""
        if not self.latents or name not in self.latents:
            raise CaptureNameError(_not_captured("latent relevance", name, self.latents, "latent"))
        return self.latents[name]

    def __len__(self) -> int:
        return self.relevance.shape[0]

    def has_tokens(self) -> bool:
        """Whether this attribution holds token relevance (False for an image or audio model explained without
        text: its relevance is in the maps ``pixel_relevance`` / ``image_relevance`` / ``audio_relevance``)."""
        return self.relevance.dim() == 2 and self.attention_mask.numel() > 0 and bool(self.attention_mask.any())

    def _require_tokens(self, what: str) -> None:
        if self.has_tokens():
            return
        maps = [name for name in ("pixel_relevance", "image_relevance", "audio_relevance")
                if getattr(self, name) is not None]
        where = (f"its relevance is in {', '.join(maps)}" if maps else "no relevance was read at any token")
        raise NoTokensError(f"{what}: this attribution has no tokens ({self.report.model_class} explained without "
                            f"text); {where}: read those, or draw them with show() / to_html()")

    def kept(self, i: int = 0) -> Tensor:
        """The positions of row ``i`` that hold its tokens: where ``attention_mask`` is 1 (left or right
        padding and holes left out), in order."""
        self._check_row(i)
        return self.attention_mask[i].nonzero().flatten()

    def _check_row(self, i: int) -> None:
        if isinstance(i, bool) or not isinstance(i, int):
            raise RowIndexError(f"row index {i!r} is a {type(i).__name__}: give an int in 0..{len(self) - 1}")
        if not 0 <= i < len(self):
            raise RowIndexError(f"row {i} does not exist: this attribution has {len(self)} row(s), "
                                f"0..{len(self) - 1}")

    def row(self, i: int = 0) -> list[tuple[str, float]]:
        """(token, relevance) pairs of row ``i``, padding left out (the positions where the mask is 1);
        :class:`NoTokensError` without tokens."""
        self._check_row(i)
        self._require_tokens(f"row({i})")
        keep = self.kept(i)
        return list(zip(self.tokens[i], self.relevance[i][keep].tolist(), strict=True))

    def top(self, k: int = 5, i: int = 0) -> list[tuple[str, float]]:
        """The ``k`` most relevant tokens of row ``i``, most relevant first (``k`` a non-negative int; a ``k``
        larger than the row gives the whole row; for an encoder-decoder model the decoder's tokens too, named
        ``"decoder: <token>"``); :class:`NoTokensError` without tokens."""
        if isinstance(k, bool) or not isinstance(k, int) or k < 0:
            raise ViewArgumentError(f"top(k={k!r}): k is how many tokens to list, a non-negative int; for "
                                    "every token of the row use row(i)")
        self._check_row(i)
        self._require_tokens(f"top({k})")
        pairs = self.row(i) + self.decoder_row(i)
        return sorted(pairs, key=lambda tv: tv[1], reverse=True)[:k]

    def decoder_row(self, i: int = 0) -> list[tuple[str, float]]:
        """(``"decoder: <token>"``, relevance) pairs of the decoder input of row ``i`` (encoder-decoder models;
        empty for any other)."""
        if self.decoder_relevance is None or self.decoder_tokens is None:
            return []
        tokens = self.decoder_tokens[i]
        values = self.decoder_relevance[i, : len(tokens)].tolist()
        return [(f"decoder: {t}", v) for t, v in zip(tokens, values, strict=True)]

    def spans(self, spans: Any = "sentences", *, tokenizer: Any, text: str | None = None, row: int = 0,
              within: str | tuple[int, int] | None = None, messages: Any = None) -> Any:
        """Relevance of row ``row`` summed over spans of its text — ``"sentences"``, ``"passages"`` (blank-line
        separated), ``"turns"`` (with ``messages``) or your own character spans ``[(start, end), ...]`` /
        ``{label: (start, end)}`` — through the tokenizer's offsets, as a
        :class:`~lxt_fx.spans.SpanAttribution` (``ranked()``, ``show()``, ``to_html()``); ``within`` splits
        only that part of the text (e.g. the context of a RAG prompt). See :func:`lxt_fx.spans.span_relevance`."""
        from .spans import span_relevance

        self._check_row(row)
        self._require_tokens("spans()")
        return span_relevance(self, spans, tokenizer=tokenizer, text=text, row=row, within=within,
                              messages=messages)

    def segment_relevance(self, i: int = 0) -> dict[str, float]:
        """A text pair's relevance split by segment (``explain(model, (text, text_pair))``, e.g. a reranker's
        query and passage): ``{"text": Σ R over the first text's tokens, "text_pair": over the second's,
        "special": over the special tokens ([CLS], [SEP])}``, which add up to the row's total;
        :class:`ViewArgumentError` for a row that was not a pair."""
        self._check_row(i)
        if self.segment_ids is None or not (self.segment_ids[i] >= 0).any():
            raise ViewArgumentError(f"row {i} was not a text pair: segment_relevance needs "
                                    "explain(model, (text, text_pair), tokenizer=...)")
        seg, rel, keep = self.segment_ids[i], self.relevance[i].double(), self.attention_mask[i].bool()
        return {"text": float(rel[seg == 0].sum()), "text_pair": float(rel[seg == 1].sum()),
                "special": float(rel[(seg < 0) & keep].sum())}

    def to_dict(self) -> dict[str, Any]:
        """Plain Python (JSON-ready) form: per row its tokens, ids and relevance at the positions where the
        mask is 1 (with a position-aware composite also ``position_relevance``, the positions' share)."""
        rows = []
        for i in range(len(self)):
            keep = self.kept(i)
            rows.append({
                "tokens": self.tokens[i],
                "input_ids": self.input_ids[i][keep].tolist(),
                "relevance": self.relevance[i][keep].tolist() if self.relevance.dim() == 2 else [],
                "target_id": int(self.target_ids[i]),
                "target_token": self.target_tokens[i] if self.target_tokens else None,
                "target_score": float(self.target_scores[i]),
                "position": int(self.positions[i]),
            })
            if self.decoder_relevance is not None and self.decoder_tokens is not None:
                m = len(self.decoder_tokens[i])
                rows[-1].update(decoder_tokens=self.decoder_tokens[i],
                                decoder_input_ids=None if self.decoder_input_ids is None
                                else self.decoder_input_ids[i, :m].tolist(),
                                decoder_relevance=self.decoder_relevance[i, :m].tolist())
            if self.position_relevance is not None and self.relevance.dim() == 2:  # PA-LRP: the positions' share
                rows[-1]["position_relevance"] = self.position_relevance[i][keep].tolist()
            for name in ("image_relevance", "pixel_relevance", "audio_relevance"):  # the maps of other modalities
                value = getattr(self, name)
                if value is not None:
                    rows[-1][name] = value[i].tolist()
        return {"rows": rows, "has_tokens": self.has_tokens(), "composite": self.report.composite,
                "model": self.report.model_class}

    # ---- renderers (lxt_fx.render); options: tokenizer=, skip_first=, labels=, … -----------------------

    def show(self, console: Any = None, **options: Any) -> None:
        """Print the heatmap of every row in the terminal (rich); see :func:`lxt_fx.render.show`."""
        from .render import show

        show(self, console, **options)

    def to_html(self, path: str | os.PathLike[str] | None = None, **options: Any) -> str:
        """Self-contained HTML heatmap (written to ``path`` when given); see :func:`lxt_fx.render.to_html`."""
        from .render import to_html

        return to_html(self, path, **options)

    def to_latex(self, **options: Any) -> str:
        """LaTeX document of the heatmap, every special character escaped; see :func:`lxt_fx.render.to_latex`."""
        from .render import to_latex

        return to_latex(self, **options)

    def save_pdf(self, path: str | os.PathLike[str], **options: Any) -> str:
        """PDF through xelatex or pdflatex; returns the engine used; see :func:`lxt_fx.render.save_pdf`."""
        from .render import save_pdf

        return save_pdf(self, path, **options)

    def save_png(self, path: str | os.PathLike[str], **options: Any) -> None:
        """PNG heatmap (matplotlib, the ``viz`` extra); see :func:`lxt_fx.render.save_png`."""
        from .render import save_png

        save_png(self, path, **options)

    def save_image_overlay(self, path: str | os.PathLike[str], image: Any, **options: Any) -> None:
        """Pixel relevance over ``image`` (PNG, three panels); see :func:`lxt_fx.render.save_image_overlay`."""
        from .render import save_image_overlay

        save_image_overlay(self, path, image, **options)

    def show_mixed(self, console: Any = None, row: int = 0) -> None:
        """Text, image patches and audio frames side by side in the terminal; see
        :func:`lxt_fx.render.show_mixed`."""
        from .render import show_mixed

        show_mixed(self, console, row)

    def to_mixed_html(self, path: str | os.PathLike[str] | None = None, row: int = 0) -> str:
        """HTML page with text, image patches and audio frames side by side; see
        :func:`lxt_fx.render.to_mixed_html`."""
        from .render import to_mixed_html

        return to_mixed_html(self, path, row)

    def save_mixed_png(self, path: str | os.PathLike[str], image: Any = None, **options: Any) -> None:
        """PNG with text, image patches (over ``image``) and audio frames side by side; see
        :func:`lxt_fx.render.save_mixed_png`."""
        from .render import save_mixed_png

        save_mixed_png(self, path, image, **options)

    def trace(self, path: str | os.PathLike[str] | None = None, **options: Any) -> Any:
        """The tokens × layers relevance trace (needs ``explain(..., capture=trace_capture(model))``), written
        to ``path`` (.png/.html) when given; see :func:`lxt_fx.render.trace`."""
        from .render import trace

        return trace(self, path, **options)
