"""The benchmarks keep running: `benchmarks/run_all.py --smoke-test` prints its one table of ratios."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]


def test_run_all_prints_one_table_of_ratios() -> None:
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks/run_all.py"), "--smoke-test"],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = re.findall(r"^\| (.+?) +\| +([0-9.]+) \| +(\S+ [0-9.]+|\(info\)) \| +(yes|NO) \|$", proc.stdout, re.M)
    names = [r[0] for r in rows]
    assert any("PGD-k" in n for n in names) and any("Ray Tune" in n for n in names)
    assert any("speed-up" in n for n in names) and any("PGD training epoch / its floor" in n for n in names)
    assert all(float(r[1]) > 0 for r in rows)
