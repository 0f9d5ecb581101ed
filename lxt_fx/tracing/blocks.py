"""Repeated blocks of a model, told apart by structure and configuration, for a capture that traces each kind once.

A transformer stacks N blocks in an ``nn.ModuleList`` (``model.layers``, ``h``, ``encoder.layer``). Blocks
of one *kind* trace to the same ops with their own parameters, so :mod:`.stamp` traces a short prefix of the
stack and repeats a traced block for the others. Two blocks are of one kind only when everything that could
change their graph is equal (:func:`block_kind`):

* the module tree: each submodule's relative path and class, each parameter's and buffer's relative name,
  shape, dtype, kind (parameter, persistent or non-persistent buffer) and ``requires_grad``;
* every plain attribute of every submodule (``eps``, ``is_sliding``, ``sliding_window``, ``attention_type``,
  ``scaling``, …) except the block's own index (:data:`INDEX_ATTRIBUTES`), any other object by identity (a
  shared config or function is equal, a per-block object is not);
* the per-block configuration: each entry of a config list with one entry per block (``layer_types``) and
  the block's membership in each list of block indices (``mlp_only_layers``).

Gemma-3's sliding and global layers, Qwen2-MoE's dense and sparse layers and a hybrid's attention and
Mamba layers are therefore different kinds. A stack is stamped only when every block is its own module
with its own tensors and carries no hooks; anything else keeps the full export, with the reason
(:class:`Unstampable`).
"""

from __future__ import annotations

import functools
import types
from collections.abc import Hashable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

# Attributes that hold a block's own position in its stack: different in every block by construction, so they
# are left out of its kind; that the graph does not depend on them is checked on the traced blocks (.stamp).
INDEX_ATTRIBUTES = frozenset({"layer_idx", "layer_id", "layer_index", "layer_number", "block_idx", "idx",
                              "layer_num"})
# A stack shorter than this is exported in full: nothing to gain.
MIN_BLOCKS = 3
_PLAIN = (bool, int, float, str, type(None), torch.dtype, torch.device)


class Unstampable(Exception):  # noqa: N818 - a reason, caught by the capture and reported, never raised to users
    """Why a model is exported in full rather than stamped; ``str()`` is the named reason."""


@dataclass(frozen=True)
class Stack:
    """One stack of blocks: its dotted path in the model, the kind of each block (an int per block), how many
    leading blocks the short capture traces (``prefix``), and for each kind the traced block it is stamped
    from (``templates``: kind → block index, the last block of that kind in the prefix, never block 0)."""

    path: str
    kinds: tuple[int, ...]
    prefix: int
    templates: dict[int, int]

    @property
    def size(self) -> int:
        """The number of blocks in the full stack."""
        return len(self.kinds)

    def template_of(self, index: int) -> int:
        """The traced block that block ``index`` (≥ prefix) is stamped from."""
        return self.templates[self.kinds[index]]


def _plain(value: Any) -> Hashable:
    """A value as a comparable key: plain values as they are, a function by its qualified name, a
    ``functools.partial`` by its function and arguments, anything else by identity."""
    if isinstance(value, _PLAIN):
        return (type(value).__name__, value)
    if isinstance(value, (tuple, list)) and all(isinstance(v, _PLAIN) for v in value):
        return (type(value).__name__, tuple(value))
    if isinstance(value, functools.partial):
        return ("partial", _plain(value.func), tuple(_plain(a) for a in value.args),
                tuple(sorted((k, _plain(v)) for k, v in value.keywords.items())))
    if isinstance(value, (types.FunctionType, types.BuiltinFunctionType)):
        return ("function", value.__module__, value.__qualname__, id(getattr(value, "__closure__", None)))
    return ("id", id(value))


def _attributes(module: nn.Module) -> tuple:
    return tuple(sorted((k, _plain(v)) for k, v in vars(module).items()
                        if not k.startswith("_") and k != "training" and k not in INDEX_ATTRIBUTES))


def _hooked(module: nn.Module) -> bool:
    return any(getattr(module, name, None) for name in (
        "_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks",
        "_state_dict_hooks", "_load_state_dict_pre_hooks")) or hasattr(module, "_hf_hook")


def _per_block_config(config: Any, index: int, size: int) -> tuple:
    """The entries of ``config`` (and its sub-configs) that are about block ``index`` of a stack of ``size``."""
    found: list[tuple[str, Hashable]] = []
    seen: set[int] = set()

    def walk(cfg: Any, prefix: str) -> None:
        if cfg is None or id(cfg) in seen:
            return
        seen.add(id(cfg))
        for name, value in sorted(vars(cfg).items()):
            if hasattr(value, "to_dict") and hasattr(value, "model_type"):  # a sub-config
                walk(value, f"{prefix}{name}.")
            elif isinstance(value, (list, tuple)) and value:
                if len(value) == size:
                    found.append((f"{prefix}{name}[i]", _plain(value[index])))
                if all(isinstance(v, int) and not isinstance(v, bool) for v in value):
                    found.append((f"{prefix}{name} ∋ i", index in value))

    walk(config, "")
    return tuple(found)


def block_kind(block: nn.Module, index: int, size: int, config: Any) -> tuple:
    """Everything about block ``index`` (of a stack of ``size``) that can change its traced graph, as a
    hashable tuple (see the module docstring); equal tuples: the same kind."""
    tree = []
    for path, module in block.named_modules(remove_duplicate=False):
        tensors = [(name, tuple(t.shape), t.dtype, t.requires_grad, "p") for name, t in module._parameters.items()
                   if t is not None]
        tensors += [(name, tuple(t.shape), t.dtype, False, "b" if name not in module._non_persistent_buffers_set
                     else "n") for name, t in module._buffers.items() if t is not None]
        forward = vars(module).get("forward")
        tree.append((path, type(module), tuple(tensors), _attributes(module),
                     None if forward is None else id(forward)))
    return (tuple(tree), _per_block_config(config, index, size))


def _stacks_of(model: nn.Module) -> Iterable[tuple[str, nn.ModuleList]]:
    for path, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) >= MIN_BLOCKS:
            yield path, module


def _config_of(model: nn.Module, path: str) -> Any:
    """The config nearest to the stack: its parent's ``config``, else the model's."""
    parent = model.get_submodule(path.rpartition(".")[0]) if "." in path else model
    return getattr(parent, "config", None) or getattr(model, "config", None)


def find_stacks(model: nn.Module) -> list[Stack]:
    """The stacks of ``model`` worth stamping (a stamped block saves its trace), each with its block kinds and
    prefix. Raises :class:`Unstampable` with the reason when the model cannot be stamped at all (no stack,
    shared blocks or tensors, hooks)."""
    stacks = []
    found = list(_stacks_of(model))
    outer = [p for p, _ in found]
    for path, blocks in found:
        if any(isinstance(b, nn.ModuleList) for b in blocks) or any(path.startswith(o + ".") for o in outer):
            continue  # a list of lists, or a list inside a block (experts): only the outermost stacks
        size = len(blocks)
        if len({id(b) for b in blocks}) != size:
            raise Unstampable(f"{path} holds one block object more than once (shared blocks)")
        owners: dict[int, int] = {}
        for i, block in enumerate(blocks):
            for t in (*block.parameters(), *block.buffers()):
                if owners.setdefault(id(t), i) != i:
                    raise Unstampable(f"{path}.{i} shares a tensor with {path}.{owners[id(t)]}")
            if any(_hooked(m) for m in block.modules()):
                raise Unstampable(f"{path}.{i} carries hooks")
        config = _config_of(model, path)
        keys = [block_kind(b, i, size, config) for i, b in enumerate(blocks)]
        ids: dict[tuple, int] = {}
        kinds = tuple(ids.setdefault(k, len(ids)) for k in keys)
        prefix = 2
        while prefix < size and any(k not in kinds[1:prefix] for k in kinds[prefix:]):
            prefix += 1
        if prefix >= size:
            continue
        templates = {k: max(i for i in range(1, prefix) if kinds[i] == k) for k in set(kinds[prefix:])}
        stacks.append(Stack(path, kinds, prefix, templates))
    if not stacks:
        raise Unstampable(f"no stack of {MIN_BLOCKS} or more blocks with a kind repeated after its first "
                          "blocks")
    return stacks
