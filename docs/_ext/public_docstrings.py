"""Sphinx extension: every public name of the documented modules has a docstring, or the build fails.

The modules are ``api_modules`` in ``conf.py`` (those the API reference documents). A module's public
names are its ``__all__``, or else the names not starting with ``_`` that it defines itself. For each
public class defined in lxt-fx, its public methods, properties and class methods defined in the class
body count too (inherited ones are documented where they are defined, an override of a documented
base method inherits its docstring, as autodoc shows it; ``forward`` of an ``nn.Module`` is
exempt, as the class docstring states what it computes). A name without a docstring of its own is
listed, with its module and line, in one :class:`MissingDocstringError`.
"""

from __future__ import annotations

import importlib
import inspect
import types
from collections.abc import Iterator
from typing import Any

from sphinx.application import Sphinx
from sphinx.errors import ExtensionError

EXEMPT_METHODS = {"forward", "extra_repr"}


class MissingDocstringError(ExtensionError):
    """Public names of the documented modules without a docstring."""


def public_names(module: types.ModuleType) -> list[str]:
    """``module.__all__``, or the names without a leading ``_`` that ``module`` defines itself."""
    names = getattr(module, "__all__", None)
    if names is not None:
        return list(names)
    return [n for n, v in vars(module).items() if not n.startswith("_")
            and getattr(v, "__module__", None) == module.__name__ and (inspect.isclass(v) or callable(v))]


def own_doc(obj: Any) -> str | None:
    """The docstring ``obj`` itself carries (not one inherited from a base class)."""
    if isinstance(obj, property):
        obj = obj.fget
    if isinstance(obj, (classmethod, staticmethod)):
        obj = obj.__func__
    doc = getattr(obj, "__doc__", None)
    return doc if isinstance(doc, str) and doc.strip() else None


def inherited_doc(cls: type, attr: str) -> bool:
    """Whether ``attr`` overrides a base class's member that has a docstring (autodoc shows that one)."""
    return any(own_doc(vars(base).get(attr)) for base in cls.__mro__[1:] if attr in vars(base))


def where(obj: Any) -> str:
    """``file:line`` of ``obj``'s definition, where inspect can tell."""
    try:
        target = obj.fget if isinstance(obj, property) else getattr(obj, "__func__", obj)
        return f"{inspect.getsourcefile(target)}:{inspect.getsourcelines(target)[1]}"
    except (TypeError, OSError):
        return "?"


def missing(module_name: str) -> Iterator[str]:
    """``module.name (file:line)`` for each public name of ``module_name`` without its own docstring."""
    module = importlib.import_module(module_name)
    for name in public_names(module):
        obj = getattr(module, name)
        if isinstance(obj, types.ModuleType) or not (inspect.isclass(obj) or callable(obj)):
            continue  # submodules are documented on their own; constants need no docstring
        if own_doc(obj) is None:
            yield f"{module_name}.{name} ({where(obj)})"
        if inspect.isclass(obj) and obj.__module__.startswith("lxt_fx"):
            for attr, member in vars(obj).items():
                if attr.startswith("_") or attr in EXEMPT_METHODS:
                    continue
                if not (inspect.isfunction(member) or isinstance(member, (property, classmethod, staticmethod))):
                    continue
                if own_doc(member) is None and not inherited_doc(obj, attr):
                    yield f"{module_name}.{name}.{attr} ({where(member)})"


def _check(app: Sphinx) -> None:
    found = sorted({line for m in app.config.api_modules for line in missing(m)})
    if found:
        raise MissingDocstringError("public names without a docstring (write one; the API reference shows it):\n  "
                                    + "\n  ".join(found))


def setup(app: Sphinx) -> dict[str, Any]:
    """Register ``api_modules`` and check them when the builder starts."""
    app.add_config_value("api_modules", [], "env", types=(list,))
    app.connect("builder-inited", _check)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
