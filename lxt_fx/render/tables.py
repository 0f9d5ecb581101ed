"""HTML tables for the reports (:class:`~lxt_fx.rewrite.RewriteReport`, :class:`~lxt_fx.check.CheckReport`):
a self-contained fragment with its own CSS (``STYLE``, scoped to ``.lxt-check``), no scripts."""

from __future__ import annotations

import html

STYLE = """<style>
.lxt-check table{border-collapse:collapse;margin:.4em 0 1em 0;font:12px/1.35 ui-monospace,monospace}
.lxt-check caption{text-align:left;font-weight:bold;padding:.2em 0}
.lxt-check th,.lxt-check td{border:1px solid #ccc;padding:2px 6px;text-align:left;vertical-align:top}
.lxt-check td.n{text-align:right}.lxt-check .ok{color:#1a7f37;font-weight:bold}
.lxt-check .bad{color:#c62828;font-weight:bold}.lxt-check table.bad caption{color:#c62828}
.lxt-check .k-UNHANDLED{color:#c62828;font-weight:bold}.lxt-check .k-rule{color:#1565c0}
</style>"""


def escape(text: object) -> str:
    """``str(text)`` with ``& < > " '`` escaped for HTML."""
    return html.escape(str(text), quote=True)


def html_table(caption: str, header: list[str], rows: list[list[str]], cls: str = "") -> str:
    """A ``<table>`` with an optional caption and CSS class; ``header`` is escaped here, the cells of
    ``rows`` are HTML already (escape text cells with :func:`escape`)."""
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    cap = f"<caption>{escape(caption)}</caption>" if caption else ""
    klass = f" class='{cls}'" if cls else ""
    return f"<table{klass}>{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
