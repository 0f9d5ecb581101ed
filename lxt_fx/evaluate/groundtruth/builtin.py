"""Registers the built-in ground-truth tasks (one module per modality)."""

from . import text, vision  # noqa: F401
