"""Capture: turn a model into an fx ``GraphModule`` (torch.export, non-strict), cached per signature."""

from .capture import CapturedGraph, InputConstraintError, Signature, accepts_kwarg, capture, capture_count
from .disk_cache import CaptureCacheWarning
from .errors import CaptureError, LXTError
from .meta import module_class, module_path, source_line
from .spliced import SplicedInputError

__all__ = ["CaptureCacheWarning", "CaptureError", "CapturedGraph", "InputConstraintError", "LXTError", "Signature",
           "SplicedInputError", "accepts_kwarg", "capture", "capture_count", "module_class", "module_path",
           "source_line"]
