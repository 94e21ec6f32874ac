"""Resume when Tune's snapshot names a checkpoint that is gone: the trial resumes from the newest one
still on storage, or starts over. (A SIGKILL of the driver at three moments of a sweep, each resumed, is
tests/test_kill_points.py.)"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from sweep_util import EPOCH_KEYS, epoch_steps, history, runs, tiny_optimize


def _snapshot_checkpoints(snapshot: dict[str, Any]) -> dict[str, str]:
    """trial id → the checkpoint folder a (parsed) experiment snapshot names, for unfinished trials."""
    import json
    import re

    named = {}
    for trial_json, metadata in snapshot["trial_data"]:
        trial = json.loads(trial_json)
        found = re.findall(r"checkpoint_\d+", str(metadata))
        if trial.get("status") in ("RUNNING", "PENDING", "PAUSED") and found:
            named[trial["trial_id"]] = found[-1]
    return named


def _whole_state(exp_path: Path) -> dict[str, tuple[Path, bytes, Any]] | None:
    """Tune's three state files, pattern → (path, bytes, parsed), when each reads back whole; None while
    any is missing or mid-write."""
    import json
    import pickle

    import ray.cloudpickle as cloudpickle

    from sweeps.tune_state import SEARCH_STATE, SEARCHER_STATE, SNAPSHOT

    whole = {}
    for pattern, load in ((SNAPSHOT, json.loads), (SEARCH_STATE, cloudpickle.loads), (SEARCHER_STATE, pickle.loads)):
        found = sorted(exp_path.glob(pattern))
        if not found:
            return None
        try:
            data = found[-1].read_bytes()
            whole[pattern] = (found[-1], data, load(data))
        except Exception:  # being written: any unpickling or JSON error
            return None
    return whole


def _sweep(tmp_path: Path, name: str, **changes: Any) -> tuple[list[str], str, Path]:
    """A small sweep file in `tmp_path`: (the command that runs it, its MLflow store, its Ray experiment)."""
    cfg = tiny_optimize(name, tmp_path, **changes)
    sweep_file = tmp_path / f"{name}.yaml"
    sweep_file.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    command = [sys.executable, "-m", "sweeps", str(sweep_file)]
    return command, f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path / "ray_results" / name


def _kill_when(command: list[str], cwd: Path, ready: Callable[[], bool], what: str) -> None:
    """Start the sweep `command` in `cwd` and SIGKILL its whole process group once `ready()` holds."""
    with open(cwd / "first.log", "w") as log:
        first = subprocess.Popen(command, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            deadline = time.monotonic() + 300
            while not ready():
                assert first.poll() is None, (cwd / "first.log").read_text()[-3000:]
                assert time.monotonic() < deadline, f"the sweep never {what}"
                time.sleep(0.05)
        finally:
            os.killpg(first.pid, signal.SIGKILL)
            first.wait(timeout=60)


def _kill_at_whole_state(
    command: list[str], cwd: Path, exp_path: Path, ready: Callable[[dict[str, Any]], bool], what: str
) -> dict[str, Any]:
    """Kill the sweep once its saved state, read back whole, satisfies `ready(snapshot)`, then put those
    whole files back: the kill can land mid-write of any of them (issue 22), and a test builds its case
    from files it knows are whole. Returns the parsed snapshot."""
    from sweeps.tune_state import SNAPSHOT

    captured: dict[str, tuple[Path, bytes, Any]] = {}

    def whole_and_ready() -> bool:
        state = _whole_state(exp_path)
        if state is not None and ready(state[SNAPSHOT][2]):
            captured.update(state)
        return bool(captured)

    _kill_when(command, cwd, whole_and_ready, what)
    for path, data, _ in captured.values():
        path.write_bytes(data)
    return captured[SNAPSHOT][2]


def test_a_folder_is_resumable_only_once_tune_saved_a_snapshot_of_its_trials(tmp_path: Path) -> None:
    from sweeps.tune_state import has_snapshot

    assert not has_snapshot(str(tmp_path / "missing"))
    (tmp_path / "tuner.pkl").write_bytes(b"")
    assert not has_snapshot(str(tmp_path))  # Tune started, nothing to continue yet
    (tmp_path / "experiment_state-2026-11-26_05-29-56.json").write_text("{}")
    assert has_snapshot(str(tmp_path)) and has_snapshot(f"file://{tmp_path}")


@pytest.mark.slow
def test_resume_when_the_driver_died_before_tunes_first_snapshot(tmp_path: Path) -> None:
    # Tune writes tuner.pkl, starts trials, and only then its first snapshot of them. A resume in that
    # window used to "restart" from tuner.pkl with ONE trial instead of num_trials, and exit 0 (CI caught it).
    command, uri, exp_path = _sweep(tmp_path, "early", num_trials=2, max_concurrent=2)
    _kill_when(command, tmp_path, lambda: (exp_path / "tuner.pkl").exists(), "wrote tuner.pkl")
    for snapshot in (*exp_path.glob("experiment_state-*"), *exp_path.glob("search*state-*")):
        snapshot.unlink()  # the window, made exact: whatever Tune managed to save after tuner.pkl is gone

    second = subprocess.run(command + ["--resume"], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert "before Tune saved any trial); starting the sweep" in second.stdout, second.stdout[-3000:]
    assert "2 trials: 2 finished, 0 failed" in second.stdout, second.stdout[-3000:]
    parent, children = runs(uri, "early")  # the same parent; runs the killed trials had opened are gone
    assert len(children) == 2 and all(c.info.status == "FINISHED" for c in children)
    initial = [c for c in children if (c.data.params["margin"], c.data.params["lc_weight"]) == ("0.995", "0.05")]
    assert len(initial) == 1


@pytest.mark.slow
def test_a_parent_run_killed_before_tunes_first_snapshot_is_not_taken_over_by_another_sweep_file(
    tmp_path: Path,
) -> None:
    # The window above, but the sweep file changes before the rerun: the first start's parent run (whose tags
    # and sweep_config.yaml say the old file) must not become the new sweep's. It is closed as FAILED, the
    # trial runs it had begun deleted, and the sweep runs under a new parent run, which the driver says.
    from mlflow.entities import ViewType
    from mlflow.tracking import MlflowClient

    from pclc import contract as C
    from sweeps.config import read_sweep_file
    from sweeps.driver import sweep_fingerprint

    command, uri, exp_path = _sweep(tmp_path, "changed", num_trials=2, max_concurrent=2)
    client = MlflowClient(uri)

    def parents() -> list[Any]:
        exp = client.get_experiment_by_name("changed")
        found = client.search_runs([exp.experiment_id], f"tags.`{C.ROLE}` = 'sweep'") if exp else []
        return sorted(found, key=lambda r: r.info.start_time)

    def children(parent_id: str, view: int = ViewType.ACTIVE_ONLY) -> list[Any]:
        exp = client.get_experiment_by_name("changed")
        return client.search_runs([exp.experiment_id], f"tags.`{C.PARENT}` = '{parent_id}'", run_view_type=view)

    def a_trial_run_began() -> bool:
        time.sleep(0.5)  # a search of the store at most twice a second
        found = parents()
        return (exp_path / "tuner.pkl").exists() and bool(found) and bool(children(found[0].info.run_id))

    _kill_when(command, tmp_path, a_trial_run_began, "opened a trial run")
    for snapshot in (*exp_path.glob("experiment_state-*"), *exp_path.glob("search*state-*")):
        snapshot.unlink()  # the window, made exact: whatever Tune saved after tuner.pkl is gone
    (first,) = parents()
    assert first.info.status == "RUNNING"

    command, _, _ = _sweep(tmp_path, "changed", num_trials=1, max_concurrent=2)  # the same file, one field changed
    second = subprocess.run(command + ["--resume"], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    old = first.info.run_id
    said = f"the parent run {old} was started from a different sweep file (changed: num_trials)"
    assert said in second.stdout, second.stdout[-3000:]
    assert "1 trials: 1 finished, 0 failed" in second.stdout, second.stdout[-3000:]

    before, now = parents()
    assert before.info.run_id == old and before.info.status == "FAILED"
    assert before.data.tags[C.FAILURE].startswith("superseded: the sweep file changed: num_trials")
    assert children(old) == [] and children(old, ViewType.DELETED_ONLY)  # it had begun trial runs: deleted
    assert now.info.status == "FINISHED" and now.info.run_id in second.stdout.split(said)[1].splitlines()[0]
    assert now.data.tags[C.SWEEP_FINGERPRINT] == sweep_fingerprint(read_sweep_file(command[-1]))
    assert before.data.tags[C.SWEEP_FINGERPRINT] != now.data.tags[C.SWEEP_FINGERPRINT]
    (trial,) = children(now.info.run_id)
    assert trial.info.status == "FINISHED"


@pytest.mark.slow
def test_resume_when_the_snapshot_names_a_deleted_checkpoint(tmp_path: Path) -> None:
    # The window issue 10 met by chance: the snapshot names checkpoint_000001, num_to_keep then deleted it.
    # Made deterministic here: kill once the snapshot names checkpoints, then delete exactly those folders
    # (one trial keeps newer checkpoints, the other keeps none at all).
    command, uri, exp_path = _sweep(tmp_path, "gone", num_trials=2, max_concurrent=2, trial={"epochs": 6})
    snapshot = _kill_at_whole_state(
        command, tmp_path, exp_path, lambda s: len(_snapshot_checkpoints(s)) >= 2, "named a checkpoint of both trials"
    )
    named = _snapshot_checkpoints(snapshot)
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
            assert [s for s, _ in history(uri, child, key)] == epoch_steps(key, 6), (key, child.data.tags)


@pytest.mark.slow
def test_a_trial_resumed_from_a_newer_checkpoint_than_the_snapshot_named_reports_its_true_epoch(
    tmp_path: Path,
) -> None:
    # The snapshot knows the trial at checkpoint k; storage holds two newer ones (num_to_keep deleted k), so the
    # trial resumes from the newest. Tune would count its reports on from k: every report must carry the trial's
    # own clock instead (training_iteration = epoch, the final report epochs + 1), the one ASHA reads (`epoch`).
    # Made exact: the whole state is captured once the snapshot names a checkpoint, the sweep runs on until two
    # newer checkpoints are on storage and k is gone, and the captured (older) state is put back after the kill.
    import json

    from sweeps.tune_state import SNAPSHOT

    asha = {"type": "asha", "grace_period": 2, "reduction_factor": 2}
    command, uri, exp_path = _sweep(
        tmp_path, "newer", num_trials=1, max_concurrent=1, trial={"epochs": 8}, scheduler=asha
    )
    captured: dict[str, tuple[Path, bytes, Any]] = {}

    def newer_checkpoints_than_the_captured_snapshot() -> bool:
        if not captured:
            state = _whole_state(exp_path)
            if state is not None and _snapshot_checkpoints(state[SNAPSHOT][2]):
                captured.update(state)
            return False
        ((tid, named),) = _snapshot_checkpoints(captured[SNAPSHOT][2]).items()
        folder = exp_path / f"trial_{tid}"
        newer = [p for p in folder.glob("checkpoint_*") if p.name > named and (p / "state.pt").is_file()]
        return len(newer) >= 2 and not (folder / named).exists()

    _kill_when(command, tmp_path, newer_checkpoints_than_the_captured_snapshot, "saved two newer checkpoints")
    for path, data, _ in captured.values():
        path.write_bytes(data)
    ((tid, named),) = _snapshot_checkpoints(captured[SNAPSHOT][2]).items()
    ((_, metadata),) = captured[SNAPSHOT][2]["trial_data"]
    known = (json.loads(metadata) if isinstance(metadata, str) else metadata)["last_result"]

    second = subprocess.run(command + ["--resume"], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert "1 trials: 1 finished, 0 failed" in second.stdout, second.stdout[-3000:]
    assert f"{named} is gone: resuming from" in second.stdout + second.stderr, second.stdout[-3000:]

    rows = [json.loads(line) for line in (exp_path / f"trial_{tid}" / "result.json").read_text().splitlines()]
    first_pid = rows[0]["pid"]
    resumed = [r for r in rows if r["pid"] != first_pid]
    per_epoch = [r for r in resumed if "robust_acc" not in r]
    # the case: the resumed attempt started past what the snapshot knew (from a newer checkpoint)
    assert per_epoch and per_epoch[0]["epoch"] > known["training_iteration"] + 1, (known, resumed)
    assert [r["epoch"] for r in per_epoch] == list(range(per_epoch[0]["epoch"], 9))
    assert all(r["training_iteration"] == r["epoch"] for r in rows if "robust_acc" not in r), rows
    (final,) = [r for r in rows if "robust_acc" in r]
    assert final["epoch"] == 8 and final["training_iteration"] == 9
    parent, (child,) = runs(uri, "newer")
    for key in EPOCH_KEYS:
        assert [s for s, _ in history(uri, child, key)] == epoch_steps(key, 8, rungs=(2, 4)), key  # ASHA's rungs


@pytest.mark.slow
def test_resume_when_the_search_state_is_newer_than_the_trial_snapshot(tmp_path: Path) -> None:
    # Tune copies the trial snapshot and the search state to storage one file at a time: a kill mid-copy
    # can pair a search that created N trials with a snapshot that holds fewer. Made exact here: the
    # snapshot loses the trial that took the initial point.
    import json

    from sweeps.tune_state import DamagedState, align_search_state

    command, uri, exp_path = _sweep(tmp_path, "torn", num_trials=2, max_concurrent=2)
    snapshot = _kill_at_whole_state(
        command, tmp_path, exp_path, lambda s: len(s["trial_data"]) >= 2, "saved a snapshot of two trials"
    )
    saved = len(snapshot["trial_data"])

    # the other direction first, on a copy: a snapshot newer than the search state only sets the count
    other = tmp_path / "other"
    shutil.copytree(exp_path, other)
    (gen,) = other.glob("search_gen_state-*.json")
    import ray.cloudpickle as cloudpickle

    state = cloudpickle.loads(gen.read_bytes())
    created = state["counter"]  # as the kill left it
    gen.write_bytes(cloudpickle.dumps({**state, "counter": 1}))
    assert f"counted 1 trials, the saved snapshot holds {saved}" in align_search_state(str(other))
    assert cloudpickle.loads(gen.read_bytes())["counter"] == saved
    assert align_search_state(str(other)) is None  # now they agree
    (searcher,) = other.glob("searcher-state-*.pkl")
    searcher.write_bytes(searcher.read_bytes()[:100])  # half-copied: Tune would start over with one trial
    with pytest.raises(DamagedState, match=f"{searcher}.*cannot be read"):
        align_search_state(str(other))

    (snapshot_file,) = exp_path.glob("experiment_state-*.json")
    data = json.loads(snapshot_file.read_text())
    initial = [i for i, (t, _) in enumerate(data["trial_data"]) if json.loads(t)["config"]["margin"] == 0.995]
    assert len(initial) == 1
    del data["trial_data"][initial[0]]
    snapshot_file.write_text(json.dumps(data))

    second = subprocess.run(command + ["--resume"], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert f"counted {created} trials, the saved snapshot holds {saved - 1}" in second.stdout, second.stdout[-3000:]
    assert "2 trials: 2 finished, 0 failed" in second.stdout, second.stdout[-3000:]
    parent, children = runs(uri, "torn")
    assert len(children) == 2 and all(c.info.status == "FINISHED" for c in children)
    points = [(c.data.params["margin"], c.data.params["lc_weight"]) for c in children]
    assert points.count(("0.995", "0.05")) == 1, points  # queued again, evaluated once


@pytest.mark.slow
def test_resume_when_the_driver_died_during_the_confirmation(tmp_path: Path) -> None:
    # The confirmation is a second Tune experiment (<name>.confirm) under the same parent run: a kill there
    # resumes the finished search (nothing re-runs) and then the confirmation, with one run per trial.
    import json

    command, uri, exp_path = _sweep(
        tmp_path, "conf", num_trials=2, reference=[{"name": "ce", "loss": "ce"}], confirm={"top": 1, "seeds": [1, 2]}
    )
    confirm_path = exp_path.parent / "conf.confirm"

    def confirming() -> bool:
        states = sorted(confirm_path.glob("experiment_state-*.json"))
        try:
            return bool(states) and len(json.loads(states[-1].read_text())["trial_data"]) >= 2
        except (OSError, ValueError):  # being written
            return False

    _kill_when(command, tmp_path, confirming, "saved a snapshot of the confirmation")
    second = subprocess.run(command + ["--resume"], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert "6 trials: 6 finished, 0 failed" in second.stdout, second.stdout[-3000:]
    assert " vs ce: " in second.stdout.split("\nverdict (")[-1], second.stdout[-3000:]
    parent, children = runs(uri, "conf")
    assert len(children) == 6 and all(c.info.status == "FINISHED" for c in children)
    phases = sorted(c.data.tags.get("pclc.phase") for c in children)
    assert phases == ["confirm"] * 4 + ["search"] * 2
    trial_ids = [c.data.tags["pclc.trial_id"] for c in children]
    assert len(set(trial_ids)) == 6  # one run per trial: nothing duplicated by the resume
