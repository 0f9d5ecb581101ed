"""``benchmarks/overhead.py`` and ``benchmarks/gpu.py`` (its CPU form) run end to end on a tiny LLaMA and
print their ratio tables."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "overhead.py"
GPU_SCRIPT = SCRIPT.parent / "gpu.py"


def test_overhead_benchmark_smoke() -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "COLUMNS": "120"}
    done = subprocess.run([sys.executable, str(SCRIPT), "--tiny", "--quick", "--repeats", "1"], env=env,
                          capture_output=True, text=True, timeout=300, cwd=SCRIPT.parents[1])
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    header = next((line for line in done.stdout.splitlines() if line.startswith("| model | attention | L |")), None)
    assert header is not None and "| ratio |" in header, done.stdout[-2000:]
    rows = [line for line in done.stdout.splitlines() if line.startswith("| LLaMA-2L-h64")]
    assert len(rows) >= 2  # eager and sdpa
    for row in rows[:2]:
        ratio = float(row.strip("|").split("|")[5])
        assert ratio > 0


def test_gpu_benchmark_runs_on_cpu() -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    done = subprocess.run([sys.executable, str(GPU_SCRIPT), "--device", "cpu", "--model", "tiny", "--lengths", "24",
                           "--repeats", "1"], env=env, capture_output=True, text=True, timeout=300,
                          cwd=SCRIPT.parents[1])
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    rows = [line.strip("|").split("|") for line in done.stdout.splitlines() if line.startswith("| tiny |")]
    assert [r[3].strip() for r in rows] == ["plain gradient", "AttnLRP", "AttnLRP + sqrt"]
    assert float(rows[0][5]) == 1.0 and all(float(r[4]) > 0 and float(r[5]) > 0 for r in rows)
    assert all(r[6].strip() == "n/a" for r in rows)  # no resettable peak counter on CPU


def test_gpu_benchmark_shaped_configs_run_tiny_on_cpu() -> None:
    """The 1B / 8B / MoE shapes share one code path; the MoE one, shrunk, runs end to end on CPU with the
    flash-vs-math attention check."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    done = subprocess.run([sys.executable, str(GPU_SCRIPT), "--device", "cpu", "--model", "moe", "--tiny",
                           "--lengths", "24", "--repeats", "1"], env=env, capture_output=True, text=True,
                          timeout=300, cwd=SCRIPT.parents[1])
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    rows = [line.strip("|").split("|") for line in done.stdout.splitlines() if line.startswith("| moe (tiny) |")]
    assert [r[3].strip() for r in rows] == ["plain gradient", "AttnLRP", "AttnLRP + sqrt"]
    assert all(float(r[4]) > 0 for r in rows)
    check = next(line for line in done.stdout.splitlines() if line.startswith("attention:"))
    assert "flash relevance finite: True" in check or "did not run" in check, check
    if "max |Δ|" in check:
        assert float(check.split("|R| = ")[1].split(",")[0]) < 1e-3, check


def test_gpu_quantized_benchmark_runs_tiny_on_cpu() -> None:
    """``benchmarks/gpu_quantized.py --device cpu --tiny``: the bitsandbytes 4-bit row is finite and equals the
    dequantized float model (bitsandbytes' own dequantization, same ops on CPU: exactly)."""
    import pytest

    pytest.importorskip("bitsandbytes")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "LXT_FX_CACHE": "off"}
    done = subprocess.run([sys.executable, str(SCRIPT.parent / "gpu_quantized.py"), "--device", "cpu", "--tiny",
                           "--bits", "4"], env=env, capture_output=True, text=True, timeout=300, cwd=SCRIPT.parents[1])
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    rows = {r[1].strip(): r for r in (line.strip("|").split("|") for line in done.stdout.splitlines()
                                      if line.startswith("| 1b (tiny) |"))}
    assert set(rows) == {"float", "bnb 4-bit (14 layers)"}, done.stdout
    row = rows["bnb 4-bit (14 layers)"]
    assert row[2].strip() == "True" and float(row[3]) < 1e-5 and float(row[4]) > 0.5, row


def test_first_heatmap_benchmark_runs_a_tiny_model(tmp_path: Path) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    out = tmp_path / "first_heatmap.md"
    done = subprocess.run([sys.executable, str(SCRIPT.parent / "first_heatmap.py"), "--models", "tiny", "--threads",
                           "1", "--out", str(out)], env=env, capture_output=True, text=True, timeout=600,
                          cwd=SCRIPT.parents[1])
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    rows = {r.split("|")[2].strip(): [float(x) for x in r.strip().strip("|").split("|")[2:10]]
            for r in out.read_text().splitlines() if r.startswith("| tiny |")}
    assert set(rows) == {"cold", "warm"} and all(v >= 0 for row in rows.values() for v in row)
    assert rows["warm"][2] < rows["cold"][2]  # the warm capture comes from the disk cache


def test_speed_sqrt_segments_leave_the_gradient_unchanged() -> None:
    """The "sqrt" baseline of benchmarks/lxt_oracle/speed.py (segments of blocks under torch.utils.checkpoint)
    gives the same Input×Gradient as the untouched model, and puts every block back."""
    import torch
    from conftest import make_model

    sys.path.insert(0, str(SCRIPT.parent / "lxt_oracle"))
    from speed import input_x_gradient, sqrt_checkpointing

    model = make_model("llama", layers=5)
    blocks = list(model.model.layers)
    ids = torch.randint(0, 96, (1, 9), generator=torch.Generator().manual_seed(0))
    plain = input_x_gradient(model, ids)
    undo = sqrt_checkpointing(model)
    assert [type(b).__name__ for b in model.model.layers] == ["Segment", "Skip", "Skip", "LlamaDecoderLayer",
                                                              "LlamaDecoderLayer"]
    segmented = input_x_gradient(model, ids)
    undo()
    assert list(model.model.layers) == blocks
    torch.testing.assert_close(segmented, plain, rtol=1e-6, atol=1e-7)
