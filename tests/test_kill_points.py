"""A kill at any moment loses no trial: the driver is SIGKILLed at three moments of a small sweep, one of them
as soon as Tune has started (benchmarks/kill_points.py --smoke-test; the full benchmark kills at eleven),
each run resumed, and every resume must end with exactly N FINISHED trials, none RUNNING or duplicated,
every epoch logged once."""

from __future__ import annotations

from pathlib import Path

import pytest
from sweep_util import run_smoke


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_three_kill_points_all_survive(tmp_path: Path) -> None:
    proc, result = run_smoke("kill_points.py", tmp_path, timeout=880)
    assert result["total"] >= 3 and result["survived"] == result["total"], proc.stdout
    assert sum(r["killed"] for r in result["rows"]) >= 2, proc.stdout  # the kills landed while it ran
    assert [r["killed"] for r in result["rows"] if r["event"] == "tune-started"] == [True], proc.stdout
    assert f"kill points survived: {result['total']} / {result['total']}" in proc.stdout
