"""Errors raised while capturing a model."""

from __future__ import annotations

import os
import sysconfig
import traceback

import torch

_TORCH_DIR = os.path.dirname(torch.__file__)
_OUR_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_STDLIB = sysconfig.get_paths()["stdlib"]


class LXTError(Exception):
    """Base class of every error lxt-fx raises on purpose."""


class CaptureError(LXTError):
    """The model could not be captured into a graph (``torch.export``, non-strict)."""

    def __init__(self, model_class: str, location: str, cause: BaseException, hint: str) -> None:
        self.model_class, self.location, self.cause, self.hint = model_class, location, cause, hint
        first = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
        super().__init__(
            f"could not capture {model_class}: {type(cause).__name__}: {first}\n"
            f"  first failing source line: {location}\n  what to try: {hint}")


def failing_location(exc: BaseException) -> str:
    """``file:line`` of the innermost frame of the traceback that is model code (not torch, not lxt-fx)."""
    frames = traceback.extract_tb(exc.__traceback__)
    chosen = None
    for frame in frames:
        path = os.path.abspath(frame.filename)
        if path.startswith((_TORCH_DIR, _OUR_DIR, _STDLIB)) or frame.filename.startswith("<"):
            continue
        chosen = frame
    if chosen is None:
        return "unknown (no model source frame in the traceback)"
    return f"{chosen.filename}:{chosen.lineno} ({chosen.line})"


def _data_dependent(text: str) -> bool:
    return "data-dependent" in text or "GuardOnDataDependent" in text or "Could not guard" in text


def _reads_token_ids(exc: BaseException, location: str) -> bool:
    """The forward needed ``input_ids`` although it was given ``inputs_embeds`` (lxt_fx passes no ids): a
    None where the ids should be, at a line that reads them, or the model's own complaint about them."""
    text = str(exc)
    if "input_ids" in text and any(w in text for w in ("required", "must be provided", "must specify")):
        return True
    none = "NoneType" in text or "not NoneType" in text
    return none and ("input_ids" in location or "embedding(): argument 'indices'" in text)


def _eager_experts(model: object) -> bool:
    """A transformers mixture-of-experts model running its eager experts loop, with a switch to a
    traceable implementation (``set_experts_implementation``)."""
    config = getattr(model, "config", None)
    return getattr(config, "_experts_implementation", None) == "eager" and hasattr(
        model, "set_experts_implementation")


def capture_hint(exc: BaseException, model: object = None, location: str = "") -> str:
    """A suggestion that matches the kind of failure; ``model`` and ``location`` (the failing model source
    line, :func:`failing_location`) make it specific where a known cause has a known remedy (or none)."""
    text = f"{type(exc).__name__}: {exc}"
    if "exactly one of" in text and "input_ids" in text:
        return ("the model builds token ids itself although it was given embeddings (Florence-2 makes "
                "`decoder_input_ids` when it gets `decoder_inputs_embeds`), and the sub-module it calls refuses "
                "both: no input or config change avoids it (an upstream bug in the model's forward)")
    if _reads_token_ids(exc, location):
        return ("the forward reads `input_ids` at that line even when it is given `inputs_embeds` (hashed or "
                "per-token routing, byte patching, an id-only embedding path); lxt_fx feeds embeddings so that "
                "the relevance lands on them, so no input or config change captures this model: it needs a "
                "forward whose embeddings path does not touch the token ids (an upstream change)")
    if _data_dependent(text):
        config = getattr(model, "config", None)
        if model is not None and _eager_experts(model):
            return ("the mixture-of-experts layer loops over the experts that received tokens (the eager "
                    "experts implementation; their number depends on the routing): switch to the traceable "
                    "one, `model.set_experts_implementation('grouped_mm')` (or load with "
                    "`experts_implementation='grouped_mm'`) — the same outputs")
        if "expert" in location:
            return ("the mixture-of-experts layer at that line loops over the experts that received tokens "
                    "(`nonzero()`: their number depends on the routing), and this family's experts have no "
                    "`experts_implementation` switch: no input or config change captures it; the experts need "
                    "a dense or grouped form (an upstream change)")
        if getattr(config, "attention_window", None) is not None:
            fix = ("" if getattr(config, "onnx_export", False) else
                   "set `model.config.onnx_export = True` (its chunks then come from `unfold`, no value-dependent "
                   "view), but ")
            return (f"Longformer-style sliding-window attention is value-dependent: {fix}it also decides from "
                    "the mask's values whether any token has global attention (`.item()`, then "
                    "`if is_global_attn:`), which torch.export cannot trace with any mask: no input or config "
                    "change captures it (an upstream change: a `torch.cond` there)")
        return ("the model branches in Python on a tensor's value at that line; replace the `if` with "
                "torch.where / torch.cond, or compute the condition from shapes only")
    if "Constraint" in text or "specializ" in text:
        return "a dimension was fixed by the model code; pass inputs of the size the model expects"
    if "Cache" in text:
        return "the model returns a cache object; call it with use_cache=False"
    return ("check that the model runs eagerly with these inputs; if it does, report the line above — "
            "torch.export(strict=False) could not trace it")
