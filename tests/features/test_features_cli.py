"""``lxt-fx index-features`` and ``lxt-fx neuron`` on a tiny local model directory (in process)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import save_tiny_causal_lm

from lxt_fx.cli import main
from lxt_fx.features import FeatureIndex

WORDS = ["the", "capital", "of", "france", "is", "paris", "a", "b", "c"]
PLACE = "model.layers.0.mlp.down_proj:input"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return save_tiny_causal_lm(tmp_path_factory.mktemp("tiny"), WORDS)


def test_index_features_then_neuron_card(tiny: Path, tmp_path: Path, capsys) -> None:
    data = tmp_path / "texts.jsonl"
    data.write_text("\n".join(json.dumps({"text": t}) for t in ["the capital of france is paris", "a b c a b",
                                                                  "paris is a capital", "c c the of"]))
    out = tmp_path / "idx"
    assert main(["index-features", "--model", str(tiny), "--place", PLACE, "--data", str(data), "--out", str(out),
                 "--length", "6", "--chunk-size", "3"]) == 0
    said = capsys.readouterr().out
    assert "indexed 48 neurons" in said and "MiB on disk" in said
    index = FeatureIndex.load(out)
    assert index.act_max.shape == (4, 48) and index.tokens[1] == ["a", "b", "c", "a", "b"]
    html = tmp_path / "n.html"
    assert main(["neuron", "--index", str(out), "--neuron", "5", "--prompt", "the capital of", "--html", str(html)]) == 0
    page = html.read_text(encoding="utf-8")
    assert "neuron 5" in page and "conditional heatmap" in page and "<script" not in page
    assert main(["neuron", "--index", str(out), "--neuron", "99", "--html", str(html)]) == 2
    assert "outside 0…47" in capsys.readouterr().err
    assert main(["index-features", "--model", str(tiny), "--place", "model.layers.0.mlp.down_prj:input",
                 "--data", str(data), "--out", str(tmp_path / "bad")]) == 2
    assert "did you mean 'model.layers.0.mlp.down_proj:input'" in capsys.readouterr().err
