"""The Python blocks of README.md and docs/*.md are tests (run by ``make test-docs`` with
pytest-markdown-docs); this checks that every one of them is collected — none skipped with ``notest``,
none hidden behind another language tag — without running them (they load SmolLM2)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def test_every_python_block_of_the_docs_is_collected() -> None:
    pytest.importorskip("pytest_markdown_docs")
    fences = {p.relative_to(ROOT).as_posix(): [line for line in p.read_text(encoding="utf-8").splitlines()
                                                if line.startswith("```py")] for p in DOCS}
    assert not [f for lines in fences.values() for f in lines if "notest" in f]
    done = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "tests.docs_plugin",
                           "--markdown-docs", "-p", "no:cacheprovider", *fences], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stdout + done.stderr
    collected = [line for line in done.stdout.splitlines() if "[CodeFence#" in line]
    for path, lines in fences.items():
        assert sum(line.startswith(f"{path}::") for line in collected) == len(lines), (path, collected)
    assert sum(map(len, fences.values())) >= 8  # the README quickstart and composite, debugging.md's six
