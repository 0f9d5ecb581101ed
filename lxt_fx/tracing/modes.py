"""Eval semantics for every explanation: a model left in training mode (dropout on, batch statistics) is
explained as after ``model.eval()``, with a :class:`TrainingModeWarning` that says so, and every submodule's
own ``training`` flag is put back afterwards, also after an exception."""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from torch import nn

F = TypeVar("F", bound=Callable[..., Any])


class TrainingModeWarning(UserWarning):
    """The model was in training mode (``model.training``, or a submodule's): it was explained in eval mode, as
    after ``model.eval()``, and its own modes were restored afterwards."""


def _mode_matters(module: nn.Module) -> bool:
    """Whether ``module`` in training mode computes something else than in eval mode, as far as can be told: a
    dropout with p > 0, a batch norm, or a transformers module (whose forwards read ``self.training`` for their
    dropouts)."""
    if not module.training:
        return False
    if isinstance(module, nn.modules.dropout._DropoutNd):
        return module.p > 0
    return isinstance(module, nn.modules.batchnorm._BatchNorm) or type(module).__module__.startswith("transformers.")


@contextmanager
def eval_semantics(model: Any, what: str = "explained") -> Iterator[None]:
    """Run the body with ``model`` (an ``nn.Module``; anything else passes through) in eval mode; a model in
    training mode whose result that changes (dropout, batch norm, a transformers model) gets a
    :class:`TrainingModeWarning` naming it. Every submodule's ``training`` flag is restored on exit, also after
    an exception."""
    if not isinstance(model, nn.Module):
        yield
        return
    if not any(module.training for module in model.modules()):
        yield
        return
    modes = [(module, module.training) for module in model.modules()]
    training = [name or type(model).__name__ for name, module in model.named_modules() if _mode_matters(module)]
    shown = ", ".join(training[:3]) + (f" and {len(training) - 3} more" if len(training) > 3 else "")
    if training:
        warnings.warn(f"{type(model).__name__} is in training mode ({shown}: dropout and batch statistics on): it "
                      f"is {what} in eval mode, as after model.eval(), and its modes are restored afterwards; call "
                      "model.eval() first to silence this warning", TrainingModeWarning, stacklevel=4)
    model.eval()
    try:
        yield
    finally:
        for module, mode in modes:
            module.training = mode


def in_eval_mode(fn: F) -> F:
    """Decorate an entry point whose first argument (or ``model=``) is the model: it runs under
    :func:`eval_semantics`."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        model = args[0] if args else kwargs.get("model")
        with eval_semantics(model):
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]
