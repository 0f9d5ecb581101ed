"""The tasks by name: the built-in ones registered on first use, each with its shipped trained weights."""

from __future__ import annotations

from torch import nn

from .registry import _TASKS, UnknownTaskError
from .task import Task


class MissingWeightsError(FileNotFoundError):
    """A task whose trained weights are not shipped; ``make groundtruth-models`` builds them."""


def _load_builtin() -> None:
    # the built-in tasks register themselves on import
    from . import builtin  # noqa: F401


def tasks() -> list[str]:
    """The registered task names."""
    _load_builtin()
    return list(_TASKS)


def get(name: str) -> Task:
    """The task called ``name`` (no weights loaded)."""
    _load_builtin()
    if name not in _TASKS:
        raise UnknownTaskError(f"unknown ground-truth task {name!r}; registered: {', '.join(_TASKS)}")
    return _TASKS[name]()


def save(model: nn.Module, task: Task) -> None:
    """Write ``model``'s config and weights (safetensors) to the task's shipped weights folder."""
    model.save_pretrained(task.weights_dir, safe_serialization=True)


def load(name: str) -> tuple[nn.Module, Task]:
    """``(model, task)``: the task and its shipped trained model (eval mode)."""
    task = get(name)
    folder = task.weights_dir
    if not (folder / "model.safetensors").is_file():
        raise MissingWeightsError(f"no trained weights for {name!r} in {folder}; run `make groundtruth-models`")
    model = type(task.build()).from_pretrained(folder)
    return model.eval(), task
