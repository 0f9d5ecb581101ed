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

import torch
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


# ---- structural patterns ------------------------------------------------------------------------------

aten = torch.ops.aten

# Ops that pass a value on unchanged in what matters for a norm: views, casts, copies.
_SAME_VALUE = frozenset({aten.view, aten._unsafe_view, aten.reshape, aten.unsqueeze, aten.squeeze, aten.expand,
                         aten.expand_as, aten.contiguous, aten.clone, aten.alias, aten.to, aten._to_copy,
                         aten.type_as, aten.view_as, aten.reshape_as})
# Ops that keep a norm a norm: a floor against division by 0 (``clamp_min(eps)``, ``+ eps``).
_GUARDS = frozenset({aten.clamp_min, aten.clamp, aten.clamp_max, aten.maximum, aten.add, aten.add_})


def _scalar(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _through(node: Any, ops: frozenset[Any], depth: int = 8) -> Any:
    """Follow ``node`` back through ops in ``ops`` (their first node argument; for a guard the argument
    that is not a scalar or constant) to the first node that is not one of them."""
    for _ in range(depth):
        if not isinstance(node, fx.Node) or node.op != "call_function" or packet(node.target) not in ops:
            return node
        nodes = [a for a in node.args if isinstance(a, fx.Node)]
        if packet(node.target) in _GUARDS and len(nodes) == 2:
            # ``a + b`` / ``maximum(a, b)``: the norm is the one computed from a reduction, not a constant
            nodes = [a for a in nodes if a.op == "call_function"] or nodes
        if not nodes:
            return node
        node = nodes[0]
    return node


def _root(node: Any) -> Any:
    return _through(node, _SAME_VALUE)


def _squared(node: Any) -> Any:
    """``x`` when ``node`` is ``x²`` (``pow(x, 2)``, ``square(x)``, ``x * x``), else None."""
    if not isinstance(node, fx.Node) or node.op != "call_function":
        return None
    p = packet(node.target)
    if p is aten.pow and len(node.args) > 1 and _scalar(node.args[1]) == 2.0:
        return node.args[0]
    if p is aten.square:
        return node.args[0]
    if p is aten.mul and len(node.args) == 2 and node.args[0] is node.args[1]:
        return node.args[0]
    return None


def _sum_of_squares(node: Any) -> Any:
    """``x`` when ``node`` is ``Σ x²`` over some dims (through ``+ eps`` / clamps), else None."""
    node = _through(_root(node), _GUARDS | _SAME_VALUE)
    if not isinstance(node, fx.Node) or node.op != "call_function" or packet(node.target) is not aten.sum:
        return None
    return _squared(_root(node.args[0]))


def l2_norm_of(node: Any) -> Any:
    """``x`` when ``node`` computes ``‖x‖₂`` over some dims (the root of ``x`` through views and casts), else
    None. Spellings: ``linalg_vector_norm(x)`` / ``norm(x, p=2)`` (``x.norm(dim=-1)``, ``F.normalize``),
    ``sqrt(Σx²)``, ``(Σx²) ** 0.5``; each optionally clamped (``clamp_min(eps)``), ``+ eps``, expanded or cast."""
    node = _through(node, _GUARDS | _SAME_VALUE)
    if not isinstance(node, fx.Node) or node.op != "call_function":
        return None
    p = packet(node.target)
    if p in (aten.linalg_vector_norm, aten.norm):
        order = node.args[1] if len(node.args) > 1 else node.kwargs.get("ord", node.kwargs.get("p", 2))
        return _root(node.args[0]) if order is None or _scalar(order) == 2.0 else None
    if p is aten.sqrt or (p is aten.pow and len(node.args) > 1 and _scalar(node.args[1]) == 0.5):
        x = _sum_of_squares(node.args[0])
        return _root(x) if x is not None else None
    return None


def l2_normalization(node: fx.Node, info: NodeInfo) -> bool:
    """``div(x, n)`` where ``n`` is the L2 norm of ``x`` itself (:func:`l2_norm_of`): ``y = x / ‖x‖₂``,
    matched from the graph's structure, whatever the model is called."""
    if packet(node.target) not in (aten.div, aten.div_) or len(node.args) < 2:
        return False
    x, n = node.args[0], node.args[1]
    return isinstance(x, fx.Node) and isinstance(n, fx.Node) and l2_norm_of(n) is _root(x)


def inverse_l2_norm(node: fx.Node, info: NodeInfo) -> bool:
    """``1/‖x‖₂`` that multiplies a relevance-carrying tensor: ``rsqrt(Σx² + eps)``, ``(Σx²) ** -0.5`` or
    ``reciprocal(‖x‖₂)`` — the ``x * (1/‖x‖)`` spelling of L2 normalisation; its scale is a constant."""
    p = packet(node.target)
    if p is aten.rsqrt or (p is aten.pow and len(node.args) > 1 and _scalar(node.args[1]) == -0.5):
        found = _sum_of_squares(node.args[0]) is not None
    elif p is aten.reciprocal:
        found = l2_norm_of(node.args[0]) is not None
    else:
        return False
    return found and _scales(node, info)


def _scales(node: fx.Node, info: NodeInfo) -> bool:
    """Whether ``node`` (through views / casts) multiplies another tensor that depends on the inputs."""
    frontier = [node]
    for _ in range(4):
        following = []
        for current in frontier:
            for user in current.users:
                if user.op != "call_function":
                    continue
                p = packet(user.target)
                if p in (aten.mul, aten.mul_) and any(a is not current and a.name in info.reachable
                                                      for a in user.all_input_nodes):
                    return True
                if p in _SAME_VALUE:
                    following.append(user)
        frontier = following
    return False
