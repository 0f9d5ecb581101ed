"""``benchmarks/circuits.py``: its statistics against independent forms, and a tiny end-to-end run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from circuits import overlap, pearson, per_pair_pearson, spearman  # noqa: E402


def test_statistics_match_their_textbook_forms() -> None:
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(40, generator=gen), torch.randn(40, generator=gen)
    y = y + 0.5 * x
    assert abs(pearson(x, y) - np.corrcoef(x.numpy(), y.numpy())[0, 1]) < 1e-9
    rx, ry = np.argsort(np.argsort(x.numpy())), np.argsort(np.argsort(y.numpy()))  # no ties
    assert abs(spearman(x, y) - np.corrcoef(rx, ry)[0, 1]) < 1e-9
    assert overlap(torch.tensor([3.0, -2.0, 0.1, 0.0]), torch.tensor([-5.0, 0.0, 1.0, 4.0]), 2) == 0.5


def test_per_pair_pearson_is_the_mean_and_standard_error_of_row_correlations() -> None:
    gen = torch.Generator().manual_seed(1)
    est, truth = torch.randn(6, 20, generator=gen), torch.randn(6, 20, generator=gen)
    est[:3] += truth[:3]
    truth[5] = 1.0  # a constant row has no correlation: left out
    rows = [np.corrcoef(est[i].numpy(), truth[i].numpy())[0, 1] for i in range(5)]
    mean, se, n = per_pair_pearson(est, truth)
    assert n == 5 and abs(mean - np.mean(rows)) < 1e-9
    assert abs(se - np.std(rows, ddof=1) / np.sqrt(5)) < 1e-9


def test_tiny_run_prints_the_tables() -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "circuits.py"), "--tiny", "--pairs", "2",
                           "--boots", "10", "--cost"], env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    rows = [line for line in done.stdout.splitlines() if line.startswith("| tiny |")]
    assert len(rows) == 6 + 1  # 3 component kinds × 2 methods, and the timing row
    assert "ratio activation / RelP" in done.stdout
