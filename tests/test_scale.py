"""The scale benchmark's smoke version (issue 20): 40 stand-in trials, 8 at a time, on a simulated
two-node Ray cluster, the head's MLflow server over SQLite, the driver killed at 50 % and resumed.

The real driver, Tune, Optuna, MLflow and checkpoints run; only the trial body is a stand-in. What it
checks is what must hold at any size: every metric point a trial reported is in the store exactly once
(across the kill too), every trial finished, Tune reused its workers, and the resumed driver ran trials
again. Speed is printed by the benchmark, never asserted here.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from sweep_util import run_smoke

pytestmark = pytest.mark.slow


@pytest.mark.timeout(900)
def test_scale_smoke_loses_and_duplicates_no_metric_point(tmp_path: Path) -> None:
    proc, result = run_smoke("scale.py", tmp_path, timeout=840)
    (row,) = result["rows"]
    assert (row["trials"], row["concurrent"], row["finished"]) == (40, 8, 40)
    points = row["points"]
    # two sweeps of 40 (the measured one and the killed-and-resumed one), every point once
    assert points["runs"] == 80 and points["expected"] > 0
    assert (points["lost"], points["duplicated"], points["rewritten"], points["unexpected"]) == (0, 0, 0, 0), points
    assert points["written"] == points["expected"]
    assert 0 < row["workers"] <= 8, "Tune started more trial processes than slots: actors were not reused"
    assert row["resume_s"] is not None and row["resume_s"] > 0
    assert row["analyze_s"] > 0 and 0 < row["efficiency"] <= 1.0
    assert "| sqlite | 40 | 8 |" in proc.stdout  # the one table
