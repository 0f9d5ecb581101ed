"""Registers the built-in ground-truth tasks (one module per modality)."""

from . import text, vision  # noqa: F401
from .audio import TonesWhisper  # noqa: F401
from .vlm import ColourVLM  # noqa: F401
