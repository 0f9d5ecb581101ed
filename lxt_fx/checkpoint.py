"""Gradient checkpointing inside the rewritten graph: O(√N) memory for N blocks, in eval mode.

The rewritten graph is split at block boundaries (module paths like ``model.layers.<i>``) with
``torch.fx.passes.split_module``; each segment of blocks runs under non-reentrant
``torch.utils.checkpoint``, so only the tensors crossing segment boundaries (the residual stream, plus
shared constants such as the mask and RoPE tables) are kept, and each segment's rule ops are recomputed in
backward. The rules are deterministic and dropout is off in eval mode, so the relevance is unchanged.

The last segment of blocks is not checkpointed: backward would recompute it first thing, so holding its
activations from the forward pass adds nothing to the peak (which is one segment's activations plus the
boundaries either way) and saves one segment's forward — with √N segments, a (1/√N) share of the
recomputation. Nothing after the last block (final norm, head) is checkpointed either.

Modes: ``None`` (no checkpointing), ``"layer"`` (one segment per block), ``"sqrt"`` (about √N segments of
about √N blocks). A graph without block structure falls back to no checkpointing with a warning.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, fx, nn
from torch.fx.passes.split_module import split_module
from torch.utils.checkpoint import checkpoint

from .tracing.meta import BLOCK_PATH, module_path

MODES = (None, "layer", "sqrt")
TAIL = 1 << 20  # partition id of the nodes after the last block


class CheckpointWarning(UserWarning):
    """Checkpointing was asked for but the graph has no block structure; it runs unsegmented."""


def block_key(node: fx.Node) -> str | None:
    """The module path of ``node``'s block (``model.layers.7``; ``decoder.block.0`` ≠ ``encoder.block.0``)."""
    path = module_path(node)
    match = BLOCK_PATH.search(path)
    return path[: match.end(1)] if match else None


def block_count(gm: fx.GraphModule) -> int:
    """How many distinct blocks the graph's nodes come from."""
    return len({k for n in gm.graph.nodes if (k := block_key(n)) is not None})


def segment_of_nodes(gm: fx.GraphModule, mode: str) -> dict[str, int]:
    """Partition id per node name: 0 before the first block, then one id per segment of blocks (blocks
    numbered in the order the graph reaches them, so an encoder's and a decoder's stacks follow each other),
    then :data:`TAIL` for what follows the last block (final norm, head: not checkpointed, so the large
    logits projection is not recomputed). Ids never decrease along the node order: valid fx partitions."""
    blocks = block_count(gm)
    per_segment = 1 if mode == "layer" else max(1, math.ceil(math.sqrt(blocks)))
    nodes = [n for n in gm.graph.nodes if n.op not in ("placeholder", "output")]
    last_block = max(i for i, n in enumerate(nodes) if block_key(n) is not None)
    ordinal: dict[str, int] = {}
    current, parts = 0, {}
    for i, node in enumerate(nodes):
        key = block_key(node)
        if key is not None:
            ordinal.setdefault(key, len(ordinal))
            current = max(current, 1 + ordinal[key] // per_segment)
        elif i > last_block:
            current = TAIL
        parts[node.name] = current
    return parts


def crossing_values(gm: fx.GraphModule, parts: Mapping[str, int]) -> dict[int, list[str]]:
    """For each partition, the names of values defined in an earlier partition and used in it
    (networkx over the data-flow graph): what a checkpointed segment keeps alive."""
    import networkx as nx  # imported on use: ~0.15 s at start-up otherwise

    graph = nx.DiGraph()
    for node in gm.graph.nodes:
        for user in node.users:
            graph.add_edge(node.name, user.name)
    crossing: dict[int, list[str]] = {}
    for src, dst in graph.edges:
        if src in parts and dst in parts and parts[src] < parts[dst]:
            crossing.setdefault(parts[dst], [])
            if src not in crossing[parts[dst]]:
                crossing[parts[dst]].append(src)
    return crossing


class _Checkpointed(nn.Module):
    """Runs a segment under non-reentrant checkpointing; counts the tensors kept at its boundary."""

    def __init__(self, inner: nn.Module, boundary: list[Tensor]) -> None:
        super().__init__()
        self.inner = inner
        self._boundary = boundary

    def forward(self, *args: Any) -> Any:
        if not torch.is_grad_enabled():
            return self.inner(*args)
        self._boundary.extend(a for a in args if isinstance(a, Tensor))
        return checkpoint(self.inner, *args, use_reentrant=False)


class SegmentedGraph:
    """A rewritten graph split into checkpointed segments; called like the unsegmented one."""

    def __init__(self, gm: fx.GraphModule, root: nn.Module, mode: str, output_keys: tuple[str, ...]) -> None:
        self.mode = mode
        self.output_keys = output_keys
        self.parts = segment_of_nodes(gm, mode)
        ids = sorted({p for p in self.parts.values() if 0 < p < TAIL})
        self.segments = len(ids)
        self.checkpointed = ids[:-1]  # the last segment would be recomputed at once: kept instead
        self.boundary: list[Tensor] = []  # tensors held by checkpoint frames in the last call
        self.placeholders = [n.name for n in gm.graph.nodes if n.op == "placeholder"]
        self.module = split_module(gm, root, lambda n: self.parts[n.name], keep_original_order=True)
        for name, sub in list(self.module.named_children()):
            if name.startswith("submod_") and int(name.removeprefix("submod_")) in self.checkpointed:
                setattr(self.module, name, _Checkpointed(sub, self.boundary))

    def __call__(self, tensors: Mapping[str, Tensor]) -> dict[str, Tensor]:
        self.boundary.clear()
        flat = [tensors[name.removeprefix("tensors_")] for name in self.placeholders]
        out = self.module(*flat)
        out = out if isinstance(out, (tuple, list)) else (out,)
        return dict(zip(self.output_keys, out, strict=True))


def segmented(gm: fx.GraphModule, root: nn.Module, mode: str | None, output_keys: tuple[str, ...]
              ) -> SegmentedGraph | None:
    """A checkpointed version of ``gm`` for ``mode``; None for ``mode=None`` or (with a warning) for a
    graph without block structure."""
    if mode not in MODES:
        raise ValueError(f"checkpoint={mode!r}: use one of {MODES}")
    if mode is None:
        return None
    if block_count(gm) < 2:
        warnings.warn(f"checkpoint={mode!r} asked for, but the graph has no repeated blocks (module paths like "
                      "'layers.<i>'); running without checkpointing", CheckpointWarning, stacklevel=3)
        return None
    return SegmentedGraph(gm, root, mode, output_keys)


def saved_activation_bytes(run: Any, exclude: Any = ()) -> int:
    """Bytes of distinct tensor storages kept for backward while ``run()`` executes its forward pass.

    Counted exactly with ``torch.autograd.graph.saved_tensors_hooks`` (machine-independent), plus the
    tensors held at checkpoint boundaries by any :class:`SegmentedGraph` that ``run`` returns in its
    second slot; storages of ``exclude`` (e.g. the model's parameters) are left out."""
    seen: dict[int, int] = {}
    skip = {t.untyped_storage().data_ptr() for t in exclude}

    def pack(t: Tensor) -> Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in skip:
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        _, boundary = run()
    for t in boundary:
        storage = t.untyped_storage()
        if storage.data_ptr() not in skip:
            seen[storage.data_ptr()] = storage.nbytes()
    return sum(seen.values())
