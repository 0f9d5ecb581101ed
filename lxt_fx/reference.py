"""The explicit-form reference: relevance propagated node by node with each rule's explicit form.

Independent of the GxI machinery: it runs the *unrewritten* captured graph, keeps every value, then walks
the graph backwards applying, per node, the explicit form of the rule the composite decided on, and the
explicit ε-rule (``R_x = x ⊙ Jᵀ(R_y / y)``, tiny ε) through every other (linear) op. It is slow and
memory-hungry, and meant for checking that the production path computes the same relevance.
"""

from __future__ import annotations

import operator
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, fx
from torch.utils import _pytree as pytree

from .ops import returns_view
from .rewrite import alias_source
from .rules.base import arg_at, epsilon_explicit
from .rules.position import per_position
from .session import Rewritten

_EPSILON = 1e-12


class _Recorder(fx.Interpreter):
    """Keeps every value; for values that an in-place op (``div_``, ``index_put_``) later overwrites, keeps
    a copy of what each consumer saw when it ran."""

    def __init__(self, gm: fx.GraphModule, dtype: torch.dtype | None = None) -> None:
        super().__init__(gm, garbage_collect_values=False)
        self.dtype = dtype
        self.mutated = {n.args[0] for n in gm.graph.nodes if n.op == "call_function" and
                        getattr(getattr(n.target, "_schema", None), "is_mutable", False) and n.args
                        and isinstance(n.args[0], fx.Node)}
        for node in list(self.mutated):  # writing a view writes its base too (``buf[..., :d].copy_(k)``)
            while (node := alias_source(node)) is not None:
                self.mutated.add(node)
        self.seen_by: dict[fx.Node, dict[fx.Node, Any]] = {}
        # nodes whose own output (or a tuple element of it) is overwritten later
        self.overwritten = {n for n in gm.graph.nodes if n in self.mutated or any(
            u.target is operator.getitem and u in self.mutated for u in n.users)}
        self.outputs_before: dict[fx.Node, Any] = {}

    def _widen(self, value: Any) -> Any:
        if self.dtype is None:
            return value
        if isinstance(value, torch.dtype) and value.is_floating_point:
            return self.dtype
        if isinstance(value, Tensor) and value.is_floating_point():
            return value.to(self.dtype)
        if isinstance(value, Tensor) and value.is_complex():
            return value.to(torch.promote_types(value.dtype, self.dtype))  # float64 → complex128
        return value

    def fetch_attr(self, target: str) -> Any:
        return self._widen(super().fetch_attr(target))

    def call_function(self, target: Any, args: tuple, kwargs: dict) -> Any:
        widen = self._widen
        return super().call_function(target, pytree.tree_map(widen, args), pytree.tree_map(widen, kwargs))

    def run_node(self, n: fx.Node) -> Any:
        watched = [a for a in n.all_input_nodes if a in self.mutated]
        if watched:
            self.seen_by[n] = {a: self.env[a].clone() for a in watched}
        out = super().run_node(n)
        if n in self.overwritten:
            self.outputs_before[n] = pytree.tree_map(lambda t: t.clone() if isinstance(t, Tensor) else t, out)
        return out

    def produced(self, node: fx.Node) -> Any:
        """The value ``node`` produced, before any later in-place op overwrote it."""
        return self.outputs_before.get(node, self.env[node])

    def value(self, consumer: fx.Node, node: fx.Node) -> Any:
        """The value of ``node`` as ``consumer`` saw it."""
        return self.seen_by.get(consumer, {}).get(node, self.env[node])


def _written_share(relevance: dict[fx.Node, Any], writer: fx.Node, base: fx.Node, env: dict[fx.Node, Any]) -> Any:
    """The relevance of the entries of ``base`` that ``writer`` wrote (an in-place op on a view of
    ``base``), taken out of ``base``'s relevance: readers after the write saw those entries, and an earlier
    write into the same entries was overwritten. None when ``base`` got no relevance."""
    r_base = relevance.get(base)
    if not isinstance(r_base, Tensor):
        return None
    r_base = relevance[base] = r_base.clone()  # its own storage: the shares are cut out of it
    chain = []
    node = writer.args[0]
    while node is not base:
        chain.append(node)
        node = alias_source(node)
    region = r_base
    for view in reversed(chain):  # replay the views from the base down to the written one
        if returns_view(view.target):
            rest = fx.node.map_arg((view.args[1:], view.kwargs), lambda a: env[a])
            region = view.target(region, *rest[0], **rest[1])
    share = region.clone()
    region.zero_()
    return share


def _real(value: Any) -> Any:
    """A complex tensor as its real coordinates (``view_as_real``, a contiguous copy); anything else as is."""
    return torch.view_as_real(value).clone() if isinstance(value, Tensor) and value.is_complex() else value


def _add(into: dict[fx.Node, Any], node: fx.Node, value: Any, index: int | None = None) -> None:
    if index is not None:
        slots = into.setdefault(node, {})
        slots[index] = value if index not in slots else slots[index] + value
        return
    into[node] = value if node not in into else into[node] + value


def explicit_relevance(graph: Rewritten, tensors: Mapping[str, Tensor], seeds: Mapping[str, Tensor],
                       every_node: bool = False, dtype: torch.dtype | None = torch.float64
                       ) -> dict[str, Tensor]:
    """Relevance at every relevance input (e.g. ``inputs_embeds``; a relevance place inside the graph, such as
    a dual encoder's token-embedding lookup, under the input it stands for) for output relevance ``seeds``
    (``{output_key: R}``, e.g. the explained logit's value at its index and 0 elsewhere); with
    ``every_node``, the relevance of every node that received some, by node name. ``dtype``: every float
    value, parameter and dtype argument is widened to it (float64 by default), so the divisions of the
    explicit forms do not amplify rounding; ``None`` keeps the graph's own dtypes."""
    gm = graph.captured.module()
    if getattr(graph.plan, "prepare", None) is not None:  # a position-aware composite's places
        graph.plan.prepare(gm)
    nodes = list(gm.graph.nodes)
    by_name = {n.name: n for n in nodes}
    placeholders = [n for n in nodes if n.op == "placeholder"]
    recorder = _Recorder(gm, dtype)
    with torch.no_grad():
        # copies: the graph may write an input in place, and the caller's tensors stay as they came in
        recorder.run(*[recorder._widen(tensors[n.name.removeprefix("tensors_")].detach().clone())
                       for n in placeholders])
    env = recorder.env
    carrying_of = graph.plan.carrying
    decisions = graph.plan.decisions
    inputs = set(graph.plan.inputs)
    writes = {by_name[w]: by_name[b] for w, b in getattr(graph.plan, "writes", {}).items()}
    buffers = {b.name for b in writes.values()}

    relevance: dict[fx.Node, Any] = {}
    output = next(n for n in nodes if n.op == "output")
    flat_outputs = pytree.tree_leaves(output.args)
    for key, out_node in zip(graph.captured.output_keys, flat_outputs, strict=True):
        if key in seeds and isinstance(out_node, fx.Node):
            _add(relevance, out_node, seeds[key].to(env[out_node].dtype))

    for node in reversed(nodes):
        if node in writes:  # an in-place write into a buffer: its share of what the buffer's readers got
            share = _written_share(relevance, node, writes[node], env)
            if share is not None:
                _add(relevance, node, share)
        if node not in relevance or node.op != "call_function":
            continue
        r_out = relevance[node]
        if node.target is operator.getitem:
            parent, index = node.args
            _add(relevance, parent, r_out, index)
            continue
        if node.name in graph.plan.regions:  # identity over a whole region: R_x = R_y
            _add(relevance, by_name[graph.plan.regions[node.name]], r_out)
            continue
        if node.name not in carrying_of:
            continue
        if isinstance(r_out, dict):  # a multi-output op: R per output slot
            val = env[node]
            r_out = [r_out.get(i) for i in range(len(val))]
        carrying = carrying_of[node.name]
        args = fx.node.map_arg(node.args, lambda a, n=node: recorder.value(n, a))
        kwargs = fx.node.map_arg(node.kwargs, lambda a, n=node: recorder.value(n, a))
        rule = decisions.get(node.name, (None,))[0]
        if rule is not None:
            if rule.stops:
                continue
            rels = rule.explicit(node.target, list(args), dict(kwargs), recorder.produced(node), r_out, carrying)
            for position in carrying:  # an argument index, or (index, element) inside a list argument
                slot = rels[position[0]] if isinstance(position, tuple) else rels[position]
                rel = None if slot is None else arg_at(rels, position)
                if rel is not None:
                    _add(relevance, arg_at(node.args, position), rel)
            continue
        # No rule: the op is linear in its carrying inputs (ε-rule, ε → 0). Flatten list arguments (cat).
        leaves, spec = pytree.tree_flatten((list(node.args), dict(node.kwargs)))
        carrying_leaves = [i for i, leaf in enumerate(leaves) if isinstance(leaf, fx.Node)
                           and (leaf.name in carrying_of or leaf.name in inputs or leaf.name in buffers)
                           and isinstance(env[leaf], Tensor)
                           and (env[leaf].is_floating_point() or env[leaf].is_complex())]
        values = [recorder.value(node, leaf) if isinstance(leaf, fx.Node) else leaf for leaf in leaves]
        # complex values in their real coordinates (``view_as_real``: [..., 2]), where the ε-rule is defined;
        # a complex node's relevance is kept in that form too
        complex_at = {i for i in carrying_leaves if values[i].is_complex()}
        values = [_real(v) if i in complex_at else v for i, v in enumerate(values)]

        def flat_op(*flat: Any, _spec: Any = spec, _target: Any = node.target, _complex: Any = complex_at) -> Any:
            flat = [torch.view_as_complex(f) if i in _complex else f for i, f in enumerate(flat)]
            a, k = pytree.tree_unflatten(list(flat), _spec)
            return pytree.tree_map(_real, _target(*a, **k))

        produced = pytree.tree_map(_real, recorder.produced(node))
        rels = epsilon_explicit(flat_op, values, {}, produced, r_out, carrying_leaves, _EPSILON)
        for i in carrying_leaves:
            _add(relevance, leaves[i], rels[i])

    if every_node:
        return {n.name: r for n, r in relevance.items() if isinstance(r, Tensor)}
    found = {n.name.removeprefix("tensors_"): relevance.get(n, torch.zeros_like(env[n]))
             for n in placeholders if n.name in inputs}
    for name, key in getattr(graph.plan, "places", {}).items():  # relevance places inside the graph
        node = by_name[name]
        value = relevance.get(node, torch.zeros_like(env[node]))
        if node.meta.get("lxt_position"):  # a positional table: per row and position (PA-LRP, Eq. 11)
            value = per_position(value)
        found[key] = value if key not in found else found[key] + value
    return found
