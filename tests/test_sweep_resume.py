"""Resume: the driver is killed with SIGKILL mid-sweep, then `python -m sweeps CONFIG --resume` ends with
exactly the configured trials, each run once in MLflow (none RUNNING, none duplicated)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient
from sweep_util import EPOCH_KEYS, final_metric_names, history, runs, tiny_optimize

TRIALS = 6


def _finished_children(uri: str, experiment: str) -> dict[str, int]:
    """run id → end time of every FINISHED trial run so far."""
    try:
        client = MlflowClient(uri)
        exp = client.get_experiment_by_name(experiment)
        if exp is None:
            return {}
        found = client.search_runs([exp.experiment_id], "tags.`pclc.role` = 'trial' and attributes.status = 'FINISHED'")
        return {r.info.run_id: r.info.end_time for r in found}
    except Exception:  # the store may not exist yet, or be locked for a moment
        return {}


@pytest.mark.slow
def test_sigkill_of_the_driver_then_resume_finishes_exactly_the_configured_trials(tmp_path: Path) -> None:
    cfg = tiny_optimize("resume", tmp_path, num_trials=TRIALS, max_concurrent=2)
    sweep_file = tmp_path / "resume.yaml"
    sweep_file.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    command = [sys.executable, "-m", "sweeps", str(sweep_file)]

    # ---- first run: killed (driver and the Ray it started, one process group) after 2 trials finish
    with open(tmp_path / "first.log", "w") as log:
        first = subprocess.Popen(command, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            deadline = time.monotonic() + 240
            while len(_finished_children(uri, "resume")) < 2:
                assert first.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
                assert time.monotonic() < deadline, "no trial finished in time"
                time.sleep(0.5)
        finally:
            os.killpg(first.pid, signal.SIGKILL)
            first.wait(timeout=60)
    assert first.returncode == -signal.SIGKILL
    done_before = _finished_children(uri, "resume")
    assert 2 <= len(done_before) < TRIALS

    # ---- second run: resumes the stored experiment
    second = subprocess.run(command + ["--resume"], cwd=tmp_path, capture_output=True, text=True, timeout=420)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert "resuming" in second.stdout
    assert f"{TRIALS} trials: {TRIALS} finished, 0 failed" in second.stdout

    # ---- MLflow: one parent, exactly one FINISHED child per trial, each epoch logged once
    parent, children = runs(uri, "resume")
    assert parent.info.status == "FINISHED"
    trial_ids = [c.data.tags["pclc.trial_id"] for c in children]
    assert len(children) == TRIALS and len(set(trial_ids)) == TRIALS
    assert all(c.info.status == "FINISHED" for c in children)
    # none twice: the trials that had finished before the kill were neither run again nor replaced
    ended = {c.info.run_id: c.info.end_time for c in children}
    assert {run_id: ended.get(run_id) for run_id in done_before} == done_before
    for child in children:
        assert set(final_metric_names(cfg.trial)) <= set(child.data.metrics)
        for key in EPOCH_KEYS:
            assert [s for s, _ in history(uri, child, key)] == [1, 2, 3], (key, child.data.tags)
    # the Optuna state survived: the initial point was not evaluated a second time
    defaults = [c for c in children if (c.data.params["margin"], c.data.params["lc_weight"]) == ("0.995", "0.05")]
    assert len(defaults) == 1
