"""The steps the sub-commands share (lxt_fx.cli): --target parsing, the entry of a self-parsing
sub-command, and loading a model with its argument checked and the CPU threads set."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from conftest import save_tiny_causal_lm
from rich.console import Console

from lxt_fx.cli import CLIError, load_model, standalone_main, target_argument


@pytest.mark.parametrize(("text", "expected"), [(None, None), ("12", 12), (" 7 ", " 7 "), (" 4", " 4"), (" Paris", " Paris"),
                                                ("+4", 4), ("3a", "3a"), ("-x", "-x")])
def test_target_argument(text: str | None, expected: int | str | None) -> None:
    assert target_argument(text) == expected


@pytest.mark.parametrize("text", ["-1", "-3", "-0012"])
def test_target_argument_refuses_negative_ids_by_name(text: str) -> None:
    with pytest.raises(CLIError, match="negative token id"):  # an id, not the text '-3'
        target_argument(text)


def test_standalone_main_takes_out_debug_and_makes_failures_one_line(capsys) -> None:
    seen: list[list[str]] = []

    def run(argv: list[str]) -> int:
        seen.append(argv)
        if "--fail" in argv:
            raise ValueError("boom")
        return 3

    assert standalone_main(run, ["a", "--debug", "b"], False) == 3 and seen[-1] == ["a", "b"]
    assert standalone_main(run, ["--fail"], False) == 1          # unexpected: exit status 1, one line
    err = capsys.readouterr().err
    assert err.strip().splitlines() == [err.strip()] and "ValueError: boom" in err and "Traceback" not in err
    assert standalone_main(run, ["--fail", "--debug"], False) == 1
    assert "Traceback" in capsys.readouterr().err                # --debug anywhere: the traceback first
    assert standalone_main(run, ["--fail"], True) == 1
    assert "Traceback" in capsys.readouterr().err


def test_load_model_checks_the_argument_and_sets_threads(tmp_path: Path) -> None:
    quiet = Console(quiet=True)
    with pytest.raises(CLIError, match="unknown model"):
        load_model("no-such-model-name", quiet)
    with pytest.raises(CLIError, match="no such directory"):
        load_model(str(tmp_path / "missing" / "model"), quiet)
    folder = save_tiny_causal_lm(tmp_path / "tiny", ["the", "cat", "sat"])
    before = torch.get_num_threads()
    try:
        model, tokenizer = load_model(str(folder), quiet, threads=before + 1)
        assert torch.get_num_threads() == before + 1
        assert type(model).__name__ == "LlamaForCausalLM" and tokenizer is not None
    finally:
        torch.set_num_threads(before)


def _parsed(*argv: str):
    from lxt_fx.cli import build_parser

    return build_parser().parse_args(list(argv))


@pytest.mark.parametrize("command", ["explain", "generate"])
def test_the_prompt_is_positional_or_an_option(command: str) -> None:
    """``lxt-fx explain "The capital of France is"`` and ``--prompt`` give the same prompt, options before or after."""
    from lxt_fx.cli.common import prompts_of

    text = "The capital of France is"
    for argv in ([text], ["--prompt", text], ["--top", "3", text], [text, "--top", "3"]):
        assert prompts_of(_parsed(command, *argv), command) == [text]


@pytest.mark.parametrize("command", ["explain", "generate"])
@pytest.mark.parametrize(("argv", "needle"), [
    (["a b", "--prompt", "c"], "given twice (PROMPT and --prompt)"),
    (["The", "capital", "of"], "3 words given as separate prompts"),
    ([], "no prompt given"),
    (["  "], "empty"),
])
def test_a_prompt_given_twice_none_or_unquoted_is_one_line(command: str, argv: list[str], needle: str) -> None:
    """Both a positional prompt and --prompt, none at all (standard input not piped: pytest's is captured), an
    unquoted prompt arriving as words, or a blank one: a CLIError naming it (the quoted form as the hint)."""
    from lxt_fx.cli.common import prompts_of

    with pytest.raises(CLIError, match=re.escape(needle)) as info:
        prompts_of(_parsed(command, *argv), command)
    assert info.value.code == 2 and info.value.hint
    if needle != "empty":
        assert f'lxt-fx {command} "The capital of France is"' in info.value.hint
