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
        self.model_class, self.location, self.cause = model_class, location, cause
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


def capture_hint(exc: BaseException) -> str:
    """A suggestion that matches the kind of failure."""
    text = f"{type(exc).__name__}: {exc}"
    if "data-dependent" in text or "GuardOnDataDependent" in text or "Could not guard" in text:
        return ("the model branches in Python on a tensor's value at that line; replace the `if` with "
                "torch.where / torch.cond, or compute the condition from shapes only")
    if "Constraint" in text or "specializ" in text:
        return "a dimension was fixed by the model code; pass inputs of the size the model expects"
    if "Cache" in text:
        return "the model returns a cache object; call it with use_cache=False"
    return ("check that the model runs eagerly with these inputs; if it does, report the line above — "
            "torch.export(strict=False) could not trace it")
