"""``benchmarks/overhead.py`` runs end to end (tiny LLaMA, one repeat) and prints the ratio table."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "overhead.py"


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
