"""LaTeX heatmap (``xcolor`` boxes, one per token) and PDF through ``xelatex`` or ``pdflatex``.

Every LaTeX special character of token text and labels is escaped (``# $ % & _ { } ~ ^ \\`` and the ones
that print wrongly in text mode: ``< > |``); ``$`` is its font slot (``\\char36``), since ``\\$`` in
typewriter type needs the TS1 symbol font, a METAFONT bitmap where Latin Modern is not installed. With
``xelatex`` any Unicode goes through as it is; for ``pdflatex`` (``unicode=False``) characters outside Latin-1
are written as ``⟨U+XXXX⟩``. ``make test-latex`` compiles it (``tests/render/test_latex.py``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ..tracing.errors import LXTError
from .common import NEWLINE, TAB, Row, report_summary, require_tokens, rgb, rows, scale_note, text_rgb

if TYPE_CHECKING:
    from ..attribution import Attribution

ENGINES = ("xelatex", "pdflatex")

_SPECIAL = {
    "\\": r"\textbackslash{}", "{": r"\{", "}": r"\}", "#": r"\#", "$": r"\char36{}", "%": r"\%", "&": r"\&",
    "_": r"\_", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "<": r"\textless{}",
    ">": r"\textgreater{}", "|": r"\textbar{}",
}
# Symbols the renderers use that text fonts lack: drawn from the math fonts every LaTeX has.
_SYMBOLS = {NEWLINE: r"\ensuremath{\hookleftarrow}", TAB: r"\ensuremath{\rightarrow}", "∅": r"\ensuremath{\emptyset}",
            "⟨": r"\ensuremath{\langle}", "⟩": r"\ensuremath{\rangle}", "…": r"\ldots{}", "Σ": r"\ensuremath{\Sigma}",
            "×": r"\ensuremath{\times}", "·": r"\ensuremath{\cdot}"}


class LatexNotFoundError(LXTError, RuntimeError):
    """Neither ``xelatex`` nor ``pdflatex`` (nor the engine asked for) is on ``PATH``."""


class LatexError(LXTError, RuntimeError):
    """The LaTeX engine ran and failed; the message carries the end of its log."""


def latex_escape(text: str, unicode: bool = True, spaces: bool = False) -> str:
    """``text`` safe to put in a LaTeX document in text mode.

    ``unicode=False`` writes characters outside Latin-1 as ``⟨U+XXXX⟩`` (for ``pdflatex``); ``spaces=True``
    makes every space a control space (a backslash before the space) so that leading and repeated spaces of a token stay visible.
    """
    out = []
    for ch in text:
        if ch in _SPECIAL:
            out.append(_SPECIAL[ch])
        elif ch in _SYMBOLS:
            out.append(_SYMBOLS[ch])
        elif ch == " " and spaces:
            out.append("\\ ")
        elif ch in "\n\r":
            out.append(" ")
        elif ch == "\t":
            out.append(_SYMBOLS[TAB])
        elif not unicode and ord(ch) > 0xFF:
            out.append(rf"\ensuremath{{\langle}}U+{ord(ch):04X}\ensuremath{{\rangle}}")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(rf"\ensuremath{{\langle}}{ord(ch):02x}\ensuremath{{\rangle}}")
        else:
            out.append(ch)
    return "".join(out)


_PREAMBLE = r"""\documentclass[11pt]{article}
\ifdefined\XeTeXversion
  \usepackage{fontspec}
\else
  % T1 only with Latin Modern: T1 without it falls back to METAFONT bitmaps (blurry Type 3 fonts in the PDF);
  % the default OT1 Computer Modern stays vector, and < > | are drawn from the math fonts (\textless, ...)
  \IfFileExists{lmodern.sty}{\usepackage[T1]{fontenc}\usepackage{lmodern}}{}
  \usepackage[utf8]{inputenc}
\fi
\usepackage{xcolor}
\pagestyle{empty}
\setlength{\parindent}{0pt}
\setlength{\fboxsep}{1.5pt}
% wrapped lines of token boxes keep a gap (the boxes are taller than the baseline skip)
\setlength{\lineskip}{2.5pt}
\setlength{\lineskiplimit}{2.5pt}
\addtolength{\textwidth}{3cm}
\addtolength{\oddsidemargin}{-1.5cm}
\newcommand{\lxttok}[3]{\colorbox[RGB]{#1}{\strut\textcolor[RGB]{#2}{\texttt{#3}}}\hspace{0pt}}
"""


def _rgb(colour: tuple[int, int, int]) -> str:
    return ",".join(str(c) for c in colour)


def _number(value: float, spec: str) -> str:
    """``value`` formatted with ``spec``, its sign a true minus (``-`` in text is a hyphen)."""
    return f"{value:{spec}}".replace("-", r"\ensuremath{-}")


def _row_latex(view: Row, score_label: str, unicode: bool) -> str:
    lines = [rf"\textbf{{explained:}} {latex_escape(view.label, unicode)}\quad "
             rf"{latex_escape(score_label, unicode)} {_number(view.score, '.4f')}\quad "
             rf"\ensuremath{{\Sigma}} relevance {_number(view.total, '.4f')}\par\smallskip", r"{\raggedright"]
    for name, tokens in view.segments:
        if name:
            lines.append(rf"\textbf{{{latex_escape(name, unicode)}:}} ")
        for token in tokens:
            lines.append(rf"\lxttok{{{_rgb(rgb(token.value))}}}{{{_rgb(text_rgb(token.value))}}}"
                         rf"{{{latex_escape(token.shown, unicode, spaces=True)}}}%")
            if "\n" in token.text:
                lines.append(r"\newline%")
        if name:
            lines.append(r"\par")
    lines.append(r"\par}\smallskip")
    bar = "".join(rf"\colorbox[RGB]{{{_rgb(rgb(-1 + 2 * k / 10))}}}{{\strut\hspace{{0.6em}}}}" for k in range(11))
    lines.append(rf"{{\small {_number(-view.scale, '+.3g')}\ {bar}\ {_number(view.scale, '+.3g')}\quad blue: against the target, "
                 rf"red: for it; {latex_escape(scale_note(view), unicode)}}}\par\bigskip")
    return "\n".join(lines)


def to_latex(attribution: Attribution, *, tokenizer: Any = None, skip_first: bool = False,
             labels: Sequence[str] | None = None, title: str = "lxt-fx relevance", score_label: str = "logit",
             unicode: bool = True, standalone: bool = True) -> str:
    """The heatmap of every row as LaTeX: a complete document (``standalone=True``) or just the body.

    Each token is a ``\\colorbox`` in its relevance colour (normalized to [-1, 1]); every special
    character is escaped (see :func:`latex_escape`). The body needs ``xcolor`` and the ``\\lxttok`` macro
    of the preamble.
    """
    require_tokens(attribution, "to_latex")
    views = rows(attribution, tokenizer=tokenizer, skip_first=skip_first, labels=labels)
    body = "\n".join([rf"{{\large\bfseries {latex_escape(title, unicode)}}}\par\medskip"]
                     + [_row_latex(v, score_label, unicode) for v in views]
                     + [rf"{{\footnotesize\color{{gray}} {latex_escape(report_summary(attribution), unicode)}}}"])
    if not standalone:
        return body + "\n"
    return f"{_PREAMBLE}\\begin{{document}}\n{body}\n\\end{{document}}\n"


def find_engine(engine: str | None = None) -> str:
    """The path of ``engine``, or of ``xelatex`` else ``pdflatex``; :class:`LatexNotFoundError` naming the
    missing program(s) otherwise."""
    wanted = (engine,) if engine else ENGINES
    for name in wanted:
        found = shutil.which(name)
        if found:
            return found
    names = " or ".join(wanted)
    raise LatexNotFoundError(f"save_pdf needs {names}, and {'it is' if engine else 'neither is'} on PATH: "
                             "install TeX Live (Debian: apt-get install texlive-xetex, or texlive-latex-recommended "
                             "for pdflatex), or write the .tex with to_latex() and compile it elsewhere")


def save_pdf(attribution: Attribution, path: str | os.PathLike[str], *, engine: str | None = None,
             timeout: float = 180.0, **options: Any) -> str:
    """Compile :func:`to_latex` into a PDF at ``path`` with ``xelatex`` (else ``pdflatex``, or ``engine``);
    returns the engine used. Raises :class:`LatexNotFoundError` naming the missing program, or
    :class:`LatexError` with the end of the log when compilation fails."""
    exe = find_engine(engine)
    unicode = "pdflatex" not in os.path.basename(exe)
    source = to_latex(attribution, unicode=unicode, **options)
    with tempfile.TemporaryDirectory(prefix="lxt-fx-latex-") as work:
        tex = os.path.join(work, "heatmap.tex")
        with open(tex, "w", encoding="utf-8") as f:
            f.write(source)
        try:
            done = subprocess.run([exe, "-interaction=nonstopmode", "-halt-on-error", "-no-shell-escape",
                                   "heatmap.tex"], cwd=work, capture_output=True, text=True, errors="replace",
                                  timeout=timeout, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired as exc:
            raise LatexError(f"{os.path.basename(exe)} did not finish within {timeout:.0f} s") from exc
        pdf = os.path.join(work, "heatmap.pdf")
        if done.returncode != 0 or not os.path.isfile(pdf):
            tail = " | ".join(line for line in done.stdout.splitlines()[-12:] if line.strip())
            raise LatexError(f"{os.path.basename(exe)} failed (exit {done.returncode}): {tail}")
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        shutil.copyfile(pdf, path)
    return os.path.basename(exe)
