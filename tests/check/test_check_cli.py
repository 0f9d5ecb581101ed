"""``lxt-fx check MODEL`` on a local model directory."""

from __future__ import annotations

from pathlib import Path

from conftest import make_model
from helpers import word_tokenizer

from lxt_fx.cli.check import check_main


def test_check_cli_on_a_local_directory(tmp_path: Path, capsys) -> None:
    folder = tmp_path / "tiny"
    make_model("llama", "sdpa").save_pretrained(folder)
    word_tokenizer(["the", "capital", "of", "france", "is", "paris"]).save_pretrained(folder)
    html = tmp_path / "report.html"
    code = check_main([str(folder), "--prompt", "the capital of france is", "--html", str(html), "--width", "150",
                       "--no-zero-bias"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "rules applied" in out and "checks" in out and "per block" in out and "blocks 0–1" in out
    assert html.read_text().count("<table") >= 3
    assert check_main([str(tmp_path / "missing")]) == 2


def test_check_cli_takes_the_model_as_an_option_too(tmp_path: Path, capsys) -> None:
    folder = tmp_path / "tiny"
    make_model("llama", "sdpa").save_pretrained(folder)
    word_tokenizer(["the", "capital", "of", "france", "is", "paris"]).save_pretrained(folder)
    args = ["--prompt", "the capital of", "--width", "150", "--no-zero-bias"]
    assert check_main([str(folder), *args]) == 0
    positional = capsys.readouterr().out
    assert check_main(["--model", str(folder), *args]) == 0  # like every other sub-command
    by_option = capsys.readouterr().out
    assert "rules applied" in by_option
    def head(out: str) -> list[str]:  # the prompt and the rewrite line, without the timings
        return [line.split(" · capture")[0] for line in out.splitlines()[:2]]

    assert head(by_option) == head(positional) and "LlamaForCausalLM" in head(by_option)[1]
    assert check_main(["--model", str(tmp_path / "missing")]) == 2
    assert "no such directory" in capsys.readouterr().err
    assert check_main([str(folder), "--model", str(tmp_path / "other")]) == 2  # two different models
    assert "two models given" in capsys.readouterr().err
