"""Read what a captured node carries: its module path, module class and source line."""

from __future__ import annotations

import os
import re

import torch
from torch import fx

_ENTRY_PREFIX = "model."
# torch.export's marker on nodes its passes create without a module stack: not a module of the model.
_NO_MODULE_MARKER = "_empty_nn_module_stack_from_metadata_hook"
_SKIP_DIRS = (os.path.dirname(torch.__file__) + os.sep,
              os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep)
_FRAME = re.compile(r'File "([^"]+)", line (\d+)')
# A module path inside a repeated block: ``model.layers.7.mlp`` (group 1: the block number).
BLOCK_PATH = re.compile(r"(?:^|\.)(?:layers|layer|h|blocks|block)\.(\d+)(?:\.|$)")


def _innermost(node: fx.Node) -> tuple[str, str]:
    stack = [entry for key, entry in (node.meta.get("nn_module_stack") or {}).items()
             if key != _NO_MODULE_MARKER and entry[0] != _NO_MODULE_MARKER]
    if not stack:
        return "", ""
    path, cls = stack[-1]
    cls_name = cls if isinstance(cls, str) else getattr(cls, "__qualname__", str(cls))
    return path, cls_name


def module_path(node: fx.Node) -> str:
    """Dotted path of the innermost module that created ``node``, as in ``model.named_modules()``."""
    path = _innermost(node)[0]
    if path.startswith("L__self__"):
        return ""
    if path == "model":
        return ""
    return path[len(_ENTRY_PREFIX):] if path.startswith(_ENTRY_PREFIX) else path


def block_index(node: fx.Node) -> int | None:
    """The block number in ``node``'s module path (``model.layers.7.mlp`` → 7), else None."""
    match = BLOCK_PATH.search(module_path(node))
    return int(match.group(1)) if match else None


def module_class(node: fx.Node) -> str:
    """Class name (without its module) of the innermost module that created ``node``."""
    return _innermost(node)[1].rsplit(".", 1)[-1]


def module_classes(node: fx.Node) -> list[str]:
    """Class names of every module on ``node``'s module stack, outermost first."""
    stack = node.meta.get("nn_module_stack") or {}
    return [(c if isinstance(c, str) else getattr(c, "__qualname__", str(c))).rsplit(".", 1)[-1]
            for _, c in stack.values()]


def source_line(node: fx.Node) -> str:
    """``file:line`` of the innermost frame of the *model's* code that created ``node``: frames inside torch
    (``nn.Linear.forward``, containers) and lxt-fx are skipped, so a Linear points at the line calling it;
    the innermost frame of all when every frame is torch's."""
    frames = _FRAME.findall(node.meta.get("stack_trace") or "")
    for file, line in reversed(frames):
        if not file.startswith(_SKIP_DIRS):
            return f"{file}:{line}"
    return f"{frames[-1][0]}:{frames[-1][1]}" if frames else ""
