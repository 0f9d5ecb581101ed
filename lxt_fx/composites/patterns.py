"""Patterns: which graph nodes a composite entry applies to.

A pattern is any of
* an ATen overload or packet (``aten.softmax.int``, ``aten.mul``), or a torch function, Tensor method or
  Python operator that lowers to one (``torch.softmax``, ``operator.matmul``, ``F.silu``);
* a module class (``LlamaRMSNorm``) — matches nodes created inside such a module;
* a string: a module-path glob when it contains ``.``, ``*``, ``?`` or ``[`` (``"model.layers.*.mlp*"``),
  else a class-name suffix matched against every module on the node's stack (``"RMSNorm"``);
* a callable predicate ``fn(node, info) -> bool`` on the fx node (``info``: :class:`NodeInfo`);
* a tuple of patterns (all must match), or ``AnyOf(...)`` (one must match).
"""

from __future__ import annotations

import fnmatch
import inspect
from collections.abc import Callable
from typing import Any

from torch import fx
from torch._ops import OpOverload, OpOverloadPacket

from ..ops import _TORCH_TO_ATEN, normalize, packet, torch_builtin_packet
from ..rewrite import NodeInfo  # defined with the pass that fills it; re-exported here
from ..tracing.meta import module_classes, module_path

Matcher = Callable[[fx.Node, NodeInfo], bool]


class AnyOf:
    """A pattern that matches when any of its parts matches."""

    def __init__(self, *patterns: Any) -> None:
        self.patterns = patterns

    def __repr__(self) -> str:
        return f"AnyOf{self.patterns!r}"


def _is_glob(text: str) -> bool:
    return any(c in text for c in ".*?[")


def compile_pattern(pattern: Any) -> Matcher:
    """Turn a pattern (see module docstring) into a predicate over ``(node, info)``."""
    if isinstance(pattern, tuple):
        parts = [compile_pattern(p) for p in pattern]
        return lambda node, info: all(p(node, info) for p in parts)
    if isinstance(pattern, AnyOf):
        parts = [compile_pattern(p) for p in pattern.patterns]
        return lambda node, info: any(p(node, info) for p in parts)
    if isinstance(pattern, OpOverload):
        return lambda node, info: node.target is pattern
    if isinstance(pattern, OpOverloadPacket) or pattern in _TORCH_TO_ATEN or torch_builtin_packet(pattern):
        packets = normalize(pattern)
        return lambda node, info: packet(node.target) in packets
    if isinstance(pattern, type):
        name = pattern.__name__
        return lambda node, info: name in module_classes(node)
    if isinstance(pattern, str):
        if _is_glob(pattern):
            return lambda node, info: fnmatch.fnmatchcase(module_path(node), pattern)
        return lambda node, info: any(c.endswith(pattern) for c in module_classes(node))
    if callable(pattern):
        takes_info = len(inspect.signature(pattern).parameters) >= 2
        return (lambda node, info: bool(pattern(node, info))) if takes_info else (
            lambda node, info: bool(pattern(node)))
    raise TypeError(f"not a pattern: {pattern!r} (use an ATen op, a torch function, a module class, "
                    "a class-name suffix, a module-path glob, a predicate, or a tuple of these)")


def describe(pattern: Any) -> str:
    """Readable text for a pattern (used in reports)."""
    if isinstance(pattern, tuple):
        return " & ".join(describe(p) for p in pattern)
    if isinstance(pattern, AnyOf):
        return " | ".join(describe(p) for p in pattern.patterns)
    if isinstance(pattern, (OpOverload, OpOverloadPacket)):
        return str(pattern) if isinstance(pattern, OpOverload) else f"aten.{pattern.__name__}"
    if isinstance(pattern, type):
        return pattern.__name__
    if isinstance(pattern, str):
        return f"path {pattern}" if _is_glob(pattern) else f"*{pattern}"
    return getattr(pattern, "__name__", repr(pattern))
