"""``lxt-fx`` (lxt_fx.cli) through ``subprocess`` on a tiny local model directory, and its error paths:
unknown model name, missing files, a target that is not one token — each one line with a hint and a
non-zero exit status."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest
from conftest import save_tiny_causal_lm

from lxt_fx.cli import main

WORDS = ["the", "capital", "of", "france", "is", "paris", "a", "b", "c"]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
       "NO_COLOR": "1", "COLUMNS": "120"}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    """A local causal-LM directory: a 2-block random Llama and a word-level tokenizer."""
    return save_tiny_causal_lm(tmp_path_factory.mktemp("tiny"), WORDS)


def lxt_fx(*args: str, cwd: Path | None = None, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """``lxt-fx ARGS`` in a subprocess; ``stdin``: text piped to it (else no standard input, /dev/null)."""
    return subprocess.run([sys.executable, "-m", "lxt_fx.cli", *args], capture_output=True, text=True, env=ENV,
                          cwd=cwd, timeout=240, input=stdin, stdin=subprocess.DEVNULL if stdin is None else None)


def one_line_error(done: subprocess.CompletedProcess[str], *needles: str) -> str:
    """The run failed with exit status 2 and ONE error line (the last on stderr; progress lines such as
    'loaded … in 1.2 s' may come before it)."""
    # Log lines of other libraries (torch's "W1129 23:39:24.56 … ]" format, e.g. torchao's deprecation
    # warnings when transformers imports it) are not ours.
    lines = [line for line in done.stderr.splitlines() if line.strip() and not re.match(r"[WIEF]\d{4} ", line)]
    assert done.returncode == 2, (done.returncode, done.stdout, done.stderr)
    errors = [line for line in lines if "error" in line.lower()]
    assert len(errors) == 1 and lines[-1] == errors[0], done.stderr
    line = errors[0]
    assert line.startswith("lxt-fx: error: ") and "(hint: " in line, line
    for needle in needles:
        assert needle in line, line
    return line


# ---- through subprocess ------------------------------------------------------------------------------------


def test_explain_writes_every_output(tiny: Path, tmp_path: Path) -> None:
    done = lxt_fx("explain", "--model", str(tiny), "--prompt", "the capital of france is", "--prompt", "a b c",
                  "--target", "paris", "--html", "out/h.html", "--json", "out/h.json", "--png", "out/h.png",
                  "--trace", "out/trace.html", "--latex", "out/h.tex", "--skip-first", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "the capital of france is" in done.stdout and "a b c" in done.stdout
    assert done.stdout.count("explained: 'paris'") == 2 and "0 unhandled" in done.stdout
    out = tmp_path / "out"
    data = json.loads((out / "h.json").read_text())
    assert [row["text"] for row in data["rows"]] == [["the", " capital", " of", " france", " is"], ["a", " b", " c"]]
    assert data["rows"][0]["target_text"] == "paris" and len(data["rows"][0]["relevance"]) == 5

    class Tokens(HTMLParser):
        count = 0

        def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
            self.count += tag == "span" and dict(attrs).get("class") == "tok"

    parser = Tokens()
    parser.feed((out / "h.html").read_text())
    assert parser.count == 8
    assert "<table" in (out / "trace.html").read_text() and r"\lxttok" in (out / "h.tex").read_text()
    if (out / "h.png").exists():  # matplotlib (the viz extra) present
        assert (out / "h.png").read_bytes()[:4] == b"\x89PNG"
    else:
        assert "matplotlib" in done.stderr


def test_the_process_explains_bit_identically_to_explain_in_process(tiny: Path, tmp_path: Path) -> None:
    """``python -m lxt_fx.cli explain`` (the process entry: rare garbage collection, exit without teardown),
    cold and then warm from the capture cache it wrote, gives the relevance, target and score of
    ``lxt_fx.explain`` in this process on an uncached export, bit for bit."""
    import torch

    from lxt_fx import explain, models

    prompts = ["the capital of france is", "a b c"]
    env = {**ENV, "LXT_FX_CACHE": str(tmp_path / "cache")}
    rows = []
    for run in ("cold", "warm"):
        done = subprocess.run([sys.executable, "-m", "lxt_fx.cli", "explain", "--model", str(tiny), "--prompt",
                               prompts[0], "--prompt", prompts[1], "--json", f"{run}.json"], capture_output=True,
                              text=True, env=env, cwd=tmp_path, timeout=240, stdin=subprocess.DEVNULL)
        assert done.returncode == 0, done.stderr
        rows.append(json.loads((tmp_path / f"{run}.json").read_text())["rows"])
    assert len(list((tmp_path / "cache").glob("*.lxtcap"))) == 1  # the warm run read what the cold one wrote
    model, tokenizer = models.load(str(tiny))
    att = explain(model, prompts, tokenizer=tokenizer)  # LXT_FX_CACHE is off in the suite: a fresh export
    for got in rows:
        for i, row in enumerate(got):
            keep = att.kept(i)
            assert row["input_ids"] == att.input_ids[i][keep].tolist()
            assert torch.equal(torch.tensor(row["relevance"], dtype=att.relevance.dtype), att.relevance[i][keep])
            assert (row["target_id"], row["target_score"]) == (int(att.target_ids[i]), float(att.target_scores[i]))


def test_generate_explains_the_span_and_each_token(tiny: Path, tmp_path: Path) -> None:
    done = lxt_fx("generate", "--model", str(tiny), "--prompt", "the capital of", "--max-new-tokens", "3",
                  "--per-token", "--json", str(tmp_path / "g.json"), "--html", str(tmp_path / "g.html"))
    assert done.returncode == 0, done.stderr
    data = json.loads((tmp_path / "g.json").read_text())
    assert len(data["generated_ids"]) == 3 and "generated token 3 of 3" in done.stdout
    span = data["span"]["rows"][0]
    per = data["per_token"]["rows"]
    assert span["target_score"] == pytest.approx(sum(r["target_score"] for r in per), rel=1e-5)
    assert [r["target_id"] for r in per] == data["generated_ids"]
    # explain_generation's matrix: row k is per-token row k, over prompt + generated tokens
    matrix = data["matrix"]
    assert len(matrix) == 3 and all(m[: len(r["relevance"])] == r["relevance"] for m, r in zip(matrix, per, strict=True))
    page = (tmp_path / "g.html").read_text()  # the page where a generated token is clicked to see its map
    assert 'id="lxt-data"' in page and page.count('class="tok gen') == 3


# What lxt-fx itself prints on stderr while it works (the rich status lines); anything else is another
# library's noise, e.g. torch's "W1207 19:32:51 … _pytree.py:630] <enum 'KernelPreference'> …" when a torchao
# build that does not match torch is importable (make venv keeps torchao out of .venv: see the Makefile).
OURS = re.compile(r"(loaded \S+ from .* in [0-9.]+ s|explained in [0-9.]+ s|wrote .*)$")


def test_explain_takes_the_prompt_positionally_and_prints_only_its_own_lines(tiny: Path) -> None:
    """``lxt-fx explain "the capital of"`` (no --prompt): explained, and every stderr line is lxt-fx's own."""
    done = lxt_fx("explain", "the capital of", "--model", str(tiny), "--top", "0")
    assert done.returncode == 0, done.stderr
    assert "the capital of" in done.stdout and "explained: " in done.stdout
    foreign = [line for line in done.stderr.splitlines() if line.strip() and not OURS.match(line.strip())]
    assert not foreign, foreign


def test_the_prompt_can_come_on_standard_input(tiny: Path, tmp_path: Path) -> None:
    """``echo "the capital of" | lxt-fx explain``, and ``-`` as the prompt: the same explanation as the option."""
    piped = lxt_fx("explain", "--model", str(tiny), "--json", str(tmp_path / "piped.json"), stdin="the capital of\n")
    dash = lxt_fx("explain", "-", "--model", str(tiny), "--json", str(tmp_path / "dash.json"), stdin="the capital of")
    for done in (piped, dash):
        assert done.returncode == 0, done.stderr
    rows = [json.loads((tmp_path / f"{name}.json").read_text())["rows"][0] for name in ("piped", "dash")]
    assert rows[0]["text"] == rows[1]["text"] == ["the", " capital", " of"]
    assert rows[0]["relevance"] == rows[1]["relevance"]


def test_generate_takes_the_prompt_positionally(tiny: Path, tmp_path: Path) -> None:
    assert main(["generate", "the capital of", "--model", str(tiny), "--max-new-tokens", "1", "--top", "0",
                 "--json", str(tmp_path / "g.json")]) == 0
    assert json.loads((tmp_path / "g.json").read_text())["prompt"] == "the capital of"


def test_unknown_model_name() -> None:
    one_line_error(lxt_fx("explain", "--model", "gpt-17", "--prompt", "hi"), "unknown model 'gpt-17'",
                   "smollm2")


def test_missing_prompt_file(tmp_path: Path) -> None:
    one_line_error(lxt_fx("explain", "--prompt-file", str(tmp_path / "nope.txt")), "no such file", "nope.txt")


def test_target_that_is_not_one_token(tiny: Path) -> None:
    line = one_line_error(lxt_fx("explain", "--model", str(tiny), "--prompt", "the capital of",
                                 "--target", "france is"), "'france is' is 2 tokens", "--target")
    assert "not one" in line


def test_target_outside_the_vocabulary(tiny: Path) -> None:
    """A word the word-level vocabulary does not hold is refused by name, not explained as [UNK]."""
    one_line_error(lxt_fx("explain", "--model", str(tiny), "--prompt", "the capital of france is",
                          "--target", "berlin"), "'berlin' is not in the vocabulary")


# ---- in process (same code path, cheaper) ------------------------------------------------------------------


def test_missing_model_directory_and_file(tmp_path: Path, capsys) -> None:
    assert main(["explain", "--model", str(tmp_path / "no" / "such"), "--prompt", "x"]) == 2
    assert "no such directory" in capsys.readouterr().err
    (tmp_path / "weights.bin").write_bytes(b"")
    assert main(["explain", "--model", str(tmp_path / "weights.bin"), "--prompt", "x"]) == 2
    err = capsys.readouterr().err
    assert "is a file, not a model directory" in err and len(err.strip().splitlines()) == 1


def test_help_and_usage_errors(capsys) -> None:
    assert main(["--help"]) == 0
    top = capsys.readouterr().out
    for command in ("explain", "generate", "check", "evaluate"):
        assert command in top
    assert main(["explain", "--help"]) == 0
    text = capsys.readouterr().out
    for option in ("--model", "--prompt", "--target", "--html", "--pdf", "--png", "--json", "--trace",
                   "--skip-first", "examples:"):
        assert option in text
    assert main(["generate", "--help"]) == 0
    assert "--max-new-tokens" in capsys.readouterr().out
    assert main(["check", "--help"]) == 0 and "lxt-fx check" in capsys.readouterr().out
    assert main(["evaluate", "--help"]) == 0 and "lxt-fx evaluate" in capsys.readouterr().out
    assert main(["explain", "--bogus"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--bogus" in err[0] and "hint" in err[0]
    assert main(["generate", "--prompt", "x", "--max-new-tokens", "0"]) == 2
    assert main(["explain", "--prompt", "  "]) == 2
    assert "empty" in capsys.readouterr().err


def test_pdf_without_latex_names_the_program(tiny: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no xelatex, no pdflatex
    code = main(["explain", "--model", str(tiny), "--prompt", "the capital", "--pdf", str(tmp_path / "h.pdf"),
                 "--json", str(tmp_path / "h.json")])
    err = capsys.readouterr().err
    assert code == 1 and "xelatex or pdflatex" in err and "hint" in err
    assert (tmp_path / "h.json").exists()  # the other outputs are still written


def test_console_entry_point_is_declared() -> None:
    from importlib.metadata import entry_points

    found = [ep for ep in entry_points(group="console_scripts") if ep.name == "lxt-fx"]
    if not found:
        pytest.skip("lxt-fx is not installed as a distribution (pip install -e .)")
    # the process entry (an install made before it existed declares main, which does the same but slower)
    assert found[0].value in ("lxt_fx.cli:run", "lxt_fx.cli:main") and callable(found[0].load())


# ---- every failure is one line, whatever raised it; --debug shows the traceback ---------------------------


def one_error_line(err: str, *needles: str) -> str:
    """``err`` (captured stderr) ends with ``lxt-fx: error: … (hint: …)`` and holds no other error line
    (progress lines such as 'loaded … in 0.2 s' may come before it)."""
    lines = [line for line in err.splitlines() if line.strip()]
    errors = [line for line in lines if "error" in line.lower()]
    assert len(errors) == 1 and lines[-1] == errors[0], err
    line = errors[0]
    assert line.startswith("lxt-fx: error: ") and "(hint: " in line, line
    for needle in needles:
        assert needle in line, line
    return line


def test_unexpected_exception_is_one_line_and_debug_prints_the_traceback(tiny: Path, monkeypatch, capsys) -> None:
    import importlib

    def broken(*args, **kwargs):
        raise RuntimeError("the graph\nfell over")

    monkeypatch.setattr(importlib.import_module("lxt_fx.explain"), "explain", broken)
    code = main(["explain", "--model", str(tiny), "--prompt", "the capital"])
    assert code == 1
    one_error_line(capsys.readouterr().err, "RuntimeError: the graph fell over", "--debug")
    code = main(["explain", "--model", str(tiny), "--prompt", "the capital", "--debug"])
    err = capsys.readouterr().err
    assert code == 1 and "Traceback (most recent call last)" in err and "in broken" in err
    assert err.strip().splitlines()[-1].startswith("lxt-fx: error: RuntimeError")


def test_corrupt_weights_file_is_one_line(tiny: Path, tmp_path: Path, capsys) -> None:
    import shutil

    folder = tmp_path / "corrupt"
    shutil.copytree(tiny, folder)
    (folder / "model.safetensors").write_bytes(b"not a safetensors file")  # raised SafetensorError raw
    assert main(["explain", "--model", str(folder), "--prompt", "the capital"]) == 2
    one_error_line(capsys.readouterr().err, "cannot load", "SafetensorError")
    assert main(["check", str(folder)]) == 2
    one_error_line(capsys.readouterr().err, "cannot load", "SafetensorError")


def test_check_cli_errors_are_one_line(tmp_path: Path, capsys) -> None:
    assert main(["check", str(tmp_path / "no" / "such")]) == 2
    one_error_line(capsys.readouterr().err, "no such directory")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "config.json").write_text("{not json")
    assert main(["check", str(tmp_path / "bad")]) == 2
    one_error_line(capsys.readouterr().err, "cannot load")
    assert main(["check", "smollm2", "--width", "wide"]) == 2  # a usage error: one line too
    one_error_line(capsys.readouterr().err, "--width")


def test_check_cli_html_into_a_missing_folder(tmp_path: Path, capsys) -> None:
    code = main(["check", "smollm2", "--prompt", "the capital", "--no-zero-bias",
                 "--html", str(tmp_path / "no" / "such" / "r.html")])
    assert code == 2  # refused before loading the model and running the check
    one_error_line(capsys.readouterr().err, "cannot write HTML", "r.html", "does not exist")


def test_evaluate_cli_errors_are_one_line(tmp_path: Path, capsys) -> None:
    corrupt = tmp_path / "rows.jsonl"
    corrupt.write_text('{"text": "fine"}\n{"text": \n')
    assert main(["evaluate", "--data", str(corrupt)]) == 2
    one_error_line(capsys.readouterr().err, "DataFormatError", "rows.jsonl:2")
    assert main(["evaluate", "--data", str(tmp_path / "missing.jsonl")]) == 2
    one_error_line(capsys.readouterr().err, "missing.jsonl")
    assert main(["evaluate", "--data", str(corrupt), "--methods", "attnlrp,nosuch"]) == 2
    one_error_line(capsys.readouterr().err, "nosuch")
    assert main(["evaluate"]) == 2  # --data missing: a usage error, one line
    one_error_line(capsys.readouterr().err, "--data")


# ---- hints that name the real cause ------------------------------------------------------------------------


def test_generate_chat_without_a_chat_template_names_the_template(tiny: Path, capsys) -> None:
    assert main(["generate", "--model", str(tiny), "--prompt", "the capital", "--chat", "--max-new-tokens", "1"]) == 2
    line = one_error_line(capsys.readouterr().err, "no chat template", "drop --chat")
    assert "lxt-fx check" not in line


def test_a_seq2seq_directory_is_named_not_a_causal_lm(tmp_path: Path, capsys) -> None:
    import transformers as tf
    from helpers import word_tokenizer

    cfg = tf.T5Config(vocab_size=32, d_model=16, d_kv=4, d_ff=32, num_layers=1, num_heads=2, decoder_start_token_id=0)
    tf.T5ForConditionalGeneration(cfg).save_pretrained(tmp_path / "t5")
    word_tokenizer(["a", "b"]).save_pretrained(tmp_path / "t5")
    assert main(["explain", "--model", str(tmp_path / "t5"), "--prompt", "a b"]) == 2
    line = one_error_line(capsys.readouterr().err, "T5ForConditionalGeneration", "not a causal LM",
                          "AutoModelForSeq2SeqLM", "decoder_inputs")
    assert len(line) < 600 and "BertConfig" not in line  # not the list of every config class


def test_a_directory_without_config_json_says_so(tiny: Path, tmp_path: Path, capsys) -> None:
    import shutil

    folder = tmp_path / "no-config"
    shutil.copytree(tiny, folder)
    (folder / "config.json").unlink()
    assert main(["explain", "--model", str(folder), "--prompt", "the capital"]) == 2
    line = one_error_line(capsys.readouterr().err, "no config.json")
    assert "sentencepiece" not in line


def test_a_negative_target_is_an_id_refused_before_loading(tiny: Path, monkeypatch, capsys) -> None:
    import lxt_fx.models

    monkeypatch.setattr(lxt_fx.models, "load", lambda *a, **k: pytest.fail("loaded the model"))
    assert main(["explain", "--model", str(tiny), "--prompt", "the capital", "--target", "-3"]) == 2
    line = one_error_line(capsys.readouterr().err, "--target -3", "negative token id")
    assert "tokens" not in line  # not read as the text '-3'


def test_trace_of_two_prompts_draws_both(tiny: Path, tmp_path: Path, capsys) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import lxt_fx
    from lxt_fx.render import relevance_trace, trace_capture

    prompts = ["the capital of france is", "a b c"]
    args = ["explain", "--model", str(tiny), "--prompt", prompts[0], "--prompt", prompts[1], "--top", "0"]
    assert main([*args, "--trace", str(tmp_path / "t.html"), "--png", str(tmp_path / "h.png")]) == 0
    page = (tmp_path / "t.html").read_text()
    model, tok = AutoModelForCausalLM.from_pretrained(tiny).eval(), AutoTokenizer.from_pretrained(tiny)
    for prompt in prompts:  # each prompt's trace, as when explained alone
        alone = lxt_fx.explain(model, prompt, tokenizer=tok, capture=trace_capture(model))
        html = relevance_trace(alone, tokenizer=tok).to_html(fragment=True)
        head = html[html.index("<h1>"):].split("</tr>")[0]  # the label and the tokens
        assert head in page
    assert page.count('<table class="trace">') == 2
    if (tmp_path / "h.png").exists():  # matplotlib present: the PNG trace too
        assert main([*args, "--trace", str(tmp_path / "t.png")]) == 0
        assert (tmp_path / "t.png").read_bytes()[:4] == b"\x89PNG"


def test_context_and_question_rank_the_context_sentences(tiny: Path, tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("the capital of france is paris. a b c.\n\nb c a.\n", encoding="utf-8")
    done = lxt_fx("explain", "--model", str(tiny), "--context", "notes.txt", "--question", "the capital of france",
                  "--json", "spans.json", "--html", "spans.html", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "spans ranked for" in done.stdout and "outside the spans" in done.stdout
    data = json.loads((tmp_path / "spans.json").read_text())
    assert [s["text"] for s in data["spans"]] == ["the capital of france is paris.", "a b c.", "b c a."]
    assert sum(s["relevance"] for s in data["spans"]) + data["outside"] == pytest.approx(data["total"], abs=1e-6)
    best = max(data["spans"], key=lambda s: s["relevance"])
    assert f"#1 &nbsp; <b>{best['label']}</b>" in (tmp_path / "spans.html").read_text(encoding="utf-8")
    one_line_error(lxt_fx("explain", "--model", str(tiny), "--context", "notes.txt", cwd=tmp_path), "--question")
    one_line_error(lxt_fx("explain", "--model", str(tiny), "--question", "why", "--prompt", "a", cwd=tmp_path),
                   "--context")
