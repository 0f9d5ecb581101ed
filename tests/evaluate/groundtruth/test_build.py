"""``python -m lxt_fx.evaluate.groundtruth.build``: build → train → verify → save, and a failing task is named."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lxt_fx.evaluate import groundtruth as gt
from lxt_fx.evaluate.groundtruth import build
from lxt_fx.evaluate.groundtruth.registry import _TASKS
from lxt_fx.evaluate.groundtruth.text import RecallLlama


class Untrained(RecallLlama):
    """recall-llama's model, not trained (so its evidence cannot verify), saved under a temporary folder."""

    name = "untrained-recall"
    folder: Path

    def build(self, seed: int = 0) -> torch.nn.Module:
        from transformers import LlamaConfig, LlamaForCausalLM

        torch.manual_seed(seed)
        config = LlamaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                             num_key_value_heads=2, max_position_embeddings=64, **self.config_kwargs())
        return LlamaForCausalLM(config).eval()

    def train(self, model: torch.nn.Module, *, seed: int = 0, log=print) -> dict[str, float]:
        return {"steps": 0, "seconds": 0.0, "accuracy": 0.0}

    @property
    def weights_dir(self) -> Path:
        return self.folder


def test_build_saves_the_model_and_its_record_and_names_a_task_that_fails_verification(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    Untrained.folder = tmp_path / "untrained-recall"
    monkeypatch.setitem(_TASKS, "untrained-recall", Untrained)
    assert build.main(["untrained-recall"]) == 1
    assert "not verified" in capsys.readouterr().err
    record = json.loads((Untrained.folder / "training.json").read_text())
    assert record["task"] == "untrained-recall" and record["evidence"]["n"] == build.VERIFY_ROWS
    model, task = gt.load("untrained-recall")
    fresh = task.build()
    for (name, a), (_, b) in zip(model.state_dict().items(), fresh.state_dict().items(), strict=True):
        torch.testing.assert_close(a, b, msg=name)
    sample = task.sample(build.VERIFY_ROWS, seed=build.VERIFY_SEED)
    assert record["evidence"]["accuracy"] == pytest.approx(
        float((task.predict(fresh, sample.inputs) == sample.target).double().mean()))
