"""The datasets that ship with lxt-fx for perturbation experiments, and loaders for your own JSONL files.

* ``passages.jsonl`` — natural-text passages (32–128 SmolLM2 tokens) for next-token prediction, the
  paper's main setting: each row ``{"id", "text", "source", "license", "n_tokens_smollm2"}``. The model
  explains its own argmax next token after the first ``length`` tokens. Built by ``build_passages.py``
  from the Python Language Reference and standard-library docstrings (PSF License 2.0) and the CC0 1.0
  legal code (CC0-1.0), all shipped with CPython / Debian; each row names its source and licence.
* ``cloze.jsonl`` — prompts with a one-token answer written by the lxt-fx team (facts, definitions,
  arithmetic, coreference, …): ``{"id", "prompt", "answer", "category"}``. The answer is explained.

Answers must be exactly one token of the model's tokenizer, leading space included (``" Paris"``).
**A prompt whose answer is several tokens is skipped, not an error**: :func:`encode_cloze` returns the
skipped items with the encoded ones, and the CLI and the benchmark print and record how many were
skipped. An empty file (no JSON rows) raises :class:`EmptyDataError`; a row that is neither a passage
(``"text"``) nor a cloze prompt (``"prompt"`` + ``"answer"``) raises :class:`DataFormatError`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..tracing.errors import LXTError

DATA_DIR = Path(__file__).with_name("data")
PASSAGES = DATA_DIR / "passages.jsonl"
CLOZE = DATA_DIR / "cloze.jsonl"


class EmptyDataError(LXTError, ValueError):
    """A data file with no rows (or no rows left after filtering)."""


class DataFormatError(LXTError, ValueError):
    """A data file row that cannot be read (not JSON, or missing its fields)."""


@dataclass(frozen=True)
class Passage:
    """A natural-text passage; the model explains its own next token after it."""

    id: str
    text: str
    source: str = ""
    license: str = ""


@dataclass(frozen=True)
class ClozeItem:
    """A prompt whose next token should be ``answer`` (one token, leading space included)."""

    id: str
    prompt: str
    answer: str
    category: str = ""


@dataclass
class Example:
    """One encoded row: token ids, the target id to explain (``None``: the model's argmax) and a label."""

    input_ids: list[int]
    target_id: int | None
    label: str
    meta: dict[str, Any] = field(default_factory=dict)


def read_jsonl(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The JSON objects of a JSONL file (blank lines ignored); errors name the file and line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data file {str(path)!r} does not exist")
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataFormatError(f"{path}:{number}: not a JSON object ({exc.msg})") from exc
        if not isinstance(row, dict):
            raise DataFormatError(f"{path}:{number}: expected a JSON object per line, got {type(row).__name__}")
        rows.append(row)
    if not rows:
        raise EmptyDataError(f"data file {str(path)!r} is empty: expected one JSON object per line, e.g. "
                             '{"text": "..."} (a passage) or {"prompt": "...", "answer": " word"} (a cloze prompt)')
    return rows


def _passage(row: dict[str, Any], i: int) -> Passage:
    return Passage(str(row.get("id", f"p{i:03d}")), str(row["text"]), str(row.get("source", "")),
                   str(row.get("license", "")))


def _cloze(row: dict[str, Any], i: int) -> ClozeItem:
    return ClozeItem(str(row.get("id", f"c{i:03d}")), str(row["prompt"]), str(row["answer"]),
                     str(row.get("category", "")))


def load_passages(path: str | os.PathLike[str] | None = None) -> list[Passage]:
    """Passages from ``path`` (default: the shipped ``passages.jsonl``)."""
    rows = read_jsonl(path or PASSAGES)
    for i, row in enumerate(rows):
        if not isinstance(row.get("text"), str):
            raise DataFormatError(f"{path or PASSAGES}: row {i + 1} has no \"text\" string")
    return [_passage(row, i) for i, row in enumerate(rows)]


def load_cloze(path: str | os.PathLike[str] | None = None) -> list[ClozeItem]:
    """Cloze prompts from ``path`` (default: the shipped ``cloze.jsonl``)."""
    rows = read_jsonl(path or CLOZE)
    for i, row in enumerate(rows):
        if not isinstance(row.get("prompt"), str) or not isinstance(row.get("answer"), str):
            raise DataFormatError(f"{path or CLOZE}: row {i + 1} needs \"prompt\" and \"answer\" strings")
    return [_cloze(row, i) for i, row in enumerate(rows)]


def load(path: str | os.PathLike[str]) -> list[Passage] | list[ClozeItem]:
    """A data file of either kind: cloze prompts when its rows have ``"prompt"`` and ``"answer"``, passages
    when they have ``"text"``. The short names ``"passages"`` and ``"cloze"`` give the shipped files."""
    if str(path) == "passages":
        return load_passages()
    if str(path) == "cloze":
        return load_cloze()
    rows = read_jsonl(path)
    if all("prompt" in r and "answer" in r for r in rows):
        return load_cloze(path)
    if all("text" in r for r in rows):
        return load_passages(path)
    raise DataFormatError(f"{path}: every row needs either \"text\" (a passage) or \"prompt\" and \"answer\" "
                          "(a cloze prompt), not a mix")


def _ids(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text)["input_ids"])


def encode_passages(passages: Sequence[Passage], tokenizer: Any, length: int = 32,
                    limit: int | None = None) -> tuple[list[Example], list[Passage]]:
    """``(examples, too_short)``: the first ``length`` tokens of each passage (target: the model's argmax,
    decided when evaluated); passages with fewer than ``length`` tokens are returned as ``too_short``.
    ``limit``: stop after that many examples."""
    if length < 2:
        raise ValueError(f"length must be ≥ 2 tokens, got {length}")
    examples, short = [], []
    for p in passages:
        if limit is not None and len(examples) >= limit:
            break
        ids = _ids(tokenizer, p.text)
        if len(ids) < length:
            short.append(p)
            continue
        examples.append(Example(ids[:length], None, p.id, {"source": p.source, "license": p.license}))
    return examples, short


def encode_cloze(items: Sequence[ClozeItem], tokenizer: Any,
                 limit: int | None = None) -> tuple[list[Example], list[ClozeItem]]:
    """``(examples, skipped)``: prompts whose answer is exactly one token, and those whose answer is not
    (several tokens, or none) — skipped, never silently: callers report ``len(skipped)``."""
    examples, skipped = [], []
    for item in items:
        if limit is not None and len(examples) >= limit:
            break
        pieces = tokenizer.encode(item.answer, add_special_tokens=False)
        if len(pieces) != 1:
            skipped.append(item)
            continue
        examples.append(Example(_ids(tokenizer, item.prompt), int(pieces[0]), item.id,
                                {"prompt": item.prompt, "answer": item.answer, "category": item.category}))
    return examples, skipped
