"""Registers the built-in ground-truth tasks (one module per modality)."""

from . import vision  # noqa: F401
