"""Shards of a dataset run: safetensors files written whole under a temporary name and then renamed.

A shard ``shard-<first position>-r<rank>.safetensors`` holds ``relevance`` (float32) and ``input_ids`` (int64),
the rows' values one after another, and in its metadata the index records of its rows (``rows``: item id,
position, tokens, target, score, offset, length; a bad row: its error). Only renamed shards exist for a
resumed run: a file still named ``*.tmp`` is what a killed process left and is removed. The index
(``index.jsonl``) is assembled from the shards' metadata once every row is in exactly one shard.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from .rows import DatasetError

KIND = "lxt-fx dataset shard 1"
PATTERN = "shard-*.safetensors"
INDEX = "index.jsonl"
MANIFEST = "run.json"


def shard_name(first_position: int, rank: int) -> str:
    """The file name of a shard whose first row is at ``first_position`` (unique: a row is in one shard)."""
    return f"shard-{first_position:09d}-r{rank}.safetensors"


def write_shard(folder: Path, records: Sequence[dict[str, Any]], relevance: Sequence[torch.Tensor],
                input_ids: Sequence[torch.Tensor], rank: int) -> Path:
    """Write one shard whole (temporary name, then rename) and return its path. ``records[i]`` describes row
    i; good rows get ``offset``/``length`` into the concatenated tensors here."""
    from safetensors.torch import save_file

    offset, rows = 0, []
    for record in records:
        record = dict(record)
        if "error" not in record:
            record.update(offset=offset, length=len(record["tokens"]))
            offset += len(record["tokens"])
        rows.append(record)
    rel = torch.cat([r.float().reshape(-1) for r in relevance]) if relevance else torch.zeros(0)
    ids = torch.cat([i.long().reshape(-1) for i in input_ids]) if input_ids else torch.zeros(0, dtype=torch.long)
    path = folder / shard_name(min(r["position"] for r in rows), rank)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    os.close(fd)
    try:
        save_file({"relevance": rel.contiguous(), "input_ids": ids.contiguous()}, tmp,
                  metadata={"kind": KIND, "rows": json.dumps(rows, ensure_ascii=False)})
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def remove_partial(folder: Path) -> list[str]:
    """Delete what a killed writer left (``.*.tmp``); returns their names."""
    gone = []
    for tmp in folder.glob(".shard-*.tmp"):
        tmp.unlink(missing_ok=True)
        gone.append(tmp.name)
    return gone


def shard_rows(path: Path) -> list[dict[str, Any]]:
    """The index records stored in shard ``path`` (each with ``shard``: its file name)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
    except Exception as exc:  # noqa: BLE001 - safetensors raises several kinds for a damaged file
        raise DatasetError(f"shard {path} cannot be read ({exc}); it was not written by lxt-fx's atomic "
                           "writer: delete it and run again (its rows will be done again)") from exc
    if meta.get("kind") != KIND:
        raise DatasetError(f"{path} is not an lxt-fx dataset shard: move it out of the output folder")
    rows = json.loads(meta["rows"])
    for row in rows:
        row["shard"] = path.name if "error" not in row else None
    return rows


def done_rows(folder: Path) -> list[dict[str, Any]]:
    """Every index record of every finished shard in ``folder``."""
    return [row for path in sorted(folder.glob(PATTERN)) for row in shard_rows(path)]


def load_relevance(folder: Path, record: dict[str, Any]) -> torch.Tensor:
    """The relevance per token of one good row of the index."""
    from safetensors import safe_open

    with safe_open(str(Path(folder) / record["shard"]), "pt") as f:
        flat = f.get_slice("relevance")
        return flat[record["offset"]: record["offset"] + record["length"]]


def write_index(folder: Path, total: int) -> list[dict[str, Any]]:
    """Assemble ``index.jsonl`` (one record per row of the data file, in file order) from the shards; raises
    :class:`DatasetError` unless every position ``0 .. total-1`` is in exactly one shard."""
    rows = done_rows(folder)
    seen: dict[int, int] = {}
    for row in rows:
        seen[row["position"]] = seen.get(row["position"], 0) + 1
    twice = sorted(p for p, n in seen.items() if n > 1)
    missing = sorted(set(range(total)) - set(seen))
    if twice or missing:
        raise DatasetError(f"the shards in {folder} hold rows {twice[:10]} more than once and miss rows "
                           f"{missing[:10]}: the folder was changed by hand; start again with a new --out")
    rows.sort(key=lambda r: r["position"])
    fd, tmp = tempfile.mkstemp(prefix=".index.", suffix=".tmp", dir=folder)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    os.replace(tmp, folder / INDEX)
    return rows


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 20 else text[:17] + "…"


def check_manifest(folder: Path, manifest: dict[str, Any]) -> None:
    """Write the run's manifest (data digest, options), or check that a resumed folder was made by the same
    run: another data file or other options would mix two runs' rows (:class:`DatasetError`)."""
    path = folder / MANIFEST
    if path.exists():
        try:
            old = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise DatasetError(f"{path} cannot be read ({exc}): use a new --out folder") from exc
        if old != manifest:
            diff = sorted(k for k in set(old) | set(manifest) if old.get(k) != manifest.get(k))
            said = ", ".join(f"{k} ({_short(old.get(k))} there, {_short(manifest.get(k))} now)" for k in diff)
            raise DatasetError(f"{folder} holds a run with other {said}: resume it with the same data, model "
                               "weights and options (--composite, --target, --max-length), or give a new --out folder")
        return
    fd, tmp = tempfile.mkstemp(prefix=".run.", suffix=".tmp", dir=folder)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=1, sort_keys=True)
    os.replace(tmp, path)
