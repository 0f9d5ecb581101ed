"""Dataset attribution: every row once, bad rows reported, a killed run resumed, two ranks under torchrun —
each row's relevance compared with ``explain`` of that row alone (the independent reference)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import make_model
from helpers import word_tokenizer

import lxt_fx
from lxt_fx.dataset import INDEX, DatasetError, attribute, load_relevance

WORDS = ["the", "capital", "of", "france", "is", "paris", "a", "b", "c", "sky", "blue"]
GOOD = ["the capital of france is", "a b c", "the sky is", "france is", "the capital of", "b c a b",
        "the sky is blue", "paris is", "c"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("tiny")
    make_model("llama", "sdpa", layers=1).save_pretrained(folder)
    word_tokenizer(WORDS).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def loaded(tiny):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(tiny).eval(), AutoTokenizer.from_pretrained(tiny)


def _data(path: Path) -> Path:
    lines = [json.dumps({"id": f"g{i}", "text": t}) for i, t in enumerate(GOOD[:4])]
    lines += ['{"text": ""}', "not json {", json.dumps({"text": "a b c a b c a b"}),  # empty, not JSON, too long
              json.dumps({"id": "t", "text": "the sky is", "target": "blue"}),      # its own target
              json.dumps({"text": "the sky", "target": "sky blue"}), "[1, 2]", ""]   # 2-token target, not an object
    lines += [json.dumps({"text": t}) for t in GOOD[4:]]
    lines += [json.dumps({"text": "the sky", "target": 999})]  # explain raises TargetError: recorded, not raised
    path.write_text("\n".join(lines) + "\n")
    return path


BAD = {4: "empty text", 5: "not JSON", 6: "too long", 8: "2 tokens", 9: "not a JSON object", 10: "empty line", 16: "outside"}


def _check(out: Path, model, tok, data: Path) -> list[dict]:
    index = [json.loads(line) for line in (out / INDEX).read_text().splitlines()]
    lines = data.read_text().splitlines()
    assert [r["position"] for r in index] == list(range(len(lines)))
    for record in index:
        if record["position"] in BAD:
            assert BAD[record["position"]] in record["error"] and record["shard"] is None
            continue
        row = json.loads(lines[record["position"]])
        alone = lxt_fx.explain(model, row["text"], tokenizer=tok, target=row.get("target"))
        assert record["tokens"] == alone.tokens[0] and record["target"] == int(alone.target_ids[0])
        assert record["score"] == pytest.approx(float(alone.target_scores[0]), abs=1e-5)
        torch.testing.assert_close(load_relevance(out, record), alone.relevance[0], rtol=1e-5, atol=1e-6)
    assert index[7]["target_token"] == "blue" and index[7]["id"] == "t"
    assert not list(out.glob(".*.tmp")) and not list(out.glob("*.tmp"))
    return index


def test_one_process_with_bad_rows_and_a_resume_after_a_kill(loaded, tmp_path) -> None:
    model, tok = loaded
    data, out = _data(tmp_path / "rows.jsonl"), tmp_path / "out"

    class Killed(Exception):
        pass

    def die_after_two(path: Path) -> None:  # the process dies right after renaming its second shard
        if len(list(out.glob("shard-*.safetensors"))) == 2:
            (out / f".{path.name}.junk.tmp").write_bytes(b"half a shard")  # what a killed writer leaves
            raise Killed

    with pytest.raises(Killed):
        attribute(model, tok, data, out, batch_size=2, shard_size=3, max_length=6, progress=False,
                  on_shard=die_after_two)
    assert not (out / INDEX).exists()
    first = {r["position"] for p in out.glob("shard-*") for r in json.loads(_meta(p)["rows"])}
    summary = attribute(model, tok, data, out, batch_size=2, shard_size=3, max_length=6, progress=False)
    lines = len(data.read_text().splitlines())
    assert summary.resumed == len(first) and summary.explained + summary.bad == lines - len(first)
    _check(out, model, tok, data)
    again = attribute(model, tok, data, out, batch_size=2, shard_size=3, max_length=6, progress=False)
    assert (again.explained, again.bad, again.resumed) == (0, 0, lines)  # nothing done twice
    with pytest.raises(DatasetError, match="max_length"):
        attribute(model, tok, data, out, max_length=7, progress=False)  # other options: not the same run


def _meta(path: Path) -> dict:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        return f.metadata()


def test_cli_errors(tmp_path) -> None:
    from lxt_fx.cli import main

    assert main(["attribute-dataset", "--model", "smollm2", "--data", str(tmp_path / "none.jsonl"),
                 "--out", str(tmp_path)]) == 2


def test_two_ranks_under_torchrun(tiny, loaded, tmp_path) -> None:
    model, tok = loaded
    data, out = _data(tmp_path / "rows.jsonl"), tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "LXT_FX_BACKEND": "gloo", "PYTHONPATH": os.getcwd()}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           "-m", "lxt_fx.cli", "attribute-dataset", "--model", str(tiny), "--data", str(data),
                           "--out", str(out), "--batch-size", "2", "--shard-size", "2", "--max-length", "6",
                           "--threads", "1"], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    index = _check(out, model, tok, data)
    ranks = {p.name.rsplit("-r", 1)[1] for p in out.glob("shard-*.safetensors")}
    assert ranks == {"0.safetensors", "1.safetensors"}  # both ranks wrote shards
    assert "explained" in done.stderr + done.stdout and len(index) == len(data.read_text().splitlines())


def test_backend_follows_the_model_device_not_the_machine(monkeypatch) -> None:
    """A CPU model gets gloo even where CUDA is available (NCCL cannot all_reduce its CPU count tensors)."""
    import torch.distributed as dist

    from lxt_fx.dataset import run

    assert run.backend_for(torch.device("cpu"), nccl_available=True) == "gloo"
    assert run.backend_for(torch.device("cuda", 1), nccl_available=True) == "nccl"
    assert run.backend_for(torch.device("cuda", 1), nccl_available=False) == "gloo"
    assert run.backend_for(torch.device("cuda", 0), nccl_available=True, override="gloo") == "gloo"
    assert run.count_device("gloo", torch.device("cuda", 1)) == torch.device("cpu")
    assert run.count_device("nccl", torch.device("cuda", 1)) == torch.device("cuda", 1)

    made: list[tuple[str, object]] = []
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("LXT_FX_BACKEND", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a GPU machine, as far as the code can tell
    monkeypatch.setattr(dist, "is_nccl_available", lambda: True)
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "init_process_group", lambda backend, device_id=None: made.append((backend, device_id)))
    monkeypatch.setattr(dist, "get_rank", lambda: 1)
    monkeypatch.setattr(dist, "get_world_size", lambda: 2)
    assert run._group(torch.device("cpu")) == (1, 2, True)
    assert run._group(torch.device("cuda", 1)) == (1, 2, True)
    assert made == [("gloo", None), ("nccl", torch.device("cuda", 1))]


def test_cli_target_invalid_for_every_row_exits_non_zero(tiny, tmp_path, capsys) -> None:
    from lxt_fx.cli import main

    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps({"text": t}) + "\n" for t in GOOD[:3]))
    code = main(["attribute-dataset", "--model", str(tiny), "--data", str(data), "--out", str(tmp_path / "out"),
                 "--target", "sky blue"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "none of the 3 rows" in err and "'sky blue' is 2 tokens" in err
    index = [json.loads(line) for line in (tmp_path / "out" / INDEX).read_text().splitlines()]
    assert len(index) == 3 and all("2 tokens" in r["error"] for r in index)  # the reason is recorded per row too


def test_a_resumed_run_is_keyed_by_composite_weights_and_version(loaded, tmp_path) -> None:
    """Every thing that changes a row's result keys the run: another composite or other weights of the same class
    are refused by name instead of keeping the earlier run's shards; the same ones resume."""
    import copy

    model, tok = loaded
    data, out = tmp_path / "rows.jsonl", tmp_path / "out"
    data.write_text("\n".join(json.dumps({"text": t}) for t in GOOD[:3]) + "\n")
    attribute(model, tok, data, out, progress=False)
    with pytest.raises(DatasetError, match="composite"):
        attribute(model, tok, data, out, composite=lxt_fx.cp_lrp, progress=False)
    other = copy.deepcopy(model)
    with torch.no_grad():
        other.lm_head.weight.mul_(1.5)
    with pytest.raises(DatasetError, match="weights_sha256"):
        attribute(other, tok, data, out, progress=False)
    again = attribute(copy.deepcopy(model), tok, data, out, progress=False)  # equal weights, another object
    assert (again.explained, again.resumed) == (0, 3)
    fresh = attribute(model, tok, data, tmp_path / "cp", composite=lxt_fx.cp_lrp, progress=False)
    assert fresh.explained == 3
    index = [json.loads(line) for line in (tmp_path / "cp" / INDEX).read_text().splitlines()]
    for record, text in zip(index, GOOD[:3], strict=True):
        alone = lxt_fx.explain(model, text, tokenizer=tok, composite=lxt_fx.cp_lrp)
        torch.testing.assert_close(load_relevance(tmp_path / "cp", record), alone.relevance[0], rtol=1e-5, atol=1e-6)


def test_the_weights_digest_is_computed_once_per_checkpoint(tiny, loaded, monkeypatch, tmp_path) -> None:
    from transformers import AutoModelForCausalLM

    from lxt_fx.dataset import weights

    monkeypatch.setenv("LXT_FX_CACHE", str(tmp_path / "cache"))
    model, _ = loaded
    first = weights.weights_digest(model, tiny)  # computed, stored for the checkpoint folder
    calls = []
    real = weights._hash
    monkeypatch.setattr(weights, "_hash", lambda tensors: calls.append(1) or real(tensors))
    assert weights.weights_digest(model, tiny) == first and not calls  # cached in the process
    reloaded = AutoModelForCausalLM.from_pretrained(tiny).eval()
    assert weights.weights_digest(reloaded, tiny) == first and not calls  # cached on disk for the checkpoint
    third = AutoModelForCausalLM.from_pretrained(tiny).eval()
    assert weights.weights_digest(third) == first and calls == [1]  # without the folder: computed, the same
    with torch.no_grad():
        third.lm_head.weight.add_(1.0)
    assert weights.weights_digest(third) != first and calls == [1, 1]  # a weight changed in place: anew


def test_a_row_target_outside_the_vocabulary_is_a_bad_row(loaded, tmp_path) -> None:
    model, tok = loaded
    data = tmp_path / "rows.jsonl"
    data.write_text(json.dumps({"text": "the sky is", "target": "berlin"}) + "\n")
    attribute(model, tok, data, tmp_path / "out", progress=False)
    (record,) = [json.loads(line) for line in (tmp_path / "out" / INDEX).read_text().splitlines()]
    assert "not in the vocabulary" in record["error"] and record["shard"] is None
