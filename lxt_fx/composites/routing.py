"""Structural pattern of an MoE router's top-k renormalization, whatever its module is called.

The routing weights of a top-k MoE router are often renormalized to sum to one over the chosen experts,

    ŵ = w / (Σ_k w [+ ε])        w = topk(p).values,  gather(p, topk(…).indices)  or  softmax(topk(p).values)

(Mixtral, Qwen3-MoE with ``norm_topk_prob``, OLMoE, DeepSeek-V3's ``+ 1e-20``, HunYuan-MoE's ``…Gate``,
Doge's softmax over the chosen scores). :func:`renormalizes_topk` matches that division by its shape in the
graph, not by a module name: a ``div``/``div_`` whose divisor is the ``sum`` of its own numerator (through
added constants, clamps, casts and views) and whose numerator comes, within a few steps, from a ``topk``.
The rule it selects is :class:`lxt_fx.rules.Renormalize` (see there for why).

The same division of mixing weights that are not chosen by a top-k — a softmax's or sigmoid's output, or an
earlier such division — is :func:`renormalizes_weights`: the alternating row and column steps of a
Sinkhorn–Knopp normalization (a hyper-connection's doubly stochastic stream-mixing matrix).
"""

from __future__ import annotations

import operator
from collections.abc import Callable

from torch import fx
from torch._ops import ops as _ops

from ..ops import packet

aten = _ops.aten

_DIVISIONS = frozenset({aten.div, aten.div_})
# Steps that leave a tensor's values as they are (up to dtype or layout): the same tensor for matching.
_SAME_VALUES = frozenset({aten.to, aten._to_copy, aten.clone, aten.alias, aten.contiguous, aten.lift_fresh_copy,
                          aten.type_as})
# Steps between Σw and the divisor that only guard it: ``+ ε``, a clamp, a cast, a view or broadcast.
_GUARDS = frozenset({aten.add, aten.add_, aten.clamp, aten.clamp_min, aten.clamp_, aten.clamp_min_,
                     aten.unsqueeze, aten.view, aten._unsafe_view, aten.reshape, aten.expand}) | _SAME_VALUES
# Steps from a topk to the routing weights: its values (getitem), a gather/index by its indices, a softmax
# over the chosen scores, casts and views.
_FROM_TOPK = frozenset({aten.gather, aten.index, aten.index_select, aten.take_along_dim, aten.softmax,
                        aten._softmax, aten._safe_softmax, aten.sigmoid, aten.unsqueeze, aten.squeeze,
                        aten.view, aten._unsafe_view, aten.reshape, aten.mul}) | _SAME_VALUES


def _origin(node: object) -> object:
    """``node`` without the value-preserving steps (casts, copies) that precede it."""
    while isinstance(node, fx.Node) and node.op == "call_function" and packet(node.target) in _SAME_VALUES:
        node = node.args[0]
    return node


def _only_first_is_node(node: fx.Node) -> bool:
    """Every argument after the first is a constant (not a graph value): ``x + 1e-20``, ``clamp(x, min=…)``."""
    rest = list(node.args[1:]) + list(node.kwargs.values())
    return not any(isinstance(a, fx.Node) for a in rest)


def _summed(divisor: object, depth: int = 6) -> fx.Node | None:
    """The tensor that ``divisor`` sums (``Σ x`` through guards such as ``+ ε``), else None."""
    node = divisor
    for _ in range(depth):
        if not isinstance(node, fx.Node) or node.op != "call_function":
            return None
        p = packet(node.target)
        if p is aten.sum:
            return node.args[0] if isinstance(node.args[0], fx.Node) else None
        if p not in _GUARDS or not _only_first_is_node(node):
            return None
        node = node.args[0]
    return None


def _from_topk(node: object, depth: int = 5) -> bool:
    """``node`` is made from a ``topk`` (its values or indices) within ``depth`` steps of ``_FROM_TOPK``."""
    frontier = [node]
    for _ in range(depth):
        following = []
        for current in frontier:
            if not isinstance(current, fx.Node) or current.op != "call_function":
                continue
            if current.target is operator.getitem:
                source = current.args[0]
                if isinstance(source, fx.Node) and source.op == "call_function" and packet(source.target) is aten.topk:
                    return True
                continue
            if packet(current.target) in _FROM_TOPK:
                following.extend(current.all_input_nodes)
        frontier = following
    return False


def _divides_by_own_sum(node: fx.Node, numerator_is: Callable[[fx.Node], bool]) -> bool:
    """``node`` is ``w / (Σ w [+ ε])``, the divisor a sum of the numerator itself, and ``numerator_is(w)``."""
    if node.op != "call_function" or packet(node.target) not in _DIVISIONS or len(node.args) < 2:
        return False
    numerator, divisor = node.args[0], node.args[1]
    if not isinstance(numerator, fx.Node):
        return False
    summed = _summed(divisor)
    return summed is not None and _origin(summed) is _origin(numerator) and numerator_is(numerator)


def renormalizes_topk(node: fx.Node) -> bool:
    """``node`` is ``w / (Σ w [+ ε])`` with ``w`` from a ``topk``: an MoE router's renormalization of its
    chosen routing weights (see the module docstring). Matched by graph structure only."""
    return _divides_by_own_sum(node, _from_topk)


_SOFTMAXES = frozenset({aten.softmax, aten._softmax, aten._safe_softmax})


def _reaches_topk(node: fx.Node, depth: int = 4) -> bool:
    """``node``'s value is the input of a ``topk``, through at most ``depth`` value-preserving steps."""
    frontier = [node]
    for _ in range(depth):
        following = []
        for current in frontier:
            for user in current.users:
                if user.op != "call_function" or not user.args or user.args[0] is not current:
                    continue
                p = packet(user.target)
                if p is aten.topk:
                    return True
                if p in _SAME_VALUES:
                    following.append(user)
        frontier = following
    return False


def routes_topk(node: fx.Node) -> bool:
    """``node`` is an MoE router's softmax: a ``softmax`` whose probabilities are the input of a ``topk``
    (through casts and copies) — ``topk(softmax(gate(x)), k)`` as in Mixtral, Qwen2/3-MoE and OLMoE. An
    attention softmax (whose output multiplies the values) does not match. Matched by graph structure only."""
    if node.op != "call_function" or packet(node.target) not in _SOFTMAXES:
        return False
    return _reaches_topk(node)


# Steps from a weight-making op to the weights a renormalization divides: ``+ ε``, casts, views.
_WEIGHT_STEPS = frozenset({aten.add, aten.add_, aten.unsqueeze, aten.view, aten._unsafe_view, aten.reshape,
                           aten.clamp, aten.clamp_min}) | _SAME_VALUES
# Ops whose output is already a set of non-negative mixing weights (a probability or a gate).
_WEIGHT_MAKERS = frozenset({aten.softmax, aten._softmax, aten._safe_softmax, aten.sigmoid})


def _from_weights(node: object, depth: int = 6) -> bool:
    """``node`` is, within ``depth`` guard steps (``+ ε``, casts, views), the output of a softmax or a sigmoid
    or of an earlier renormalization of such weights (:func:`renormalizes_weights`)."""
    for _ in range(depth):
        if not isinstance(node, fx.Node) or node.op != "call_function":
            return False
        p = packet(node.target)
        if p in _WEIGHT_MAKERS or (p in _DIVISIONS and renormalizes_weights(node)):
            return True
        if p not in _WEIGHT_STEPS or not _only_first_is_node(node):
            return False
        node = node.args[0]
    return False


def renormalizes_weights(node: fx.Node) -> bool:
    """``node`` is ``w / (Σ_d w [+ ε])`` with ``w`` a softmax's or sigmoid's output (``+ ε``) or an earlier
    such renormalization: a row or column normalization of mixing weights, as in the Sinkhorn–Knopp
    iterations that make a hyper-connection's stream-mixing matrix doubly stochastic (mHC:
    ``C ← C / (Σ_i C + ε)``, ``C ← C / (Σ_j C + ε)``, alternating). Like the top-k renormalization it is
    homogeneous of degree 0 in ``w`` up to ``ε`` (see :class:`lxt_fx.rules.Renormalize`). A plain
    ``exp(x) / Σ exp(x)`` (a hand-written softmax) does not match: its numerator is not yet a weight."""
    return _divides_by_own_sum(node, _from_weights)


def renormalizes(node: fx.Node) -> bool:
    """A renormalization the :class:`lxt_fx.rules.Renormalize` rule takes: of top-k routing weights
    (:func:`renormalizes_topk`) or of softmax / sigmoid mixing weights (:func:`renormalizes_weights`)."""
    return renormalizes_topk(node) or renormalizes_weights(node)
