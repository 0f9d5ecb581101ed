"""The rows of a JSONL data file: one JSON object per line with ``text`` (or ``prompt``), optional ``id`` and
``target``. A row that cannot be explained (not JSON, not an object, no text, empty text, a target that is not
one token, more tokens than the limit) is kept as a :class:`Row` with its ``error``, so it is reported in the
index and skipped, never raised."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..tracing.errors import LXTError


class DatasetError(LXTError):
    """The data file or the output folder cannot be used as given (missing, unreadable, another run's folder)."""


@dataclass
class Row:
    """One line of the data file: ``position`` (0-based line number), the item ``id`` (the row's ``id``, else
    the position), its text and target (``None``: the model's argmax), or the ``error`` that makes it a bad row."""

    position: int
    id: Any
    text: str | None = None
    target: int | str | None = None
    error: str | None = None


def read_rows(path: str | Path) -> tuple[list[Row], str]:
    """Every line of the JSONL file ``path`` as a :class:`Row` (blank lines too: an empty row), and the file's
    SHA-256. Raises :class:`DatasetError` when the file cannot be read."""
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError as exc:
        raise DatasetError(f"data file {str(path)!r} does not exist: give a JSONL file, one "
                           '{"text": ...} object per line') from exc
    except OSError as exc:
        raise DatasetError(f"data file {str(path)!r} cannot be read: {exc.strerror or exc}") from exc
    rows = []
    lines = raw.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    for position, line in enumerate(lines):
        rows.append(_row(position, line))
    return rows, hashlib.sha256(raw).hexdigest()


def _row(position: int, line: bytes) -> Row:
    if not line.strip():
        return Row(position, position, error="empty line")
    try:
        obj = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        return Row(position, position, error=f"not JSON: {exc}")
    if not isinstance(obj, dict):
        return Row(position, position, error=f"not a JSON object but {type(obj).__name__}")
    item_id = obj.get("id", position)
    if not isinstance(item_id, (str, int)) or isinstance(item_id, bool):
        return Row(position, position, error=f"id must be a string or an integer, got {item_id!r:.40}")
    text = obj.get("text", obj.get("prompt"))
    if not isinstance(text, str):
        return Row(position, item_id, error='no "text" (or "prompt") string')
    if not text.strip():
        return Row(position, item_id, error="empty text")
    target = obj.get("target")
    if target is not None and (isinstance(target, bool) or not isinstance(target, (int, str))):
        return Row(position, item_id, error=f"target must be a token string or id, got {target!r:.40}")
    return Row(position, item_id, text, target)
