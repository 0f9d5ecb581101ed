"""The runner (seeded, order-preserving) and ``lxt-fx evaluate`` end to end on a tiny local model."""

from __future__ import annotations

import json

import evalhelpers
import torch
from evalhelpers import WORDS, word_tokenizer, write_jsonl

from lxt_fx.cli.evaluate import evaluate_main
from lxt_fx.evaluate import Example, run
from lxt_fx.evaluate.synthetic import KeyValueTask, evidence_scores

one_thread, tiny_llama = evalhelpers.one_thread, evalhelpers.tiny_llama  # shared fixtures


def _examples() -> list[Example]:
    g = torch.Generator().manual_seed(0)
    rows = [Example(torch.randint(3, 96, (n,), generator=g).tolist(), t, f"r{i}")
            for i, (n, t) in enumerate([(9, None), (6, 11), (9, 40), (7, None), (6, None)])]
    return rows


def test_seeded_runs_are_reproducible(tiny_llama) -> None:
    examples = _examples()
    kwargs = dict(steps=4, chunk_size=2, batch_size=6, seed=3)
    a = run(tiny_llama, examples, "random,ixg", **kwargs)
    b = run(tiny_llama, examples, ["random", "ixg"], **kwargs)
    c = run(tiny_llama, examples, "random,ixg", **{**kwargs, "seed": 4, "chunk_size": 3})
    assert a.labels == [e.label for e in examples]                          # input order kept
    for m in ("random", "ixg"):
        for o in ("morf", "lerf"):
            assert torch.equal(a.curves[m].curves[o], b.curves[m].curves[o])
    assert a.relevance == b.relevance
    assert a.relevance["random"] != c.relevance["random"]
    assert torch.allclose(a.curves["ixg"].curves["morf"], c.curves["ixg"].curves["morf"], atol=1e-5)
    assert a.target_ids[1] == 11 and a.target_ids[2] == 40
    summary = a.summary()
    assert summary["ixg"]["n"] == 5 and summary["ixg"]["abpc_se"] > 0
    assert json.dumps(a.to_dict())


def _local_model(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = word_tokenizer()
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(WORDS) + 2, hidden_size=32, intermediate_size=48,
                                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                         head_dim=8, max_position_embeddings=64, pad_token_id=0))
    folder = tmp_path / "tiny"
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def test_cli_end_to_end_on_a_local_model(tmp_path, capsys) -> None:
    folder = _local_model(tmp_path)
    data = write_jsonl(tmp_path / "cloze.jsonl", [
        {"prompt": "the capital of france is", "answer": " paris"},
        {"prompt": "the cat sat on the", "answer": " big mat"},
        {"prompt": "the dog ran in the", "answer": " garden"},
        {"prompt": "the bird sang in the", "answer": " tree"},
    ])
    out = tmp_path / "out"
    code = evaluate_main(["--model", str(folder), "--data", data, "--methods", "attnlrp,ixg,random",
                          "--steps", "3", "--out", str(out), "--threads", "1"])
    assert code == 0, capsys.readouterr()
    result = json.loads((out / "evaluate.json").read_text())
    assert result["n"] == 3 and result["skipped"] == 1 and result["kind"] == "cloze"
    assert set(result["summary"]) == {"attnlrp", "ixg", "random"}
    assert "| attnlrp |" in (out / "evaluate.md").read_text()
    assert "1 prompt(s) skipped" in capsys.readouterr().out


def test_cli_rejects_unknown_methods_and_empty_files(tmp_path, capsys) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert evaluate_main(["--data", str(empty), "--methods", "attnlrp,lime"]) == 2
    err = capsys.readouterr().err
    assert "'lime'" in err and "valid methods: attnlrp, cp_lrp, ixg, ig" in err
    assert evaluate_main(["--data", str(empty), "--methods", "attnlrp"]) == 2
    assert "empty" in capsys.readouterr().err


def test_evidence_scores_and_task_layout() -> None:
    rel = torch.tensor([[0.0, 5, 1, 2, 3, 9], [0.0, 1, 2, 8, 7, 9]])
    evidence = torch.tensor([[0, 1, 1, 0, 0, 0], [0, 0, 0, 1, 1, 0]], dtype=torch.bool)
    candidates = torch.tensor([[0, 1, 1, 1, 1, 0]] * 2, dtype=torch.bool)
    hit, recall = evidence_scores(rel, evidence, candidates)
    assert hit.tolist() == [1.0, 1.0] and recall.tolist() == [0.5, 1.0]
    task = KeyValueTask(keys=5, values=4, pairs=3)
    ids, targets, ev = task.sample(8, torch.Generator().manual_seed(0))
    assert ids.shape == (8, task.length) and (ev.sum(1) == 2).all()
    values = ids[ev.nonzero(as_tuple=True)].reshape(8, 2)
    assert torch.equal(values[:, 0], ids[:, -1]) and torch.equal(values[:, 1], targets)
    train_ids, labels = task.training_batch(4, 2, torch.Generator().manual_seed(1))
    assert (labels >= 0).sum() == 8 and (train_ids[:, task.length - 2] == 2).all()  # first query marker


def test_cli_error_lists_valid_methods(capsys) -> None:
    assert evaluate_main(["--data", "cloze", "--methods", "nope"]) == 2
    assert "valid methods: attnlrp, cp_lrp, ixg, ig, gradient, saliency, rollout, random" in capsys.readouterr().err


def test_cli_help_shows_defaults_and_the_output_folder(monkeypatch, capsys) -> None:
    import re

    monkeypatch.setenv("COLUMNS", "200")  # no line breaks inside the phrases looked for
    assert evaluate_main(["--help"]) == 0
    text = capsys.readouterr().out
    assert "``" not in text and not re.search(r":\w+:`", text)  # no rST markup
    assert "(default: evaluate-results)" in text and "evaluate.json" in text and "curves.png" in text
    assert "(default: 20)" in text and "(default: zero)" in text and "(default: attnlrp,ixg,ig,random)" in text


def test_cli_checks_option_values_before_loading_the_model(monkeypatch, capsys) -> None:
    import lxt_fx.models

    def no_load(*args, **kwargs):
        raise AssertionError("the model was loaded before the options were checked")

    monkeypatch.setattr(lxt_fx.models, "load", no_load)
    for argv, needle in ((["--steps", "0"], "--steps 0"), (["--perturbation", "bogus"], "'bogus'"),
                         (["--perturbation", "-3"], "--perturbation -3"), (["--ig-steps", "0"], "--ig-steps 0"),
                         (["--batch-size", "-1"], "--batch-size -1"), (["--limit", "0"], "--limit 0")):
        assert evaluate_main(["--data", "cloze", *argv]) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and needle in err[0] and "AssertionError" not in err[0], err
