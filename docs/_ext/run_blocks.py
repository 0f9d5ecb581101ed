"""Sphinx extension: run every ```` ```python ```` block of every Markdown page and put its output in the page.

The pages are plain MyST Markdown with ordinary fenced blocks, the same ones ``make test-docs`` runs with
pytest-markdown-docs, and the namespaces follow the same convention: a ```` ```python ```` block starts a
fresh namespace, a ```` ```python continuation ```` block continues the namespace of the blocks before it on
the same page (as one notebook would). A block marked ``notest`` is shown and not run.

After each block the page gets, in this order:

* what the block printed to stdout, as a literal block (class ``lxt-output``);
* the value of its last line, when that line is an expression with a value other than ``None``:
  ``_repr_html_()`` as raw HTML (class ``lxt-html``), a matplotlib figure as an embedded PNG, anything
  else as its ``repr`` in a literal block — what a notebook would show.

A block that raises fails the build with the page, the line of the block and the exception
(:class:`BlockError`). ``lxt_fx.models.load`` is memoized for the build (restored at the end), so a model
such as SmolLM2 loads once for all pages, as in ``tests/docs_plugin.py``.

The outputs are inserted into the Markdown source at ``source-read`` (fenced blocks for text, ``{raw} html``
directives for HTML), so MyST parses them like any other part of the page.
"""

from __future__ import annotations

import ast
import base64
import contextlib
import io
import os
import re
import time
import traceback
from typing import Any

from markdown_it import MarkdownIt
from sphinx.application import Sphinx
from sphinx.errors import ExtensionError
from sphinx.util import logging

LOG = logging.getLogger(__name__)
PYTHON = ("py", "python", "python3")


class BlockError(ExtensionError):
    """A ```` ```python ```` block of a page raised: the page, the block's first line and the traceback."""


def fence(text: str, info: str = "text", cls: str = "lxt-output") -> str:
    """``text`` as a MyST fenced literal block with a class, its fence longer than any backtick run inside."""
    ticks = "`" * max(3, 1 + max((len(m) for m in re.findall(r"`+", text)), default=0))
    return f"\n{ticks}{{code-block}} {info}\n:class: {cls}\n\n{text.rstrip()}\n{ticks}\n"


def raw_html(html: str, cls: str = "lxt-html") -> str:
    """``html`` as a MyST ``{raw} html`` directive, wrapped in a ``<div class=cls>``."""
    ticks = "`" * max(3, 1 + max((len(m) for m in re.findall(r"`+", html)), default=0))
    return f"\n{ticks}{{raw}} html\n<div class=\"{cls}\">\n{html}\n</div>\n{ticks}\n"


def display(value: Any) -> str:
    """The page text showing a block's last value: HTML, a figure as PNG, else its repr."""
    html = getattr(value, "_repr_html_", None)
    if callable(html):
        out = html()
        if out is not None:
            return raw_html(out)
    if hasattr(value, "savefig"):  # a matplotlib figure: a PNG inlined as a data URI
        buf = io.BytesIO()
        value.savefig(buf, format="png", dpi=110, bbox_inches="tight")
        data = base64.b64encode(buf.getvalue()).decode("ascii")
        return raw_html(f'<img alt="figure" src="data:image/png;base64,{data}"/>', cls="lxt-figure")
    return fence(repr(value), info="text", cls="lxt-output lxt-repr")


def run_block(code: str, namespace: dict[str, Any], filename: str, first_line: int) -> tuple[str, Any]:
    """Execute ``code`` in ``namespace`` as a notebook cell: ``(stdout, value of the last expression or None)``.

    Line numbers in tracebacks are those of the page (``first_line`` is the block's first code line)."""
    tree = ast.parse(code, filename=filename)
    ast.increment_lineno(tree, first_line - 1)
    last = tree.body.pop() if tree.body and isinstance(tree.body[-1], ast.Expr) else None
    out = io.StringIO()
    value = None
    with contextlib.redirect_stdout(out):
        exec(compile(tree, filename, "exec"), namespace)
        if last is not None:
            value = eval(compile(ast.Expression(last.value), filename, "eval"), namespace)
    return out.getvalue(), value


def execute_page(text: str, docname: str, filename: str) -> str:
    """``text`` (a Markdown page) with each Python block's outputs inserted after it."""
    tokens = MarkdownIt("commonmark").parse(text)
    lines = text.splitlines(keepends=True)
    inserts: dict[int, str] = {}  # line index after the closing fence → text to insert there
    namespace: dict[str, Any] = {}
    for token in tokens:
        if token.type != "fence" or not token.map:
            continue
        info = token.info.split()
        if not info or info[0] not in PYTHON or "notest" in info:
            continue
        if "continuation" not in info:
            namespace = {"__name__": f"docs.{docname}"}
        first = token.map[0] + 2  # 1-based line of the block's first code line
        started = time.perf_counter()
        try:
            stdout, value = run_block(token.content, namespace, filename, first)
        except BaseException as exc:
            tb = "".join(traceback.format_exception(exc)[-6:])
            raise BlockError(f"{filename}:{first - 1}: the Python block of {docname!r} starting here raised "
                             f"{type(exc).__name__}: {exc}\n{tb}") from exc
        LOG.info(f"run_blocks: {docname}:{first - 1} ran in {time.perf_counter() - started:.1f} s")
        shown = (fence(stdout) if stdout.strip() else "") + (display(value) if value is not None else "")
        if shown:
            inserts[token.map[1]] = shown
    if not inserts:
        return text
    out: list[str] = []
    for i, line in enumerate(lines):
        if i in inserts:
            out.append(inserts[i])
        out.append(line)
    if len(lines) in inserts:
        if out and not out[-1].endswith("\n"):
            out.append("\n")
        out.append(inserts[len(lines)])
    return "".join(out)


def enabled(value: Any) -> bool:
    """``run_blocks`` as set in conf.py (a bool) or with ``-D run_blocks=0`` (a string)."""
    return str(value).strip().lower() not in ("0", "false", "no", "off", "")


def _source_read(app: Sphinx, docname: str, source: list[str]) -> None:
    if not enabled(app.config.run_blocks) or not app.env.doc2path(docname).name.endswith(".md"):
        return
    filename = str(app.env.doc2path(docname))
    source[0] = execute_page(source[0], docname, filename)


_SAVED: dict[str, Any] = {}


def _memoize_load(app: Sphinx, config: Any) -> None:
    """One ``lxt_fx.models.load`` per (name, dtype) for the whole build, undone at build-finished."""
    if not enabled(config.run_blocks):
        return
    from lxt_fx import models

    original = models.load
    cache: dict[tuple[str, Any], Any] = {}

    def load(name_or_path: Any, *args: Any, **kwargs: Any) -> Any:
        key = (str(name_or_path).lower(), args, tuple(sorted(kwargs.items())))
        if key not in cache:
            cache[key] = original(name_or_path, *args, **kwargs)
        return cache[key]

    _SAVED["load"] = original
    models.load = load


def _restore_load(app: Sphinx, exc: BaseException | None) -> None:
    if "load" in _SAVED:
        from lxt_fx import models

        models.load = _SAVED.pop("load")


def setup(app: Sphinx) -> dict[str, Any]:
    """Register the ``run_blocks`` option (default on; ``-D run_blocks=0`` shows the blocks unexecuted)."""
    app.add_config_value("run_blocks", True, "env", types=(bool, int))
    os.environ.setdefault("COLUMNS", "110")  # rich renders tables at this width when printing to a buffer
    app.connect("config-inited", _memoize_load)
    app.connect("source-read", _source_read)
    app.connect("build-finished", _restore_load)
    return {"version": "1", "parallel_read_safe": False, "parallel_write_safe": True}
