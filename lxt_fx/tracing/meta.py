"""Read what a captured node carries: its module path, module class and source line."""

from __future__ import annotations

from torch import fx

_ENTRY_PREFIX = "model."


def _innermost(node: fx.Node) -> tuple[str, str]:
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return "", ""
    path, cls = list(stack.values())[-1]
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


def module_class(node: fx.Node) -> str:
    """Class name (without its module) of the innermost module that created ``node``."""
    return _innermost(node)[1].rsplit(".", 1)[-1]


def module_classes(node: fx.Node) -> list[str]:
    """Class names of every module on ``node``'s module stack, outermost first."""
    stack = node.meta.get("nn_module_stack") or {}
    return [(c if isinstance(c, str) else getattr(c, "__qualname__", str(c))).rsplit(".", 1)[-1]
            for _, c in stack.values()]


def source_line(node: fx.Node) -> str:
    """``file:line`` of the model code that created ``node`` (last frame of its stack trace)."""
    trace = node.meta.get("stack_trace") or ""
    lines = [ln.strip() for ln in trace.strip().splitlines() if ln.strip().startswith("File ")]
    if not lines:
        return ""
    last = lines[-1]
    try:
        file_part, line_part = last.split(", line ", 1)
        return f"{file_part[6:-1]}:{line_part.split(',', 1)[0]}"
    except ValueError:
        return last
