"""Resume when Tune's snapshot names a checkpoint that is gone: the trial resumes from the newest one
still on storage, or starts over. (A SIGKILL of the driver at four moments of a sweep, each resumed, is
tests/test_kill_points.py.)"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from sweep_util import EPOCH_KEYS, history, runs, tiny_optimize


def _snapshot_checkpoints(exp_path: Path) -> dict[str, str]:
    """trial id → the checkpoint folder Tune's newest experiment snapshot names, for unfinished trials."""
    import json
    import re

    states = sorted(exp_path.glob("experiment_state-*.json"))
    if not states:
        return {}
    try:
        data = json.loads(states[-1].read_text())
    except (OSError, ValueError):  # being written
        return {}
    named = {}
    for trial_json, metadata in data["trial_data"]:
        trial = json.loads(trial_json)
        found = re.findall(r"checkpoint_\d+", str(metadata))
        if trial.get("status") in ("RUNNING", "PENDING", "PAUSED") and found:
            named[trial["trial_id"]] = found[-1]
    return named


@pytest.mark.slow
def test_resume_when_the_snapshot_names_a_deleted_checkpoint(tmp_path: Path) -> None:
    # The window issue 10 met by chance: the snapshot names checkpoint_000001, num_to_keep then deleted it.
    # Made deterministic here: kill once the snapshot names checkpoints, then delete exactly those folders
    # (one trial keeps newer checkpoints, the other keeps none at all).
    cfg = tiny_optimize("gone", tmp_path, num_trials=2, max_concurrent=2, trial={"epochs": 6})
    sweep_file = tmp_path / "gone.yaml"
    sweep_file.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    exp_path = tmp_path / "ray_results" / "gone"
    command = [sys.executable, "-m", "sweeps", str(sweep_file)]
    with open(tmp_path / "first.log", "w") as log:
        first = subprocess.Popen(command, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            deadline = time.monotonic() + 300
            while len(_snapshot_checkpoints(exp_path)) < 2:
                assert first.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
                assert time.monotonic() < deadline, "the snapshot never named a checkpoint of both trials"
                time.sleep(0.2)
        finally:
            os.killpg(first.pid, signal.SIGKILL)
            first.wait(timeout=60)
    import shutil

    named = _snapshot_checkpoints(exp_path)
    keep_newer, keep_none = sorted(named)
    shutil.rmtree(exp_path / f"trial_{keep_newer}" / named[keep_newer])
    (exp_path / f"trial_{keep_newer}" / "checkpoint_999999").mkdir()  # a half-written folder: not a checkpoint
    for folder in (exp_path / f"trial_{keep_none}").glob("checkpoint_*"):
        shutil.rmtree(folder)

    second = subprocess.run(command + ["--resume"], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert "2 trials: 2 finished, 0 failed" in second.stdout, second.stdout[-3000:]
    parent, children = runs(uri, "gone")
    assert len(children) == 2 and all(c.info.status == "FINISHED" for c in children)
    for child in children:
        for key in EPOCH_KEYS:
            assert [s for s, _ in history(uri, child, key)] == [1, 2, 3, 4, 5, 6], (key, child.data.tags)
