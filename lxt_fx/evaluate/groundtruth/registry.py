"""The registry of ground-truth tasks: each task module registers its factory on import (:func:`register`)."""

from __future__ import annotations

from collections.abc import Callable

from .task import Task

_TASKS: dict[str, Callable[[], Task]] = {}


class UnknownTaskError(KeyError):
    """A task name that is not registered; the message lists the registered ones."""


def register(name: str, factory: Callable[[], Task]) -> None:
    """Register a task factory under ``name``."""
    _TASKS[name] = factory
