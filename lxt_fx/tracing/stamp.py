"""A full graph from a short capture: trace the first blocks of each stack, repeat a traced block for the rest.

``torch.export`` traces every block of a transformer one by one; a capture of SmolLM2 (30 blocks) spends
most of its time there. :func:`shortened` lets the export see only a prefix of each stack
(:class:`~.blocks.Stack`: enough blocks that every later block has a traced block of its kind, never
block 0), and :func:`stamp` builds the graph of the whole model from that short graph: block ``j`` beyond the
prefix is a copy of its kind's traced block ``t`` with

* every parameter and buffer ``<stack>.t.…`` read as ``<stack>.j.…`` (the model's own tensors of block j),
* the input it takes from the block before (the only value a block reads from another block) bound to the
  output of block ``j − 1``, every other input (masks, rotary tables, sizes) the same node as in block t,
* the module stack of every node moved from ``<stack>.t`` to ``<stack>.j``; the source lines are block t's,
  which are block j's (the same code);

and the ops after the stack read the output of the last block. The parameters and buffers appear in the
order export gives them (the model's ``named_parameters()`` then ``named_buffers()``), and every node is
named canonically (:func:`canonical`), so the stamped graph equals the full export's canonical graph node
for node: op, target, arguments, names, module stacks and source lines.

Anything that does not fit this pattern raises :class:`~.blocks.Unstampable` with the reason, and the
capture exports the model in full: a value read across blocks other than the previous block's output, ops
between two blocks, an attribute of the graph that is not a tensor of the model, two traced blocks of one
kind whose graphs differ (the graph depends on the block's index).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import fx, nn

from .blocks import Stack, Unstampable

ENTRY = "model."  # the capture's wrapper holds the model as .model
_GUARDS = "_guards_fn"
_SUFFIX = re.compile(r"^(.*)_\d+$")


@contextlib.contextmanager
def shortened(model: nn.Module, stacks: Sequence[Stack]) -> Iterator[None]:
    """Inside, each stack of ``model`` holds only its first ``prefix`` blocks; restored on exit, also after an
    exception."""
    saved = []
    try:
        for stack in stacks:
            blocks = model.get_submodule(stack.path)
            saved.append((blocks, blocks._modules))
            blocks._modules = dict(list(blocks._modules.items())[:stack.prefix])
        yield
    finally:
        for blocks, modules in saved:
            blocks._modules = modules


def sym_expr(node: fx.Node) -> str | None:
    """The symbolic expression a node computes from input sizes (``2*s0``), else None. Export traces each such
    expression once and reuses its node wherever it is needed again, also in later blocks."""
    val = node.meta.get("val")
    if node.op == "call_function" and isinstance(val, (torch.SymInt, torch.SymFloat, torch.SymBool)):
        return str(val.node.expr)
    return None


def base_name(name: str) -> str:
    """A node name without fx's uniquifying number: ``linear_12`` → ``linear``."""
    match = _SUFFIX.match(name)
    return match.group(1) if match else name


def _new_graph(codegen: Any) -> fx.Graph:
    graph = fx.Graph()
    graph._codegen = codegen
    return graph


def _module(root: fx.GraphModule | dict[str, Any], graph: fx.Graph, like: fx.GraphModule) -> fx.GraphModule:
    gm = fx.GraphModule(root, graph)
    for attr in ("_in_spec", "_out_spec"):
        if hasattr(like, attr):
            setattr(gm, attr, getattr(like, attr))
    return gm


def canonical(gm: fx.GraphModule) -> fx.GraphModule:
    """``gm`` rebuilt with every node named by its base and its rank among nodes of that base in graph order
    (``add``, ``add_1``, ``add_2``, … without the gaps export leaves where it dropped dead ops), without
    export's input-guard call (the capture checks the same constraints as data, :mod:`.guards`). Shares
    ``gm``'s parameters and buffers."""
    graph = _new_graph(gm.graph._codegen)
    env: dict[fx.Node, fx.Node] = {}
    for node in gm.graph.nodes:
        if node.op == "call_module" and node.target == _GUARDS:
            continue
        new = graph.create_node(node.op, node.target, fx.map_arg(node.args, env.__getitem__),
                                fx.map_arg(node.kwargs, env.__getitem__), name=base_name(node.name),
                                type_expr=node.type)
        new.meta = dict(node.meta)
        env[node] = new
    return _module(gm, graph, gm)


class _Stacked:
    """The sections of one stack in the short graph: the nodes of each traced block, in order."""

    def __init__(self, stack: Stack, nodes: list[fx.Node]) -> None:
        self.stack = stack
        self.prefix = f"{ENTRY}{stack.path}."
        self.sections: list[list[fx.Node]] = [[] for _ in range(stack.prefix)]
        self.where: dict[fx.Node, int] = {}
        order = []
        for node in nodes:
            index = self.block_of(node)
            if index is not None:
                self.sections[index].append(node)
                self.where[node] = index
                order.append(node)
        if any(not s for s in self.sections):
            raise Unstampable(f"a block of {stack.path} left no op in the graph")
        position = {n: i for i, n in enumerate(nodes)}
        first, last = position[self.sections[0][0]], position[self.sections[-1][-1]]
        if [n for n in nodes[first:last + 1]] != order:
            raise Unstampable(f"ops between the blocks of {stack.path}, or blocks out of order")
        self.outputs = [self._output(i) for i in range(stack.prefix)]

    def block_of(self, node: fx.Node) -> int | None:
        """The traced block ``node`` belongs to (by its module stack, or a get_attr by its target)."""
        if node.op == "get_attr":
            return None
        for path, _ in (node.meta.get("nn_module_stack") or {}).values():
            if isinstance(path, str) and path.startswith(self.prefix):
                head = path[len(self.prefix):].split(".", 1)[0]
                if head.isdigit():
                    return int(head)
        return None

    def _output(self, index: int) -> fx.Node:
        section = self.sections[index]
        inside = set(section)
        outs = [n for n in section if any(u not in inside for u in n.users)]
        if len(outs) != 1:
            raise Unstampable(f"block {index} of {self.stack.path} hands {len(outs)} values on, not one")
        out = outs[0]
        if index + 1 < len(self.sections):
            after = set(self.sections[index + 1])
            if any(u not in inside and u not in after for u in out.users):
                raise Unstampable(f"the output of block {index} of {self.stack.path} is read past the next block")
        return out

    def param_block(self, target: str) -> tuple[int, str] | None:
        """(block index, name inside the block) of a get_attr target inside this stack, else None."""
        if not target.startswith(self.prefix):
            return None
        head, _, rest = target[len(self.prefix):].partition(".")
        return (int(head), rest) if head.isdigit() else None


def _signature(stacked: _Stacked, index: int, carry: fx.Node | None = None) -> list[tuple]:
    """Block ``index`` of the short graph with its inputs made relative: a comparable form of its ops.
    ``carry``: the node that stands for the previous block's output (default: that output)."""
    section = stacked.sections[index]
    local = {n: i for i, n in enumerate(section)}
    if carry is None and index > 0:
        carry = stacked.outputs[index - 1]

    def ref(a: Any) -> Any:
        if not isinstance(a, fx.Node):
            return a
        if sym_expr(a) is not None:
            return ("size", sym_expr(a))
        if a in local:
            return ("local", local[a])
        if a is carry:
            return ("carry",)
        if a.op == "get_attr":
            where = stacked.param_block(a.target)
            if where is not None:
                return ("own", where[1]) if where[0] == index else ("other block", a.name)
        return ("shared", a.name)

    return [(n.op, n.target, str(fx.map_arg(n.args, ref)), str(fx.map_arg(n.kwargs, ref)),
             tuple((n.meta.get("nn_module_stack") or {}).values())[-1][1:] if n.meta.get("nn_module_stack")
             else None) for n in section if sym_expr(n) is None]


def _check_templates(stacked: _Stacked, position: dict[fx.Node, int]) -> None:
    """Each template block reads only its own tensors, the previous block's output and nodes made before the
    stack; traced blocks of one kind trace to the same ops."""
    stack = stacked.stack
    start = position[stacked.sections[0][0]]
    for kind, t in stack.templates.items():
        for n in stacked.sections[t]:
            for r in n.all_input_nodes:
                if stacked.where.get(r) == t or r is stacked.outputs[t - 1] or sym_expr(r) is not None:
                    continue
                if r.op == "get_attr":
                    where = stacked.param_block(r.target)
                    if where is not None and where[0] != t:
                        raise Unstampable(f"block {t} of {stack.path} reads {r.target!r} of another block")
                elif r in stacked.where:
                    raise Unstampable(f"block {t} of {stack.path} reads {r.name} of block {stacked.where[r]}")
                elif position[r] > start:
                    raise Unstampable(f"block {t} of {stack.path} reads {r.name}, made after the stack began")
        sig = _signature(stacked, t)
        for other in range(stack.prefix):
            if other == t or stack.kinds[other] != kind:
                continue
            carry = None
            if other == 0:  # block 0 reads the stack's input where block t reads block t − 1's output
                given = _outer_reads(stacked, 0) - _outer_reads(stacked, t)
                if len(given) != 1:
                    raise Unstampable(f"blocks 0 and {t} of {stack.path} are of one kind but read different "
                                      "values from before the stack")
                (carry,) = given
            if _signature(stacked, other, carry) != sig:
                raise Unstampable(f"blocks {other} and {t} of {stack.path} are of one kind but trace to "
                                  "different graphs (the graph depends on the block's index)")


def _outer_reads(stacked: _Stacked, index: int) -> set[fx.Node]:
    """The nodes made before the stack (not tensors, not sizes) that block ``index`` reads."""
    return {r for n in stacked.sections[index] for r in n.all_input_nodes
            if r not in stacked.where and r.op != "get_attr" and sym_expr(r) is None}


def _move_stack(meta: dict[str, Any], old: str, new: str) -> dict[str, Any]:
    stack = meta.get("nn_module_stack")
    if not stack:
        return dict(meta)

    def move(text: str) -> str:
        at = text.find(old)
        while at >= 0:
            end = at + len(old)
            if (at == 0 or not text[at - 1].isalnum()) and (end == len(text) or text[end] == "."):
                return text[:at] + new + text[end:]
            at = text.find(old, at + 1)
        return text

    out = dict(meta)
    out["nn_module_stack"] = {move(k): (move(p) if isinstance(p, str) else p, c) for k, (p, c) in stack.items()}
    return out


def _attribute_order(model: nn.Module) -> list[str]:
    names = [ENTRY + n for n, _ in model.named_parameters(remove_duplicate=False)]
    return names + [ENTRY + n for n, _ in model.named_buffers(remove_duplicate=False)]


def stamp(short: fx.GraphModule, stacks: Sequence[Stack], entry: nn.Module, model: nn.Module) -> fx.GraphModule:
    """The full model's graph from ``short``, the capture of ``model`` with its ``stacks`` shortened (see the
    module docstring). ``entry``: the capture's wrapper of ``model`` (the graph's root, holding the tensors).
    Raises :class:`Unstampable` where the short graph does not fit the pattern."""
    nodes = [n for n in short.graph.nodes if not (n.op == "call_module" and n.target == _GUARDS)]
    stackeds = [_Stacked(s, nodes) for s in stacks]
    position = {n: i for i, n in enumerate(nodes)}
    for stacked in stackeds:
        _check_templates(stacked, position)

    # get_attr nodes: export's order (parameters, then buffers, of the model as it was traced), plus the
    # stamped blocks' tensors in their places
    attrs = [n for n in nodes if n.op == "get_attr"]
    order = _attribute_order(model)
    rank = {t: i for i, t in enumerate(order)}
    mine = [n.target for n in attrs]
    if any(t not in rank for t in mine) or mine != sorted(mine, key=rank.__getitem__):
        raise Unstampable("the graph reads attributes other than the model's tensors, or in another order")
    by_target = {n.target: n for n in attrs}
    wanted = set(mine)
    like: dict[str, fx.Node] = {}  # a stamped block's tensor → its template's get_attr node
    for stacked in stackeds:
        for j in range(stacked.stack.prefix, stacked.stack.size):
            t = stacked.stack.template_of(j)
            for n in attrs:
                where = stacked.param_block(n.target)
                if where is not None and where[0] == t:
                    like[f"{stacked.prefix}{j}.{where[1]}"] = n
    wanted.update(like)
    missing = sorted(t for t in wanted if t not in rank)
    if missing:
        raise Unstampable(f"the model has no tensor {missing[0]!r} for a stamped block")

    graph = _new_graph(short.graph._codegen)
    env: dict[fx.Node, fx.Node] = {}
    new_attrs: dict[str, fx.Node] = {}
    for target in sorted(wanted, key=rank.__getitem__):
        old = by_target.get(target)
        name = old.name if old is not None else _attr_name(like[target], target)
        new = graph.create_node("get_attr", target, name=base_name(name))
        new.meta = dict((old if old is not None else like[target]).meta)
        if old is not None:
            env[old] = new
        new_attrs[target] = new
    last_of = {s.sections[-1][-1]: s for s in stackeds}
    carried: dict[fx.Node, fx.Node] = {}  # a stack's short output → the output of its last stamped block

    def copy(node: fx.Node, mapping: dict[fx.Node, fx.Node]) -> fx.Node:
        new = graph.create_node(node.op, node.target, fx.map_arg(node.args, mapping.__getitem__),
                                fx.map_arg(node.kwargs, mapping.__getitem__), name=base_name(node.name),
                                type_expr=node.type)
        return new

    class _Env(dict):
        def __missing__(self, key: fx.Node) -> fx.Node:
            return carried.get(key) or env[key]

    outer = _Env()
    for node in nodes:
        if node.op == "get_attr":
            continue
        new = copy(node, outer)
        new.meta = dict(node.meta)
        env[node] = new
        stacked = last_of.get(node)
        if stacked is not None:
            carried[stacked.outputs[-1]] = _stamp_blocks(stacked, graph, env, new_attrs, copy)
    return _module(_roots(graph, entry), graph, short)


def _stamp_blocks(stacked: _Stacked, graph: fx.Graph, env: dict[fx.Node, fx.Node], attrs: dict[str, fx.Node],
                  copy: Any) -> fx.Node:
    """Append blocks ``prefix … size − 1`` of ``stacked``'s stack to ``graph``; returns the last one's output.
    A size expression already computed (:func:`sym_expr`) is read from its node, as export does."""
    stack = stacked.stack
    previous = env[stacked.outputs[-1]]
    sizes: dict[str, fx.Node] = {}
    for node in graph.nodes:
        expr = sym_expr(node)
        if expr is not None:
            sizes.setdefault(expr, node)
    for j in range(stack.prefix, stack.size):
        t = stack.template_of(j)
        mapping: dict[fx.Node, fx.Node] = {}
        for n in stacked.sections[t]:
            expr = sym_expr(n)
            if expr is not None and expr in sizes:
                mapping[n] = sizes[expr]
                continue
            for r in n.all_input_nodes:
                if r in mapping:
                    continue
                if sym_expr(r) is not None and sym_expr(r) in sizes:
                    mapping[r] = sizes[sym_expr(r)]
                elif r is stacked.outputs[t - 1]:
                    mapping[r] = previous
                elif r.op == "get_attr" and (where := stacked.param_block(r.target)) is not None:
                    mapping[r] = attrs[f"{stacked.prefix}{j}.{where[1]}"]
                elif r not in stacked.where:
                    mapping[r] = env[r]
            new = copy(n, mapping)
            new.meta = _move_stack(n.meta, f"{stacked.prefix}{t}", f"{stacked.prefix}{j}")
            mapping[n] = new
            if expr is not None:
                sizes[expr] = new
        previous = mapping[stacked.outputs[t]]
    return previous


def _attr_name(template: fx.Node, target: str) -> str:
    """The name export gives a get_attr of ``target``, from the name it gave ``template`` (the same tensor of
    another block): export writes the dotted path with ``_`` and CamelCase in snake case (``LayerNorm`` →
    ``layer_norm``), so the two names differ only in the block number."""
    old_parts, new_parts = template.target.split("."), target.split(".")
    (i,) = [k for k, (a, b) in enumerate(zip(old_parts, new_parts, strict=True)) if a != b]
    head = "_".join(old_parts[:i + 1])
    if template.name.lower().startswith(head.lower()) and template.name[:len(head)].lower() == head.lower():
        return template.name[:len(head) - len(old_parts[i])] + new_parts[i] + template.name[len(head):]
    raise Unstampable(f"export named {template.target!r} {template.name!r}, not after its path")


def _roots(graph: fx.Graph, entry: nn.Module) -> dict[str, Any]:
    root: dict[str, Any] = {}
    for node in graph.nodes:
        if node.op == "get_attr":
            obj: Any = entry
            for part in node.target.split("."):
                obj = getattr(obj, part)
            root[node.target] = obj
    return root
