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


def test_index_features_with_a_glob_place(tiny: Path, tmp_path: Path, capsys) -> None:
    data = tmp_path / "texts.jsonl"
    data.write_text("\n".join(json.dumps({"text": t}) for t in ["the capital of france is paris", "a b c a b"]))
    common = ["--data", str(data), "--length", "6", "--chunk-size", "2"]
    # a glob that matches two places: said so, with both names (not "no latent relevance captured at …")
    assert main(["index-features", "--model", str(tiny), "--place", "model.layers.*.mlp.down_proj:input",
                 "--out", str(tmp_path / "two"), *common]) == 2
    err = capsys.readouterr().err
    assert "matches 2 modules" in err and "'model.layers.1.mlp.down_proj:input'" in err
    assert "no latent relevance captured" not in err
    # a glob that matches one place: the index of that place, the same as naming it
    assert main(["index-features", "--model", str(tiny), "--place", "model.layers.1*.mlp.down_proj:input",
                 "--out", str(tmp_path / "glob"), *common]) == 0
    assert main(["index-features", "--model", str(tiny), "--place", "model.layers.1.mlp.down_proj:input",
                 "--out", str(tmp_path / "named"), *common]) == 0
    glob, named = FeatureIndex.load(tmp_path / "glob"), FeatureIndex.load(tmp_path / "named")
    assert glob.place == named.place == "model.layers.1.mlp.down_proj:input"
    assert (glob.act_max == named.act_max).all() and (glob.rel_sum == named.rel_sum).all()
    capsys.readouterr()
    # a typo: the "did you mean" list and the top level name the model's modules only
    assert main(["index-features", "--model", str(tiny), "--place", "model.layerz.0", "--out", str(tmp_path / "x"),
                 *common]) == 2
    err = capsys.readouterr().err
    assert "did you mean 'model.layers.0'" in err and "_empty_nn_module_stack" not in err


def test_neuron_card_names_a_target_the_tokenizer_does_not_know(tiny: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lxt_fx import features

    model, tok = AutoModelForCausalLM.from_pretrained(tiny).eval(), AutoTokenizer.from_pretrained(tiny)
    unknown = len(tok) + 20
    assert tok.convert_ids_to_tokens([unknown]) == [None]
    index = features.build_index(model, tok, PLACE, tmp_path / "idx", ["the capital of france", "a b c"], length=4,
                                 chunk_size=2, progress=False)
    heat = features.conditional(model, "the capital of", tokenizer=tok, place=PLACE, neurons=[3], target=unknown)
    assert heat.target_tokens == [f"⟨id {unknown}⟩"]
    page = index.card(3, heat).to_html()
    assert f"relevance for ⟨id {unknown}⟩ flowing" in page and "None" not in page
