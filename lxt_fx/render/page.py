"""The HTML page around every renderer's body: the stylesheet (scoped under ``.lxt``), the page, the file."""

from __future__ import annotations

import os
from html import escape

from .common import hex_colour, rgb

CSS = """
.lxt { font-family: system-ui, sans-serif; color: #222; max-width: 60em; }
.lxt h1 { font-size: 1.25em; }
.lxt .row { margin: 1.2em 0; }
.lxt .head { font-size: 0.95em; margin-bottom: 0.4em; }
.lxt .seg { font-weight: bold; font-size: 0.85em; margin-right: 0.4em; }
.lxt .text { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: 1.05em;
             line-height: 2.0; }
.lxt .tok { white-space: pre-wrap; overflow-wrap: anywhere; padding: 0.15em 0.05em; border-radius: 3px; }
.lxt .tok:hover { outline: 1px solid #333; }
.lxt .mark { text-decoration: underline; }
.lxt .legend { display: flex; align-items: center; gap: 0.5em; font-size: 0.85em; margin-top: 0.6em; }
.lxt .bar { display: inline-block; width: 16em; height: 0.9em; border: 1px solid #ccc;
            background: linear-gradient(to right, %(neg)s, #ffffff, %(pos)s); }
.lxt .grid { display: grid; gap: 0; width: max-content; border: 1px solid #ccc; }
.lxt .grid div { width: 6px; height: 6px; }
.lxt .report { font-size: 0.8em; color: #555; margin-top: 1.5em; }
.lxt table.trace { border-collapse: collapse; font-size: 0.8em; }
.lxt table.trace td, .lxt table.trace th { padding: 0.1em 0.35em; text-align: center; white-space: pre; }
.lxt table.trace th { font-weight: normal; font-family: ui-monospace, monospace; }
"""


def css() -> str:
    """The stylesheet of every HTML renderer (scoped under ``.lxt``)."""
    return CSS % {"neg": hex_colour(rgb(-1.0)), "pos": hex_colour(rgb(1.0))}


def full_page(body: str, title: str) -> str:
    """A self-contained HTML page: ``body`` (already inside its ``.lxt`` block) with the stylesheet."""
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>'
            f'<style>body {{ margin: 2em; background: #fff; }}{css()}</style></head><body>{body}</body></html>\n')


def page(body: str, title: str) -> str:
    """A full self-contained HTML page around ``body`` (which uses the ``.lxt`` styles)."""
    return full_page(f'<div class="lxt">{body}</div>', title)


def write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` (UTF-8) to ``path``, creating its folder."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
