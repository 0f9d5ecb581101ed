"""The input constraints of a capture, kept as data so a graph read from disk checks its inputs like an export.

``torch.export`` specialises a program to what it saw: each input's dtype, every dimension either a fixed
size or a symbol (``s0``, or an expression of symbols such as ``2*s0``) with a value range, and one symbol
shared by dimensions that must be equal (``inputs_embeds.size(1) == attention_mask.size(1)``).
``ExportedProgram.module()`` checks them before every call; a graph rebuilt from the disk cache has no such
hook. :class:`InputSpec` records them from the exported program, travels in the cache file, and
:meth:`InputSpec.violation` says which input breaks them — for a fresh and a disk-loaded capture alike, so
both behave the same (:func:`lxt_fx.tracing.capture.capture` then captures again for these inputs).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

PREFIX = "tensors_"


@dataclass(frozen=True)
class InputSpec:
    """Per input name: dtype name and dims (an int for a fixed size, a string for a symbolic expression);
    per symbol: the inclusive range ``[low, high]`` (``high`` None: unbounded)."""

    inputs: dict[str, tuple[str, tuple[int | str, ...]]]
    ranges: dict[str, tuple[int, int | None]]

    def to_json(self) -> dict[str, Any]:
        """Plain JSON data (for the disk cache)."""
        return {"inputs": {k: [d, list(dims)] for k, (d, dims) in self.inputs.items()},
                "ranges": {k: list(v) for k, v in self.ranges.items()}}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> InputSpec:
        """The spec :meth:`to_json` wrote; raises ``TypeError`` / ``ValueError`` on malformed data."""
        inputs = {str(k): (str(d), tuple(x if isinstance(x, int) else str(x) for x in dims))
                  for k, (d, dims) in data["inputs"].items()}
        ranges = {str(k): (int(lo), None if hi is None else int(hi)) for k, (lo, hi) in data["ranges"].items()}
        return cls(inputs, ranges)

    def violation(self, tensors: Mapping[str, Tensor]) -> str | None:
        """None when ``tensors`` meet every constraint, else what the first broken one is: a missing input, a
        dtype, a rank, a fixed size, a size out of its symbol's range, or two sizes that must be equal."""
        bound: dict[str, int] = {}
        where: dict[str, str] = {}
        later: list[tuple[str, int, str, int]] = []
        for name, (dtype, dims) in self.inputs.items():
            t = tensors.get(name)
            if t is None:
                return f"input {name!r} is missing"
            if str(t.dtype).removeprefix("torch.") != dtype:
                return f"{name} has dtype {t.dtype}, the capture expects {dtype}"
            if t.dim() != len(dims):
                return f"{name} has {t.dim()} dimensions, the capture expects {len(dims)}"
            for i, (want, got) in enumerate(zip(dims, t.shape, strict=True)):
                if isinstance(want, int):
                    if got != want:
                        return f"{name}.size({i}) is {got}, the capture fixed it at {want}"
                elif want in self.ranges:  # a plain symbol: bind it, or compare with its first binding
                    if bound.setdefault(want, got) != got:
                        return f"{name}.size({i}) is {got}, but must equal {where[want]} ({bound[want]})"
                    where.setdefault(want, f"{name}.size({i})")
                else:
                    later.append((name, i, want, got))
        for sym, value in bound.items():
            low, high = self.ranges[sym]
            if value < low or (high is not None and value > high):
                return (f"{where[sym]} is {value}, outside the range [{low}, {'∞' if high is None else high}] the "
                        "capture was specialised to")
        if later:
            import sympy  # only for sizes given as expressions (~0.4 s to import)
        for name, i, expr, got in later:
            try:
                want = int(sympy.sympify(expr).subs(bound))
            except (TypeError, ValueError, sympy.SympifyError):
                return f"{name}.size({i}) must be {expr}, which the other inputs do not determine"
            if got != want:
                return f"{name}.size({i}) is {got}, the capture requires {expr} = {want}"
        return None


def _bound(value: Any) -> int | None:
    """An integer bound, None for an infinite one (sympy's ``oo`` / torch's ``int_oo``)."""
    if getattr(value, "is_finite", True) is False:
        return None
    try:
        return int(value)
    except (TypeError, ValueError, OverflowError, AttributeError):
        return None


def spec_of(program: torch.export.ExportedProgram) -> InputSpec:
    """The constraints ``program.module()`` checks on its user inputs (placeholders ``tensors_<name>``)."""
    users = set(program.graph_signature.user_inputs)
    inputs: dict[str, tuple[str, tuple[int | str, ...]]] = {}
    for node in program.graph.nodes:
        val = node.meta.get("val")
        if node.op != "placeholder" or node.name not in users or not isinstance(val, Tensor):
            continue
        dims = tuple(int(s) if isinstance(s, int) else str(s.node.expr) for s in val.shape)
        inputs[node.name.removeprefix(PREFIX)] = (str(val.dtype).removeprefix("torch."), dims)
    ranges: dict[str, tuple[int, int | None]] = {}
    for sym, vr in program.range_constraints.items():
        lower = _bound(vr.lower)
        # export reasons about a dynamic size as ≥ 2 (it specialises 0 and 1), and the capture's example
        # repeats a batch or sequence of 1 to 2 to keep that dim symbolic: the graph serves a size of 1 as the
        # eager model does (every single-prompt explain runs so), so a lower bound of 2 admits 1
        lower = 1 if lower == 2 else lower
        ranges[str(sym)] = (lower if lower is not None else 0, _bound(vr.upper))
    return InputSpec(inputs, ranges)
