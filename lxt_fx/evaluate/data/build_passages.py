"""Rebuild ``passages.jsonl`` from text that ships with CPython and Debian (run once; kept for provenance).

    HF_HUB_OFFLINE=1 python lxt_fx/evaluate/data/build_passages.py

Sources, all freely licensed and present offline:
* the Python Language Reference topics that CPython ships as ``Lib/pydoc_data/topics.py`` (the text of
  ``help("for")`` etc.; Python documentation, PSF License Version 2);
* docstrings of CPython standard-library modules (PSF License Version 2);
* the Creative Commons CC0 1.0 legal code, ``/usr/share/common-licenses/CC0-1.0`` (itself CC0-1.0).

A passage is one prose paragraph (wrapped lines joined; code blocks, grammar rules, tables and lists left
out) of 32–128 SmolLM2 tokens; at most two per topic or module, so the set covers many subjects.
"""

from __future__ import annotations

import importlib
import json
import re
import sys
from pathlib import Path

OUT = Path(__file__).with_name("passages.jsonl")
MODULES = ["abc", "argparse", "ast", "asyncio", "bisect", "calendar", "codecs", "collections", "contextlib",
           "copy", "csv", "dataclasses", "datetime", "decimal", "difflib", "doctest", "email", "enum",
           "fractions", "functools", "gettext", "glob", "gzip", "heapq", "hmac", "html", "imaplib", "inspect",
           "ipaddress", "json", "locale", "logging", "mailbox", "numbers", "optparse", "os", "pathlib",
           "pickle", "pickletools", "pprint", "queue", "random", "re", "sched", "secrets", "shelve", "shlex",
           "shutil", "smtplib", "socket", "statistics", "string", "subprocess", "tarfile", "tempfile",
           "textwrap", "threading", "timeit", "tokenize", "trace", "turtle", "typing", "unittest", "uuid",
           "warnings", "weakref", "zipfile", "zipimport"]
PSF = "PSF-2.0 (Python Software Foundation License Version 2)"


def paragraphs(text: str) -> list[str]:
    """Prose paragraphs: blocks separated by blank lines, not indented code, joined into one line."""
    out = []
    for block in re.split(r"\n\s*\n", text):
        lines = block.split("\n")
        if not lines or lines[0].startswith(("   ", "\t", ">>>", "*", "-", "+", "|", "=", "Note:", "Changed",
                                             "New in", "Deprecated", "See also")):
            continue
        if any(ln.startswith("      ") for ln in lines[1:]) or "::=" in block or "  |" in block:
            continue
        para = " ".join(ln.strip() for ln in lines).strip()
        if not para or para.endswith(":") or not para[0].isupper():
            continue
        letters = sum(c.isalpha() or c.isspace() for c in para) / len(para)
        if letters < 0.88 or para.count("(") > 4 or "``" in para or "http" in para:
            continue
        out.append(para)
    return out


def main() -> int:
    from transformers import AutoTokenizer

    from lxt_fx.models import SMOLLM2_GGUF, _package_dir

    tok = AutoTokenizer.from_pretrained(_package_dir("smollm2"), gguf_file=SMOLLM2_GGUF, local_files_only=True)
    version = "CPython {}.{}.{}".format(*sys.version_info[:3])
    candidates: list[tuple[str, str, str]] = []
    import pydoc_data.topics as topics

    for name, text in sorted(topics.topics.items()):
        for para in paragraphs(text)[:2]:
            candidates.append((para, f"{version} Lib/pydoc_data/topics.py, topic {name!r} (Python Language "
                                     "Reference)", PSF))
    for name in MODULES:
        try:
            doc = importlib.import_module(name).__doc__ or ""
        except Exception:  # noqa: BLE001 - a module that does not import here is simply skipped
            continue
        for para in paragraphs(doc)[:2]:
            candidates.append((para, f"{version} standard library, docstring of module {name!r}", PSF))
    cc0 = Path("/usr/share/common-licenses/CC0-1.0")
    if cc0.is_file():
        for para in paragraphs(cc0.read_text())[:12]:
            candidates.append((para, "Debian /usr/share/common-licenses/CC0-1.0 (Creative Commons CC0 1.0 "
                                     "Universal legal code)", "CC0-1.0"))
    rows, seen = [], set()
    for text, source, licence in candidates:
        n = len(tok(text)["input_ids"])
        if 32 <= n <= 128 and text not in seen:
            seen.add(text)
            rows.append({"id": f"p{len(rows):03d}", "text": text, "source": source, "license": licence,
                         "n_tokens_smollm2": n})
    with OUT.open("w") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    print(f"{len(rows)} passages → {OUT}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
