"""Stop rule: the op's output carries no relevance (CP-LRP, Ali et al. 2022; the normalizing scale of
RMSNorm/LayerNorm under the identity rule, paper Prop. 3.4).

Explicit form: ``R_x = 0`` for every input. GxI form: detach the output (stop gradient). Whatever consumes
the output then treats it as a constant, so e.g. ``x · rsqrt(mean(x²) + eps)`` with the ``rsqrt`` stopped is
linear in ``x`` and passes ``R_x = R_y`` on (the norm-identity rule).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from torch import Tensor

from .base import Relevances, Rule


def stop(op: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """GxI form: run ``op`` and detach its tensor outputs."""
    out = op(*args, **kwargs)
    if isinstance(out, (tuple, list)):
        return type(out)(o.detach() if isinstance(o, Tensor) else o for o in out)
    return out.detach() if isinstance(out, Tensor) else out


class Stop(Rule):
    """Stop relevance (and gradient) at this op."""

    name = "stop"
    stops = True

    def gxi(self, op: Any, carrying: Sequence[int]) -> tuple[Callable[..., Any], dict[str, Any]]:
        return stop, {}

    def explicit(self, op: Any, args: Sequence[Any], kwargs: dict[str, Any], out: Any, relevance: Any,
                 carrying: Sequence[int]) -> Relevances:
        return [None] * len(args)
