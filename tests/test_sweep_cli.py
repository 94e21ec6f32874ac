"""The sweep command's own choices: `--dry-run` starts nothing, and without `--address` a sweep starts its
own Ray. (The shipped quickstart's `--smoke-test` through the command line, with its closing summary and
its runs in MLflow, is the journey in test_journey.py.)"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

QUICKSTART = Path(__file__).parents[1] / "sweeps/configs/quickstart.yaml"


@pytest.mark.slow
def test_dry_run_prints_the_trial_count_resources_and_an_estimate_and_starts_nothing(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "sweeps", str(QUICKSTART), "--dry-run", "--set", "resources.gpu=0.25"]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = dict(line.split(": ", 1) for line in proc.stdout.splitlines() if ": " in line)
    # quickstart.yaml: 4 search trials, then (top 2 + 2 references) × 3 fresh seeds at most
    assert lines["trials"] == "16"
    assert lines["resources per trial"] == "1 CPU, 0.25 GPU" and lines["trials at once"] == "2"
    per_trial = float(re.match(r"([0-9.]+) s \(10 epochs", lines["per trial"])[1])
    wall = float(re.match(r"([0-9.]+) s", lines["estimated wall time"])[1])
    gpu_hours = float(lines["estimated GPU-hours"])
    assert per_trial > 0 and wall >= 8 * per_trial  # 16 trials, 2 at a time: 8 waves (plus preparation)
    assert gpu_hours == pytest.approx(16 * per_trial * 0.25 / 3600, rel=0.02, abs=2e-3)
    assert "12 of the trials confirm the best and the references on fresh seeds" in lines["note"]
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no mlflow.db, no ray_results: nothing started


def test_without_address_a_sweep_starts_its_own_ray_and_joins_no_other(tmp_path: Path) -> None:
    # `ray.init(None)` joins whatever cluster this machine names (RAY_ADDRESS, a `ray start` left running),
    # even one that is gone; `pclc sweep` without --address promises a private local Ray instead.
    probe = (
        "from sweeps.driver import ray_session\n"
        "with ray_session(None, num_cpus=1):\n"
        "    import ray; print('cpus', ray.cluster_resources()['CPU'])\n"
    )
    env = {**os.environ, "RAY_ADDRESS": "127.0.0.1:9", "RAY_gcs_server_port_wait_time_s": "3"}  # nothing there
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0 and "cpus 1.0" in proc.stdout, proc.stderr[-3000:]
