"""Renderers of ``explain_generation``: terminal, the self-contained HTML page (and its script, in headless
Chromium with a token selected), the PNG matrix."""

from __future__ import annotations

import json
import os
import re
import subprocess
from html import escape
from pathlib import Path

import pytest
import torch
from conftest import make_model
from helpers import word_tokenizer
from rich.console import Console

from lxt_fx.generation import GenerationAttribution, explain_generation
from lxt_fx.render import RenderError, rgb
from lxt_fx.render.generation import scaled

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
WORDS = [f"w{i}" for i in range(94)]


@pytest.fixture(scope="module")
def gen():
    model = make_model("llama")
    tok = word_tokenizer(WORDS)
    return explain_generation(model, "w3 w17 w40 w5 w60 w8", tokenizer=tok, max_new_tokens=5), tok


def test_scaled_rows_are_each_rows_own_max(gen) -> None:
    g, _ = gen
    values = torch.tensor(scaled(g))
    for k in range(len(g)):
        seen = g.prompt_length + k
        row = g.matrix[k, :seen]
        torch.testing.assert_close(values[k, :seen], row / row.abs().max())
        assert (values[k, seen:] == 0).all()
    first_left_out = torch.tensor(scaled(g, skip_first=True))
    row = g.matrix[0, : g.prompt_length]
    torch.testing.assert_close(first_left_out[0, 1: g.prompt_length], row[1:] / row[1:].abs().max())


def test_terminal_shows_one_map_per_generated_token(gen) -> None:
    g, tok = gen
    console = Console(record=True, width=120)
    g.show(console, tokenizer=tok)
    text = console.export_text()
    for label in g.labels(tok):
        assert label in text
    console = Console(record=True, width=120)
    g.show(console, tokenizer=tok, rows=[2])
    text = console.export_text()
    assert g.labels(tok)[2] in text and g.labels(tok)[0] not in text
    with pytest.raises(RenderError, match="rows \\[7\\] do not exist"):
        g.show(console, rows=[7])


def test_html_is_self_contained_and_carries_every_row(gen, tmp_path: Path) -> None:
    g, tok = gen
    page = g.to_html(tmp_path / "gen.html", tokenizer=tok)
    assert (tmp_path / "gen.html").read_text() == page
    # offline: no external resource of any kind
    assert not re.search(r"(src|href)\s*=|@import|url\(|https?://", page)
    data = json.loads(re.search(r'<script type="application/json" id="lxt-data">(.*?)</script>', page, re.S)[1])
    assert data["prompt"] == g.prompt_length and len(data["rows"]) == len(g)
    torch.testing.assert_close(torch.tensor(data["raw"]), g.matrix)
    torch.testing.assert_close(torch.tensor(data["rows"]), torch.tensor(scaled(g)), atol=1e-4, rtol=0)
    spans = re.findall(r'<span class="(tok[^"]*)"( style="background:(#[0-9a-f]{6})[^"]*")?>', page)
    assert len(spans) == len(g.ids)
    assert sum("gen" in cls for cls, _, _ in spans) == len(g)
    # without a script, token 0's map is drawn: the prompt in its colours, the first generated token selected
    first = scaled(g)[0]
    for i, (_, _, colour) in enumerate(spans[: g.prompt_length]):
        assert colour == "#{:02x}{:02x}{:02x}".format(*rgb(first[i]))
    assert "sel" in spans[g.prompt_length][0]


def test_html_opens_on_the_selected_token(gen) -> None:
    """``selected=k`` (the demo passes the answer token its terminal explained): the page opens on row ``k``,
    also without a script (its colours written into the page), its label and score in the header."""
    g, tok = gen
    k = len(g) - 2
    page = g.to_html(tokenizer=tok, selected=k)
    data = json.loads(re.search(r'<script type="application/json" id="lxt-data">(.*?)</script>', page, re.S)[1])
    assert data["selected"] == k
    spans = re.findall(r'<span class="(tok[^"]*)"( style="background:(#[0-9a-f]{6})[^"]*")?>', page)
    values, seen = scaled(g)[k], g.prompt_length + k
    for i, (cls, _, colour) in enumerate(spans):
        if i < seen:
            assert colour == "#{:02x}{:02x}{:02x}".format(*rgb(values[i])), i
        else:
            assert ("sel" in cls.split()) == (i == seen) and ("unseen" in cls.split()) == (i > seen), (i, cls)
    assert f'id="lxt-label">{escape(g.labels(tok)[k])}<' in page and f"{float(g.scores[k]):.6g}" in page
    with pytest.raises(RenderError, match="do not exist"):
        g.to_html(tokenizer=tok, selected=len(g))


def test_labels_show_the_decoded_token_not_the_bpe_marker(gen) -> None:
    """A byte-level BPE token ``'ĠWarsaw'`` is labelled as the text it stands for, ``' Warsaw'``, in the labels
    and the page's header (with or without the tokenizer)."""
    g, _ = gen
    tokens = ["Marie", "Ġwas", "Ġborn", "Ġin", "ĠWarsaw", "."]
    bpe = GenerationAttribution(torch.rand(2, 6), [5, 6, 7, 8, 9, 10], tokens, 4, torch.ones(2), " Warsaw.", g.report)
    assert bpe.labels() == ["generated token 1 of 2: ' Warsaw'", "generated token 2 of 2: '.'"]
    page = bpe.to_html()
    assert escape("' Warsaw'") in page and "ĠWarsaw" not in page


def test_png_matrix(gen, tmp_path: Path) -> None:
    image = pytest.importorskip("matplotlib.image")
    g, tok = gen
    g.save_png(tmp_path / "m.png", tokenizer=tok)
    pixels = (image.imread(tmp_path / "m.png")[..., :3] * 255).round().astype(int)
    assert pixels.shape[0] > 100 and pixels.shape[1] > 100
    # the strongest cell of each row is drawn at full colour, the unseen cells in grey
    full = torch.tensor(scaled(g)).abs().max(-1).values
    assert (full == 1).all()
    for colour in (rgb(1.0), (0xe6, 0xe6, 0xe6)):
        near = (torch.from_numpy(pixels) - torch.tensor(colour)).abs().max(-1).values <= 2
        assert int(near.sum()) > 50, colour


@pytest.mark.skipif(not os.path.exists(CHROMIUM),
                    reason=f"{CHROMIUM} not found: headless Chromium is needed (make browser-test installs the "
                           "Debian package chromium and runs this test)")
def test_html_in_headless_chromium_with_a_token_selected(gen, tmp_path: Path) -> None:
    image = pytest.importorskip("matplotlib.image")
    g, tok = gen
    page = tmp_path / "gen.html"
    g.to_html(page, tokenizer=tok)
    k = len(g) - 1  # the last generated token: its map covers the prompt and the tokens generated before it
    shot = tmp_path / "shot.png"
    done = subprocess.run([CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}",
                           "--hide-scrollbars", "--force-device-scale-factor=1", "--window-size=1100,500",
                           f"--screenshot={shot}", page.as_uri() + f"#{k}"],
                          capture_output=True, text=True, timeout=90, stdin=subprocess.DEVNULL)
    assert shot.is_file(), done.stderr[-2000:]
    pixels = torch.from_numpy((image.imread(shot)[..., :3] * 255).round().astype(int))

    def drawn(colour: tuple[int, int, int]) -> int:
        return int(((pixels - torch.tensor(colour)).abs().max(-1).values <= 2).sum())

    assert drawn((255, 230, 128)) >= 60, "the selected token is not highlighted"
    # the DOM after the script ran: every token of the context in row k's colour, later ones grey, k selected
    dom = subprocess.run([CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile2'}", "--dump-dom",
                          page.as_uri() + f"#{k}"], capture_output=True, text=True, timeout=90,
                         stdin=subprocess.DEVNULL).stdout
    spans = [(cls, re.search(r'style="([^"]*)"', attrs)[1] if "style=" in attrs else "")
             for cls, attrs in re.findall(r'<span class="(tok[^"]*)"([^>]*)>', dom)]
    assert len(spans) == len(g.ids), dom[-2000:]
    values = scaled(g)[k]
    seen = g.prompt_length + k
    for i, (cls, style) in enumerate(spans):
        if i < seen:
            assert "background: rgb({}, {}, {})".format(*rgb(values[i])) in style, (i, style)
        elif i == seen:
            assert "sel" in cls.split() and "unseen" not in cls.split()
        else:
            assert "unseen" in cls.split()
    assert g.labels(tok)[k] in dom


@pytest.mark.skipif(not os.path.exists(CHROMIUM),
                    reason=f"{CHROMIUM} not found: headless Chromium is needed (make browser-test installs the "
                           "Debian package chromium and runs this test)")
def test_html_lines_wrap_in_headless_chromium(tmp_path: Path) -> None:
    """A long prompt wraps at the page's width: no horizontal scrollbar (the page's scroll width fits the
    window), measured in Chromium's layout by a probe script appended to a copy of the page."""
    model = make_model("llama")
    tok = word_tokenizer(WORDS)
    prompt = " ".join(f"w{i % 90 + 3}" for i in range(120))
    g = explain_generation(model, prompt, tokenizer=tok, max_new_tokens=2)
    probe = ("<script>document.body.setAttribute('data-overflow', String(document.documentElement.scrollWidth > "
             "document.documentElement.clientWidth));</script></body>")
    page = tmp_path / "gen.html"
    page.write_text(g.to_html(tokenizer=tok).replace("</body>", probe), encoding="utf-8")
    dom = subprocess.run([CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom",
                          "--window-size=700,500", page.as_uri()], capture_output=True, text=True, timeout=90,
                         stdin=subprocess.DEVNULL).stdout
    assert 'data-overflow="false"' in dom, re.search(r"<body[^>]*>", dom)
