"""``lxt-fx circuit`` on a tiny local model directory (in process): the page and the JSON hold one graph."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import save_tiny_causal_lm

from lxt_fx.cli import main

WORDS = ["the", "capital", "of", "france", "is", "paris", "spain", "madrid"]


def test_circuit_writes_the_page_and_the_json(tmp_path: Path, capsys) -> None:
    tiny = save_tiny_causal_lm(tmp_path / "tiny", WORDS)
    html, data = tmp_path / "g.html", tmp_path / "g.json"
    assert main(["circuit", "--model", str(tiny), "--prompt", "the capital of france is", "--corrupt",
                 "the capital of spain is", "--html", str(html), "--json", str(data), "--coverage", "0.9"]) == 0
    graph = json.loads(data.read_text())
    assert graph["nodes"] and all(n["patching"] is not None for n in graph["nodes"])
    assert all(e["target"] in {n["id"] for n in graph["nodes"]} | {"output"} for e in graph["edges"])
    page = html.read_text()
    assert all(f'data-id="{n["id"]}"' in page for n in graph["nodes"])
    assert "nodes" in capsys.readouterr().out
    assert main(["circuit", "--model", str(tiny), "--prompt", "the capital of france is"]) == 2  # nothing to write
    assert "give --html" in capsys.readouterr().err
