"""A digest of all of a model's weights, which keys a dataset run: a resumed run with other weights (another
checkpoint of the same class, a fine-tuned copy) is refused instead of mixing two models' rows.

The digest is SHA-256 over every parameter and buffer (name, dtype, shape, bytes). It is computed once per
model and cached in the process, keyed by the tensors' identities and versions (an in-place change of a
weight computes it anew). For a model freshly loaded from a local checkpoint folder (the CLI), it is also
cached on disk in the lxt-fx cache folder, keyed by the folder's weight files (names, sizes, modification
times) and the dtypes loaded, so a resumed run does not read every weight again."""

from __future__ import annotations

import hashlib
import json
import os
import weakref
from pathlib import Path

import torch
from torch import nn

from ..tracing import disk_cache

_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".gguf")
_MEMO: weakref.WeakKeyDictionary[nn.Module, tuple[tuple, str]] = weakref.WeakKeyDictionary()


def _tensors(model: nn.Module) -> list[tuple[str, torch.Tensor]]:
    params = list(model.named_parameters(remove_duplicate=False))
    buffers = list(model.named_buffers(remove_duplicate=False))
    return sorted(params + buffers, key=lambda nt: nt[0])


def _identity(tensors: list[tuple[str, torch.Tensor]]) -> tuple:
    return tuple((name, id(t), t._version, t.data_ptr() if not t.is_meta else -1, t.dtype, tuple(t.shape))
                 for name, t in tensors)


def _hash(tensors: list[tuple[str, torch.Tensor]]) -> str:
    digest = hashlib.sha256()
    for name, t in tensors:
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}\n".encode())
        if t.is_meta:  # offloaded: no values in memory (named only)
            digest.update(b"meta\n")
            continue
        raw = t.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8)
        digest.update(raw.numpy().tobytes())
    return digest.hexdigest()


def _checkpoint_key(folder: Path, tensors: list[tuple[str, torch.Tensor]]) -> str | None:
    try:
        files = sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in folder.iterdir()
                       if p.is_file() and p.name.endswith(_WEIGHT_SUFFIXES))
    except OSError:
        return None
    if not files:
        return None
    dtypes = sorted({str(t.dtype) for _, t in tensors})
    return hashlib.sha256(json.dumps([str(folder.resolve()), files, dtypes]).encode()).hexdigest()


def weights_digest(model: nn.Module, checkpoint: str | os.PathLike[str] | None = None) -> str:
    """SHA-256 of all of ``model``'s parameters and buffers (see the module doc). ``checkpoint``: the local
    folder the model was just loaded from, unchanged since, whose digest is then cached on disk."""
    tensors = _tensors(model)
    identity = _identity(tensors)
    memo = _MEMO.get(model)
    value = memo[1] if memo is not None and memo[0] == identity else None
    folder = Path(checkpoint) if checkpoint is not None and os.path.isdir(checkpoint) else None
    cache = disk_cache.cache_dir()
    key = _checkpoint_key(folder, tensors) if folder is not None and cache is not None else None
    stored = cache / f"weights-{key}.json" if key is not None and cache is not None else None
    if value is None and stored is not None and stored.is_file():
        try:
            value = json.loads(stored.read_text(encoding="utf-8")).get("weights_sha256")
        except (OSError, ValueError):
            value = None
    if not isinstance(value, str):
        value = _hash(tensors)
    if stored is not None and not stored.is_file():
        try:
            stored.parent.mkdir(parents=True, exist_ok=True)
            tmp = stored.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps({"weights_sha256": value}), encoding="utf-8")
            os.replace(tmp, stored)
        except OSError:
            pass  # the cache is an optimisation: without it the digest is computed again next time
    _MEMO[model] = (identity, value)
    return value
