"""Ground-truth evaluation: small models trained here on tasks whose evidence is planted, scored against masks.

    from lxt_fx.evaluate import groundtruth as gt
    gt.tasks()                                   # the task names, one (or more) per family
    model, task = gt.load("recall-llama")        # the shipped trained weights
    sample = task.sample(64, seed=1)             # inputs, labels, masks shaped like the relevance maps
    maps = task.explain(model, sample)           # AttnLRP relevance per modality
    gt.score(maps, sample.mask)                  # {"mass", "rank", "pointing"} per row

Each task's evidence is verified on its model (:func:`verify_evidence`): removing the ground truth changes
the prediction almost always, removing an equally large random set outside it almost never.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from .methods import METHODS, deletion_abpc, methods_for, run_method, run_methods
from .scores import MaskShapeError, mass_accuracy, pointing_game, rank_accuracy, score
from .task import WEIGHTS, Sample, Task
from .verify import Evidence, verify_evidence

_TASKS: dict[str, Callable[[], Task]] = {}


class UnknownTaskError(KeyError):
    """A task name that is not registered; the message lists the registered ones."""


class MissingWeightsError(FileNotFoundError):
    """A task whose trained weights are not shipped; ``make groundtruth-models`` builds them."""


def register(name: str, factory: Callable[[], Task]) -> None:
    """Register a task factory under ``name``."""
    _TASKS[name] = factory


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


__all__ = ["METHODS", "WEIGHTS", "Evidence", "MaskShapeError", "MissingWeightsError", "Sample", "Task", "UnknownTaskError", "get", "load",
           "mass_accuracy", "pointing_game", "rank_accuracy", "register", "save", "score", "tasks"]
__all__ += ["deletion_abpc", "methods_for", "run_method", "run_methods", "verify_evidence"]
