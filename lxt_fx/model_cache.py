"""Built-in models from a verified folder on disk after the first load: no GGUF parsing, no dequantization.

Where: ``<capture cache folder>/models/<name>-<digest>/`` — the folder of :func:`lxt_fx.tracing.disk_cache.cache_dir`
(``$LXT_FX_CACHE``, else ``~/.cache/lxt-fx``; ``off``, ``0`` or empty turns both caches off and every load
builds the model afresh). One folder per built-in name, dtype and source: the digest is the SHA-256 of the folder
format and the key (the name, the dtype, the installed versions of the model's packages and of torch, transformers, gguf,
tokenizers and lxt-fx, and the size and modification time of every file of the model's packages). A folder
holds the weights as the first load built them (``model.safetensors``, e.g. SmolLM2's dequantized GGUF; a tied
tensor once, under the name ``from_pretrained`` reads it by), the
config without the GGUF loader's ``quantization_config`` (the weights in it are plain tensors), the generation
config, the tokenizer's files, and ``manifest.json``: the key and every other file's size and SHA-256.

A folder is trusted only when its manifest names the format, holds this key, lists exactly the files in the
folder, and every file has the listed size and SHA-256 (checked on every load). Anything else — a changed
byte, a missing file, a file that is not in the manifest, another model's manifest — gives a
:class:`ModelCacheWarning` naming the folder and what was wrong, and the model is built afresh and the folder
rewritten. Folders are written whole under a temporary name and renamed, so concurrent processes never read a
half-written one. On the first load the model returned is the one read back from the new folder, so the
first and every later process hold the same model (and share one capture in the capture cache).
"""

from __future__ import annotations

import copy
import hashlib
import json
import shutil
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

MAGIC = "lxt-fx model"
FORMAT = 2  # 2: a tied tensor is stored under the tie's source name (weights())
MANIFEST = "manifest.json"
WEIGHTS = "model.safetensors"
_CHUNK = 1 << 22


class ModelCacheWarning(UserWarning):
    """A model cache folder was ignored (tampered, foreign, incomplete) or could not be written; the model is
    built afresh instead. The message names the folder and what was wrong."""


def _warn(message: str) -> None:
    warnings.warn(message, ModelCacheWarning, stacklevel=3)


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def file_sha256(path: Path) -> str:
    """The SHA-256 of the file ``path``, read in 4 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def models_dir() -> Path | None:
    """``<capture cache folder>/models``, or None when ``$LXT_FX_CACHE`` turns the caches off."""
    from .tracing.disk_cache import cache_dir

    directory = cache_dir()
    return None if directory is None else directory / "models"


def folder_for(directory: Path, name: str, key: dict[str, Any]) -> Path:
    """The folder of the built-in model ``name`` under ``key`` in ``directory``: ``<name>-<sha256 of the key and
    the folder format>`` (a folder of an older format is another folder: rebuilt once, the old one removed)."""
    return directory / f"{name}-{_sha(json.dumps({'format': FORMAT, 'key': key}, sort_keys=True))[:32]}"


def problem(folder: Path, key: dict[str, Any]) -> str | None:
    """Why ``folder`` cannot be trusted as the cached model of ``key`` (None when it can): see the module
    docstring for what is checked."""
    reason, listed = _listing_problem(folder, key)
    return reason if reason is not None else _checksum_problem(folder, listed)


def _listing_problem(folder: Path, key: dict[str, Any]) -> tuple[str | None, dict[str, Any]]:
    """The quick checks (manifest, key, the set of files, their sizes): (why not, the manifest's files)."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return f"it has no {MANIFEST} (a foreign or half-written folder)", {}
    except (OSError, ValueError) as exc:
        return f"its {MANIFEST} cannot be read ({exc})", {}
    if not isinstance(manifest, dict) or manifest.get("magic") != MAGIC or manifest.get("format") != FORMAT:
        return f"its {MANIFEST} is not an lxt-fx model manifest of format {FORMAT}", {}
    if manifest.get("key") != json.loads(json.dumps(key)):
        return "its manifest was written for another model, dtype or package version (foreign)", {}
    listed = manifest.get("files")
    if not isinstance(listed, dict) or not all(isinstance(e, dict) for e in listed.values()):
        return f"its {MANIFEST} lists no files", {}
    present = {p.name for p in folder.iterdir()} - {MANIFEST}
    extra = sorted(present - set(listed))
    if extra:
        return f"it holds {extra[0]!r}, a file its manifest does not list (foreign)", {}
    for name, entry in sorted(listed.items()):
        if name not in present:
            return f"{name!r} is missing", {}
        if (folder / name).stat().st_size != entry.get("size"):
            return f"{name!r} has another size than its manifest says (tampered or truncated)", {}
    return None, listed


def _checksum_problem(folder: Path, listed: dict[str, Any]) -> str | None:
    for name, entry in sorted(listed.items()):
        if file_sha256(folder / name) != entry.get("sha256"):
            return f"{name!r} does not match its SHA-256 in the manifest (tampered)"
    return None


def _restore_verified(folder: Path, listed: dict[str, Any],
                      restore: Callable[[Path], tuple[nn.Module, Any]]) -> tuple[str | None, Any]:
    """``(why not trusted, restore(folder))``: the checksums are computed in a thread while ``restore`` reads
    the files (hashlib and file reads release the GIL); a result whose checksums fail is dropped."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=1) as pool:
        checked = pool.submit(_checksum_problem, folder, listed)
        try:
            result, error = restore(folder), None
        except Exception as exc:  # noqa: BLE001 - a tampered file may fail to parse: the checksum says why
            result, error = None, exc
        reason = checked.result()
    if reason is None and error is not None:
        raise error
    return reason, result


def write(model: nn.Module, tokenizer: Any, folder: Path) -> None:
    """The files of ``model`` and ``tokenizer`` in the empty ``folder``: weights (safetensors, tied tensors
    once, under the name transformers loads them by: :func:`weights`), config (without
    ``quantization_config``: the weights are plain tensors), generation config and the tokenizer's own files."""
    from safetensors.torch import save_file

    config = copy.deepcopy(model.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.save_pretrained(folder)
    generation = getattr(model, "generation_config", None)
    if generation is not None and getattr(model, "can_generate", lambda: False)():
        generation.save_pretrained(folder)
    save_file(weights(model), str(folder / WEIGHTS), metadata={"format": "pt"})
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)


def weights(model: nn.Module) -> dict[str, Any]:
    """``model``'s state dict with each tied tensor once, under the name ``from_pretrained`` reads it by (the
    tie's source, e.g. ``model.embed_tokens.weight``, not ``lm_head.weight``: a file holding only the tied
    name makes ``from_pretrained`` initialize the source at random before tying it, a wasted pass over the
    embedding on every load); transformers' own rule (``save_pretrained``'s) picks the name."""
    from transformers.modeling_utils import remove_tied_weights_from_state_dict

    state = model.state_dict()
    if hasattr(model, "all_tied_weights_keys"):  # a transformers model
        state = remove_tied_weights_from_state_dict(state, model)
    return {name: t.contiguous() for name, t in state.items()}


def _manifest(folder: Path, key: dict[str, Any]) -> dict[str, Any]:
    files = {p.name: {"size": p.stat().st_size, "sha256": file_sha256(p)} for p in sorted(folder.iterdir())}
    return {"magic": MAGIC, "format": FORMAT, "key": key, "files": files}


def store(model: nn.Module, tokenizer: Any, folder: Path, key: dict[str, Any]) -> bool:
    """Write ``folder`` (see :func:`write`) with its manifest, whole under a temporary name then renamed, and
    remove the folders of older keys of the same model; False (with a warning) when it cannot be written."""
    parent = folder.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=parent))
    except OSError as exc:
        _warn(f"model cache folder {parent} is not writable ({exc.strerror or exc}); set LXT_FX_CACHE to a "
              "writable folder, or LXT_FX_CACHE=off")
        return False
    try:
        write(model, tokenizer, tmp)
        (tmp / MANIFEST).write_text(json.dumps(_manifest(tmp, key), indent=1), encoding="utf-8")
        if folder.exists() and problem(folder, key) is None:  # another process stored it meanwhile
            shutil.rmtree(tmp, ignore_errors=True)
            return True
        if folder.exists():  # an untrusted folder: moved aside first, so the rename below is atomic
            aside = Path(tempfile.mkdtemp(prefix=f".{folder.name}.old.", dir=parent))
            folder.rename(aside / folder.name)
            shutil.rmtree(aside, ignore_errors=True)
        tmp.rename(folder)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if folder.is_dir() and problem(folder, key) is None:  # another process wrote it first
            return True
        _warn(f"model not stored in the cache folder {parent} ({exc.strerror or exc}); it is built afresh next "
              "time")
        return False
    prefix = folder.name.rsplit("-", 1)[0] + "-"
    for old in parent.glob(f"{prefix}*"):
        if old != folder and old.is_dir() and not old.name.startswith("."):
            shutil.rmtree(old, ignore_errors=True)
    return True


def load(name: str, key: dict[str, Any], build: Callable[[], tuple[nn.Module, Any]],
         restore: Callable[[Path], tuple[nn.Module, Any]]) -> tuple[nn.Module, Any]:
    """``restore(folder)`` of the cached built-in model ``name`` when its folder for ``key`` is trusted;
    else ``build()``, stored and read back (a folder that cannot be trusted gives a
    :class:`ModelCacheWarning` first). With the cache off, or when storing fails, ``build()`` itself."""
    directory = models_dir()
    if directory is None:
        return build()
    folder = folder_for(directory, name, key)
    if folder.is_dir():
        reason, listed = _listing_problem(folder, key)
        if reason is None:
            reason, result = _restore_verified(folder, listed, restore)
            if reason is None:
                return result
        _warn(f"model cache folder {folder} ignored: {reason}; building {name!r} afresh")
    model, tokenizer = build()
    if not store(model, tokenizer, folder, key):
        return model, tokenizer
    del model
    return restore(folder)


def versions(*dists: str) -> dict[str, str]:
    """The installed version of each distribution in ``dists`` (``"not installed"`` when absent)."""
    from importlib import metadata

    found = {}
    for dist in dists:
        try:
            found[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            found[dist] = "not installed"
    return found


def package_files(folders: list[Path]) -> list[list[Any]]:
    """``[path, size, mtime_ns]`` of every file (no bytecode) under ``folders``: a reinstalled or edited
    model package changes the key."""
    rows = []
    for top in folders:
        for path in sorted(top.rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts:
                st = path.stat()
                rows.append([str(path), st.st_size, st.st_mtime_ns])
    return rows
