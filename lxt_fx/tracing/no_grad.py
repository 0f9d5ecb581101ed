"""Outputs of a ``torch.no_grad()`` region that are its own inputs, read from the input instead.

``torch.export`` keeps a ``torch.no_grad()`` block (a ``@torch.no_grad()`` method: DeepSeek-V3.2-style sparse
attention indexers) as one higher-order op, ``wrap_with_set_grad_enabled(False, submodule, *operands)``, and
every tensor the block hands back as one of its outputs. A tensor the block only *passes through* —
``hidden.to(dtype)`` to the dtype it already has, which returns ``hidden`` itself — is such an output too, and
when the model later reads that same tensor object outside the block (Dots3-Note's gate ``g_proj(hidden)``
after its indexer read ``hidden.to(weights_proj.weight.dtype)``), the graph records the read as one of the
region's outputs. At run time that output *is* the input tensor, with its autograd history, so the gradient
flows through the no-grad region back to the input, while the graph shows no edge there: a rule that skips
no-grad regions sees the gate as a constant, and the gradient that reaches the input through it is plain and
unbooked.

:func:`reroute_passthrough` makes the graph say what runs: every read of such an output reads the operand
itself. The values are the same tensors, so the forward and the plain gradient do not change.
"""

from __future__ import annotations

import operator
from typing import Any

import torch
from torch import fx

aten = torch.ops.aten

# Ops that return their input itself when the dtype is already the one asked for (``Tensor.to`` /
# ``type_as`` without ``copy=True`` or a memory format).
_SAME_DTYPE_NOOPS = frozenset({aten.to.dtype, aten.type_as.default})


def grad_disabled_region(node: fx.Node) -> bool:
    """Whether ``node`` is a ``torch.no_grad()`` block kept by the exporter as ``wrap_with_set_grad_enabled``."""
    return (node.op == "call_function" and getattr(node.target, "__name__", "") == "wrap_with_set_grad_enabled"
            and len(node.args) >= 2 and node.args[0] is False)


def _dtype(node: Any) -> torch.dtype | None:
    value = node.meta.get("val") if isinstance(node, fx.Node) else None
    return value.dtype if isinstance(value, torch.Tensor) else None


def _returns_input(node: fx.Node) -> bool:
    """``node`` returns its first argument itself: ``x.to(dtype)`` / ``x.type_as(y)`` where ``x`` already has
    that dtype, with no copy or memory format asked for."""
    if node.op != "call_function" or node.target not in _SAME_DTYPE_NOOPS or not node.args:
        return False
    if node.kwargs.get("copy") or node.kwargs.get("memory_format") is not None or len(node.args) > 2:
        return False
    source = _dtype(node.args[0])
    return source is not None and source == _dtype(node)


def passed_through(submodule: fx.GraphModule) -> dict[int, int]:
    """Output index → operand index, for the outputs of a region's ``submodule`` that are one of its
    operands itself (the placeholder, or a same-dtype ``to`` / ``type_as`` of it)."""
    placeholders = [n for n in submodule.graph.nodes if n.op == "placeholder"]
    output = next(n for n in submodule.graph.nodes if n.op == "output")
    results = output.args[0]
    if not isinstance(results, (tuple, list)):
        return {}
    out = {}
    for k, result in enumerate(results):
        while isinstance(result, fx.Node) and _returns_input(result):
            result = result.args[0]
        if isinstance(result, fx.Node) and result.op == "placeholder":
            out[k] = placeholders.index(result)
    return out


def reroute_passthrough(gm: fx.GraphModule) -> list[str]:
    """Let every read of a no-grad region's output that is one of its operands itself read the operand
    (:func:`passed_through`); the emptied ``getitem`` nodes are removed. Changes ``gm`` in place and returns
    the names of the rerouted reads (none: ``gm`` is untouched)."""
    rerouted = []
    for node in list(gm.graph.nodes):
        if not grad_disabled_region(node) or not isinstance(node.args[1], fx.Node):
            continue
        submodule = gm.get_submodule(str(node.args[1].target))
        through = passed_through(submodule) if isinstance(submodule, fx.GraphModule) else {}
        operands = node.args[2:]
        for user in list(node.users):
            if user.target is not operator.getitem or user.args[1] not in through:
                continue
            operand = operands[through[user.args[1]]]
            if not isinstance(operand, fx.Node):
                continue
            user.replace_all_uses_with(operand)
            gm.graph.erase_node(user)
            rerouted.append(user.name)
    if rerouted:
        gm.recompile()
    return rerouted
