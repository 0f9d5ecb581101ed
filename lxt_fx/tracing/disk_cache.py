"""Captures that outlive the process: the captured graph on disk, rebuilt in milliseconds against the live model.

Where: ``$LXT_FX_CACHE`` (a folder; ``off``, ``0`` or empty turns the cache off), else ``~/.cache/lxt-fx``.
One file per capture, named by the SHA-256 of its key: the model class, a digest of its config (without
``_name_or_path``), of its module tree (every submodule's path and class, every parameter's and buffer's name,
shape, dtype and kind, and ``repr(model)``, which shows constants such as ``eps``), of the source files of
every module class in the tree and of this capture code, the call :class:`~.capture.Signature` (tensor names,
dtypes and ranks, static arguments, training flag, attention implementation, device, dtype) and the
versions of torch, transformers, lxt-fx and Python. A changed key is another file: the model captures again.

What is stored is the graph as data (:mod:`.graph_codec`) — **never weights**, never example inputs: each
parameter or buffer is a reference by name, shape and dtype, bound on load to the live model's own object.
A file is trusted only when its header names the format, its payload's SHA-256 and size match the header,
the key stored inside equals this model's key, and every referenced tensor exists in the model with the
stored shape, dtype and kind; a graph is stored only when it decodes back to the same code and node
metadata. The input constraints of the export (:mod:`.guards`: dtypes, fixed sizes, size ranges, equal sizes)
are stored with it and checked on every use, as ``ExportedProgram.module()`` checks them: inputs a stored
graph does not admit are captured afresh, exactly as for an in-process capture. Anything else — a corrupt, truncated, foreign or stale file, a graph whose parts cannot be stored —
gives a :class:`CaptureCacheWarning` and a fresh capture (which then replaces the file). Files are written
whole under a temporary name and renamed, so concurrent processes (ranks) never read half a file.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import json
import os
import sys
import tempfile
import time
import warnings
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import fx, nn

from .graph_codec import CodecError, constants_bytes, constants_from, decode, encode, same_graph, still_bound
from .guards import InputSpec

ENV = "LXT_FX_CACHE"
_OFF = frozenset({"", "0", "off", "false", "no", "none"})
MAGIC = "lxt-fx capture"
FORMAT = 2  # 2: the input constraints (guards) are stored
SUFFIX = ".lxtcap"
_HERE = Path(__file__).resolve().parent


class CaptureCacheWarning(UserWarning):
    """A capture cache file was ignored (corrupt, foreign, stale) or a capture could not be stored; lxt-fx
    captures the model afresh instead. The message names the file and what was wrong."""


def cache_dir() -> Path | None:
    """The cache folder: ``$LXT_FX_CACHE``, else ``~/.cache/lxt-fx``; None when the variable turns it off."""
    value = os.environ.get(ENV)
    if value is None:
        return Path.home() / ".cache" / "lxt-fx"
    if value.strip().lower() in _OFF:
        return None
    return Path(value).expanduser()


def _sha(text: str | bytes) -> str:
    return hashlib.sha256(text.encode() if isinstance(text, str) else text).hexdigest()


@functools.lru_cache(maxsize=512)
def _file_digest(path: str, mtime_ns: int, size: int) -> str:
    with open(path, "rb") as f:
        return _sha(f.read())


def _source_digest(classes: Sequence[type]) -> str:
    files = {str(_HERE / name) for name in ("capture.py", "graph_codec.py", "disk_cache.py", "blocks.py", "stamp.py",
                                       "no_grad.py")}
    for cls in classes:
        try:
            files.add(inspect.getsourcefile(cls) or "")
        except TypeError:  # a class defined in C: its version is the package's
            continue
    digests = []
    for path in sorted(f for f in files if f):
        try:
            st = os.stat(path)
        except OSError:
            digests.append(f"{path}:missing")
            continue
        digests.append(f"{path}:{_file_digest(path, st.st_mtime_ns, st.st_size)}")
    return _sha("\n".join(digests))


def _version(dist: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def cache_key(model: nn.Module, signature: str) -> dict[str, Any]:
    """The key of ``model``'s capture for a call ``signature`` (``repr`` of the signature's key): what must be
    equal for a stored graph to be the graph a fresh export would give (see the module docstring)."""
    config = getattr(model, "config", None)
    config_text = None
    if config is not None and hasattr(config, "to_dict"):
        fields = {k: v for k, v in config.to_dict().items() if k not in ("_name_or_path", "_commit_hash")}
        fields["_attn_implementation"] = getattr(config, "_attn_implementation", None)
        config_text = json.dumps(fields, sort_keys=True, default=str)
    tree = [[path, f"{type(m).__module__}.{type(m).__qualname__}"] for path, m in
            model.named_modules(remove_duplicate=False)]
    tensors = [[name, list(t.shape), str(t.dtype), isinstance(t, nn.Parameter)] for name, t in
               (*model.named_parameters(remove_duplicate=False), *model.named_buffers(remove_duplicate=False))]
    classes = sorted({type(m) for m in model.modules()}, key=lambda c: (c.__module__, c.__qualname__))
    return {
        "model_class": f"{type(model).__module__}.{type(model).__qualname__}",
        "config": _sha(config_text) if config_text is not None else None,
        "tree": _sha(json.dumps([tree, tensors]) + repr(model)),
        "sources": _source_digest(classes),
        "signature": signature,
        "versions": {"torch": torch.__version__, "transformers": _version("transformers"),
                     "lxt-fx": _version("lxt-fx"), "python": sys.version.split()[0]},
    }


def path_for(directory: Path, key: dict[str, Any]) -> Path:
    """The file of ``key`` in ``directory``: ``<model class>-<sha256 of the key>.lxtcap``."""
    name = key["model_class"].rsplit(".", 1)[-1]
    return directory / f"{name}-{_sha(json.dumps(key, sort_keys=True))[:40]}{SUFFIX}"


@dataclass
class Stored:
    """A capture read from disk: ``build()`` gives a fresh ``GraphModule`` bound to the live model."""

    build: Callable[[], fx.GraphModule]
    output_class: type | None
    output_keys: tuple[str, ...]
    path: Path
    seconds: float
    guards: InputSpec | None = None


def _warn(message: str) -> None:
    warnings.warn(message, CaptureCacheWarning, stacklevel=4)


def _class_name(cls: type | None) -> list[str] | None:
    return None if cls is None else [cls.__module__, cls.__qualname__]


def _class_from(name: list[str] | None) -> type | None:
    """A class named in the file, looked up among the modules already imported (nothing is imported)."""
    if name is None:
        return None
    module, qualname = name
    obj: Any = sys.modules.get(module)
    for part in qualname.split("."):
        obj = getattr(obj, part, None)
    if not isinstance(obj, type):
        raise CodecError(f"output class {module}.{qualname} is not an imported class")
    return obj


def load(entry: nn.Module, key: dict[str, Any]) -> Stored | None:
    """The stored capture of ``key``, bound to ``entry`` (the capture's wrapper of the live model), or None when
    the cache is off or holds no file for it; a file that cannot be trusted gives a warning and None."""
    directory = cache_dir()
    if directory is None:
        return None
    path = path_for(directory, key)
    start = time.perf_counter()
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        _warn(f"capture cache file {path} cannot be read ({exc.strerror or exc}); capturing afresh")
        return None
    try:
        newline = raw.index(b"\n")
        header = json.loads(raw[:newline])
        payload = raw[newline + 1:]
        if not isinstance(header, dict) or header.get("magic") != MAGIC or header.get("format") != FORMAT:
            raise CodecError("not an lxt-fx capture file of format "
                             f"{FORMAT} (header {str(header)[:80]!r})")
        if header.get("key") != json.loads(json.dumps(key)):
            raise CodecError("it was written for another model, config, signature or version (the key stored "
                             "inside differs)")
        if header.get("size") != len(payload) or header.get("sha256") != _sha(payload):
            raise CodecError("its checksum does not match its content (corrupt or truncated)")
        data = json.loads(zlib.decompress(payload))
        constants = constants_from(data["constants"])
        checked = decode(data["graph"], entry, constants)  # binds and checks every referenced tensor now
        output_class = _class_from(data["output_class"])
        output_keys = tuple(str(k) for k in data["output_keys"])
        guards = InputSpec.from_json(data["guards"])
    except (CodecError, ValueError, KeyError, TypeError, IndexError, AttributeError, zlib.error) as exc:
        _warn(f"capture cache file {path} ignored: {exc}; capturing afresh")
        return None
    return Stored(_builder(data["graph"], entry, constants, checked), output_class, output_keys, path,
                  time.perf_counter() - start, guards)


def _builder(graph: dict[str, Any], entry: nn.Module, constants: dict[str, torch.Tensor],
             checked: fx.GraphModule) -> Callable[[], fx.GraphModule]:
    """``build()`` of a stored capture: a fresh ``GraphModule`` per call. The first call hands out ``checked``,
    the module :func:`load` decoded to check the file, when it still reads the model's own tensors
    (:func:`~.graph_codec.still_bound`: then it is what a new decode gives), so a capture read from disk is
    decoded once; every other call decodes afresh."""
    unused = [checked]

    def build() -> fx.GraphModule:
        if unused and still_bound(unused[0], graph, entry):
            return unused.pop()
        unused.clear()
        return decode(graph, entry, constants)

    return build


def store(entry: nn.Module, key: dict[str, Any], gm: fx.GraphModule, output_class: type | None,
          output_keys: Sequence[str], guards: InputSpec | None = None) -> Path | None:
    """Write the capture ``gm`` of ``key`` with its input constraints ``guards`` (no weights: see the module
    docstring); returns the file, or None when the cache is off or the graph cannot be stored (then with a
    warning saying why)."""
    directory = cache_dir()
    if directory is None:
        return None
    path = path_for(directory, key)
    try:
        constants: dict[str, torch.Tensor] = {}
        data = encode(gm, entry, constants)
        rebuilt = decode(json.loads(json.dumps(data)), entry, constants)
        differs = same_graph(gm, rebuilt)
        if differs is not None:
            raise CodecError(f"the graph does not decode to itself ({differs})")
        _class_from(_class_name(output_class))
        body = {"graph": data, "constants": constants_bytes(constants),
                "output_class": _class_name(output_class), "output_keys": list(output_keys),
                "guards": guards.to_json() if guards is not None else {"inputs": {}, "ranges": {}}}
        payload = zlib.compress(json.dumps(body).encode(), 1)
    except (CodecError, TypeError, ValueError) as exc:
        _warn(f"capture of {key['model_class']} not stored in the cache: {exc}")
        return None
    header = {"magic": MAGIC, "format": FORMAT, "key": key, "sha256": _sha(payload), "size": len(payload)}
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(json.dumps(header).encode() + b"\n" + payload)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError as exc:
        _warn(f"capture cache folder {directory} is not writable ({exc.strerror or exc}); set {ENV} to a "
              f"writable folder, or {ENV}=off")
        return None
    return path
