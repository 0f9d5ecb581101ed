"""Registers the built-in ground-truth tasks (one module per modality)."""
