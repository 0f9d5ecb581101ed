"""A captured ``GraphModule`` as plain JSON data and back, bound to a live model's parameters.

What :mod:`.disk_cache` stores of a capture: every node (op, name, target, arguments) and the node metadata
lxt-fx reads (``nn_module_stack``, ``stack_trace``, and of ``val`` the kind, dtype and example shape), the
pytree specs of the call, and the tensors the graph made itself (lifted constants, as safetensors bytes).
**No weights:** a ``get_attr`` of a parameter or buffer of the model is stored by its dotted name, shape and
dtype, and :func:`decode` binds it to the live model's own object (so in-place changes of the weights are
seen, exactly as by a fresh capture).

Decoding runs no code from the file: targets are resolved only as ``torch.ops.<namespace>.<op>.<overload>``,
higher-order ops under ``torch.ops.higher_order``, or plain functions of a few standard modules
(:data:`SAFE_MODULES`); anything else is :class:`CodecError`. ``val`` comes back as a ``meta`` tensor of
the example shape (lxt-fx reads only its dtype and kind), a symbolic size as its example value. The input
guards ``torch.export`` attaches to ``ExportedProgram.module()`` (a ``_guards_fn`` call: generated code
that asserts shape relations, and a pre-hook checking dtypes and sizes) are not kept as code: the disk cache
stores the same constraints as data (:mod:`.guards`) and the capture checks them on every use.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, fx, nn
from torch.fx.graph import _PyTreeCodeGen, _PyTreeInfo
from torch.utils import _pytree as pytree

from .errors import LXTError

# Modules whose plain functions may be node targets (``operator.getitem``, ``math.sqrt``, ``torch.sym_max``).
SAFE_MODULES = frozenset({"operator", "_operator", "math", "builtins", "torch", "torch.functional"})
_GUARDS = "_guards_fn"


class CodecError(LXTError):
    """A graph that cannot be written as data (a target, argument or attribute of a kind not supported), or
    data that does not decode into a graph against this model."""


# ---- values -------------------------------------------------------------------------------------------------


def _enc(value: Any) -> Any:
    """A node argument as JSON: plain values as they are, everything else tagged (``{"n": name}``, …)."""
    if isinstance(value, fx.Node):
        return {"n": value.name}
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return {"f": repr(value)}
    if isinstance(value, tuple):
        return {"t": [_enc(v) for v in value]}
    if isinstance(value, list):
        return [_enc(v) for v in value]
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return {"d": [[k, _enc(v)] for k, v in value.items()]}
    if isinstance(value, torch.dtype):
        return {"dtype": str(value).removeprefix("torch.")}
    if isinstance(value, torch.device):
        return {"device": str(value)}
    if isinstance(value, torch.layout):
        return {"layout": str(value).removeprefix("torch.")}
    if isinstance(value, torch.memory_format):
        return {"memory_format": str(value).removeprefix("torch.")}
    if isinstance(value, slice):
        return {"slice": [_enc(value.start), _enc(value.stop), _enc(value.step)]}
    if value is Ellipsis:
        return {"ellipsis": True}
    raise CodecError(f"an argument of type {type(value).__name__} ({value!r:.80}) cannot be stored")


def _torch_attr(name: str, kind: type) -> Any:
    value = getattr(torch, name, None)
    if not isinstance(value, kind):
        raise CodecError(f"torch.{name} is not a {kind.__name__}")
    return value


def _dec(data: Any, nodes: Mapping[str, fx.Node]) -> Any:
    if data is None or isinstance(data, (bool, int, str)):
        return data
    if isinstance(data, list):
        return [_dec(v, nodes) for v in data]
    if not isinstance(data, dict) or len(data) != 1:
        raise CodecError(f"malformed argument {data!r:.80}")
    (tag, v), = data.items()
    if tag == "n":
        if v not in nodes:
            raise CodecError(f"argument refers to unknown node {v!r}")
        return nodes[v]
    if tag == "f":
        return float(v)
    if tag == "t":
        return tuple(_dec(x, nodes) for x in v)
    if tag == "d":
        return {k: _dec(x, nodes) for k, x in v}
    if tag == "dtype":
        return _torch_attr(v, torch.dtype)
    if tag == "device":
        return torch.device(v)
    if tag == "layout":
        return _torch_attr(v, torch.layout)
    if tag == "memory_format":
        return _torch_attr(v, torch.memory_format)
    if tag == "slice":
        return slice(*(_dec(x, nodes) for x in v))
    if tag == "ellipsis":
        return Ellipsis
    raise CodecError(f"unknown argument tag {tag!r}")


def _hint(size: Any) -> int:
    if isinstance(size, torch.SymInt):
        hint = getattr(size.node, "hint", None)
        return int(hint) if hint is not None else 2
    return int(size)


def _enc_val(val: Any) -> Any:
    """``meta["val"]``: a tensor as (dtype, example shape), a symbolic number as its example value."""
    if isinstance(val, Tensor):
        return {"T": [str(val.dtype).removeprefix("torch."), [_hint(s) for s in val.shape]]}
    if isinstance(val, (torch.SymInt, torch.SymFloat, torch.SymBool)):
        hint = getattr(val.node, "hint", None)
        return {"S": _enc(hint) if isinstance(hint, (bool, int, float)) else None}
    if isinstance(val, (tuple, list)):
        return [_enc_val(v) for v in val]
    if val is None or isinstance(val, (bool, int, float, str)):
        return _enc(val)
    return {"other": type(val).__name__}


def _dec_val(data: Any) -> Any:
    if isinstance(data, list):
        return [_dec_val(v) for v in data]
    if isinstance(data, dict) and "T" in data:
        dtype, shape = data["T"]
        return torch.empty(shape, dtype=_torch_attr(dtype, torch.dtype), device="meta")
    if isinstance(data, dict) and "S" in data:
        return _dec(data["S"], {})
    if isinstance(data, dict) and "other" in data:
        return None
    return _dec(data, {})


# ---- targets ------------------------------------------------------------------------------------------------


def _enc_target(target: Any) -> Any:
    if isinstance(target, torch._ops.OpOverload):
        return {"op": [target.namespace, target._opname, target._overloadname]}
    if isinstance(target, torch._ops.HigherOrderOperator):
        return {"hop": target.name()}
    module, name = getattr(target, "__module__", None), getattr(target, "__qualname__", "")
    if module in SAFE_MODULES and name.isidentifier() and _resolve(module, name) is target:
        return {"fn": [module, name]}
    raise CodecError(f"node target {target!r:.80} is not an ATen/custom op or a standard function")


def _resolve(module: str, name: str) -> Any:
    import sys

    mod = sys.modules.get(module)
    return getattr(mod, name, None) if mod is not None else None


def _dec_target(data: dict[str, Any]) -> Any:
    if "op" in data:
        namespace, op, overload = data["op"]
        try:
            target = getattr(getattr(getattr(torch.ops, namespace), op), overload)
        except (AttributeError, RuntimeError) as exc:
            raise CodecError(f"operator {namespace}::{op}.{overload} is not registered in this process "
                             "(the library that defines it is not imported)") from exc
        if not isinstance(target, torch._ops.OpOverload):
            raise CodecError(f"{namespace}::{op}.{overload} is not an operator overload")
        return target
    if "hop" in data:
        target = getattr(torch.ops.higher_order, data["hop"], None)
        if not isinstance(target, torch._ops.HigherOrderOperator):
            raise CodecError(f"higher-order operator {data['hop']!r} is unknown")
        return target
    module, name = data["fn"]
    target = _resolve(module, name) if module in SAFE_MODULES and name.isidentifier() else None
    if not callable(target):
        raise CodecError(f"function {module}.{name} is not allowed or does not exist")
    return target


# ---- graphs -------------------------------------------------------------------------------------------------


def _attr(root: Any, target: str) -> Any:
    obj = root
    for part in target.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def _enc_meta(node: fx.Node) -> dict[str, Any]:
    meta: dict[str, Any] = {}
    stack = node.meta.get("nn_module_stack")
    if stack is not None:
        meta["nn_module_stack"] = [[k, path, cls if isinstance(cls, str) else f"{cls.__module__}.{cls.__qualname__}"]
                                   for k, (path, cls) in stack.items()]
    if "stack_trace" in node.meta:
        meta["stack_trace"] = node.meta["stack_trace"]
    if "val" in node.meta:
        meta["val"] = _enc_val(node.meta["val"])
    return meta


def _dec_meta(data: dict[str, Any]) -> dict[str, Any]:
    meta: dict[str, Any] = {}
    if "nn_module_stack" in data:
        meta["nn_module_stack"] = {k: (path, cls) for k, path, cls in data["nn_module_stack"]}
    if "stack_trace" in data:
        meta["stack_trace"] = data["stack_trace"]
    if "val" in data:
        meta["val"] = _dec_val(data["val"])
    return meta


def encode(gm: fx.GraphModule, live: nn.Module, constants: dict[str, Tensor]) -> dict[str, Any]:
    """``gm`` as JSON data. A ``get_attr`` of a tensor that ``live`` holds under the same dotted name (the very
    object, or an equal non-persistent buffer) is stored as a reference with its shape and dtype; any other
    tensor is copied into ``constants`` (filled here); a nested ``GraphModule`` is encoded in place."""
    nodes = []
    attrs: dict[str, Any] = {}
    for node in gm.graph.nodes:
        if node.op == "call_module" and node.target == _GUARDS:
            continue
        if node.op == "call_module":
            raise CodecError(f"call_module node {node.target!r} cannot be stored")
        if node.op == "get_attr" and node.target not in attrs:
            attrs[node.target] = _enc_attr(gm, live, node.target, constants)
        target = _enc_target(node.target) if node.op == "call_function" else node.target
        nodes.append({"op": node.op, "name": node.name, "target": target, "args": _enc(node.args),
                      "kwargs": _enc(node.kwargs), "meta": _enc_meta(node)})
    codegen = gm.graph._codegen
    data: dict[str, Any] = {"nodes": nodes, "attrs": attrs}
    if isinstance(codegen, _PyTreeCodeGen):
        info = codegen.pytree_info
        data["pytree"] = [list(info.orig_args), pytree.treespec_dumps(info.in_spec),
                          pytree.treespec_dumps(info.out_spec) if info.out_spec is not None else None]
    elif type(codegen) is not fx.graph.CodeGen:
        raise CodecError(f"graph code generator {type(codegen).__name__} cannot be stored")
    return data


def _enc_attr(gm: fx.GraphModule, live: nn.Module, target: str, constants: dict[str, Tensor]) -> Any:
    obj = _attr(gm, target)
    if isinstance(obj, fx.GraphModule):
        return {"graph": encode(obj, nn.Module(), constants)}
    if not isinstance(obj, Tensor):
        raise CodecError(f"attribute {target!r} of type {type(obj).__name__} cannot be stored")
    mine = _attr(live, target)
    if isinstance(mine, Tensor) and (mine is obj or (mine.shape == obj.shape and mine.dtype == obj.dtype
                                                    and mine.device == obj.device and torch.equal(mine, obj))):
        return {"live": [list(obj.shape), str(obj.dtype).removeprefix("torch."), isinstance(obj, nn.Parameter)]}
    name = f"c{len(constants)}"
    constants[name] = obj.detach().contiguous().cpu()
    return {"const": [name, str(obj.device)]}


def decode(data: Mapping[str, Any], live: nn.Module, constants: Mapping[str, Tensor]) -> fx.GraphModule:
    """The ``GraphModule`` of :func:`encode`'s ``data``, its ``get_attr`` references bound to ``live``'s own
    tensors. Raises :class:`CodecError` when a referenced tensor is missing or has another shape, dtype or
    kind (parameter or buffer) than at capture, or when the data names anything not allowed."""
    root: dict[str, Any] = {}
    for target, spec in data["attrs"].items():
        root[target] = _dec_attr(target, spec, live, constants)
    graph = fx.Graph()
    nodes: dict[str, fx.Node] = {}
    for item in data["nodes"]:
        op = item["op"]
        if op not in ("placeholder", "get_attr", "call_function", "output"):
            raise CodecError(f"node kind {op!r} is not allowed")
        target = _dec_target(item["target"]) if op == "call_function" else item["target"]
        if not isinstance(target, str) and op != "call_function":
            raise CodecError(f"malformed {op} node")
        node = graph.create_node(op, target, _dec(item["args"], nodes), _dec(item["kwargs"], nodes),
                                 name=item["name"])
        if node.name != item["name"]:
            raise CodecError(f"node name {item['name']!r} is not unique")
        node.meta.update(_dec_meta(item["meta"]))
        nodes[node.name] = node
    specs = data.get("pytree")
    if specs is not None:
        orig_args, in_spec, out_spec = specs
        in_spec = pytree.treespec_loads(in_spec)
        out_spec = pytree.treespec_loads(out_spec) if out_spec is not None else None
        graph._codegen = _PyTreeCodeGen(_PyTreeInfo(list(orig_args), in_spec, out_spec))
    gm = fx.GraphModule(root, graph)
    if specs is not None:
        gm._in_spec, gm._out_spec = in_spec, out_spec
    return gm


def still_bound(gm: fx.GraphModule, data: Mapping[str, Any], live: nn.Module) -> bool:
    """Whether ``gm``, decoded from ``data`` against ``live``, still reads ``live``'s own tensors: every
    parameter and buffer the data references by name is the very object ``live`` holds under that name now
    (what :func:`decode` would bind again)."""
    return all(_attr(gm, target) is _attr(live, target) for target, spec in data["attrs"].items() if "live" in spec)


def _dec_attr(target: str, spec: Mapping[str, Any], live: nn.Module, constants: Mapping[str, Tensor]) -> Any:
    if "graph" in spec:
        return decode(spec["graph"], nn.Module(), constants)
    if "const" in spec:
        name, device = spec["const"]
        if name not in constants:
            raise CodecError(f"constant {name!r} of {target!r} is missing")
        return constants[name].to(device)
    shape, dtype, is_param = spec["live"]
    mine = _attr(live, target)
    if not isinstance(mine, Tensor):
        raise CodecError(f"the model has no tensor {target.removeprefix('model.')!r}, which the stored graph uses")
    if list(mine.shape) != shape or str(mine.dtype).removeprefix("torch.") != dtype \
            or isinstance(mine, nn.Parameter) != is_param:
        raise CodecError(f"{target.removeprefix('model.')!r} is {tuple(mine.shape)} {mine.dtype} in the model but "
                         f"{tuple(shape)} {dtype} in the stored graph")
    return mine


def constants_bytes(constants: Mapping[str, Tensor]) -> str:
    """The graph's own constants as base64 safetensors bytes (no pickle)."""
    from safetensors.torch import save

    return base64.b64encode(save(dict(constants)) if constants else b"").decode("ascii")


def constants_from(text: str) -> dict[str, Tensor]:
    """Inverse of :func:`constants_bytes`."""
    from safetensors.torch import load

    raw = base64.b64decode(text.encode("ascii"))
    return load(raw) if raw else {}


def same_graph(a: fx.GraphModule, b: fx.GraphModule) -> str | None:
    """None when ``b`` is ``a`` rebuilt: the same code and, node by node, the same target, module stack,
    stack trace and value kind and dtype; else what differs first (used to check a capture before storing)."""
    na = [n for n in a.graph.nodes if not (n.op == "call_module" and n.target == _GUARDS)]
    nb = list(b.graph.nodes)
    if len(na) != len(nb):
        return f"{len(na)} nodes became {len(nb)}"
    for x, y in zip(na, nb, strict=True):
        if (x.op, x.name, x.target) != (y.op, y.name, y.target):
            return f"node {x.name} ({x.op} {x.target}) became {y.name} ({y.op} {y.target})"
        for key in ("nn_module_stack", "stack_trace"):
            if _norm(x.meta.get(key)) != _norm(y.meta.get(key)):
                return f"node {x.name}: {key} differs"
        if _kind(x.meta.get("val")) != _kind(y.meta.get("val")):
            return f"node {x.name}: value {_kind(x.meta.get('val'))} became {_kind(y.meta.get('val'))}"
    for x, y in zip(na, nb, strict=True):
        if str(x.args) != str(y.args) or str(x.kwargs) != str(y.kwargs):
            return f"node {x.name}: arguments differ"
    return None


def _norm(value: Any) -> Any:
    if isinstance(value, dict):
        return [(k, p, c if isinstance(c, str) else f"{c.__module__}.{c.__qualname__}") for k, (p, c) in value.items()]
    return value


def _kind(val: Any) -> Any:
    if isinstance(val, Tensor):
        return ("tensor", val.dtype, val.dim())
    if isinstance(val, (tuple, list)):
        return tuple(_kind(v) for v in val)
    if isinstance(val, (torch.SymInt, int)):
        return "int"
    if isinstance(val, (torch.SymFloat, float)):
        return "float" if not (isinstance(val, float) and math.isnan(val)) else "nan"
    if isinstance(val, (torch.SymBool, bool)):
        return "bool"
    return type(val).__name__ if val is not None else None

