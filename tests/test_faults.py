"""Faults a long sweep meets, each against a real local Ray and a real MLflow: a trial's worker killed
mid-epoch, the tracking server down for a while, an unwritable or full storage folder.
(The driver killed mid-sweep, then resumed, is tests/test_sweep_resume.py.)"""

from __future__ import annotations

import functools
import io
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sweep_util
import torch
import yaml
from mlflow.tracking import MlflowClient
from ray import cloudpickle
from sweep_util import (  # noqa: F401  (local_ray is a fixture)
    EPOCH_KEYS,
    MlflowServer,
    assert_mlflow_holds_every_report,
    final_metric_names,
    history,
    local_ray,
    notes,
    runs,
    started_tracker,
    tiny_ablation,
    tiny_optimize,
)

from pclc.config import TrialConfig
from pclc.experiment import Silent, run_trial
from pclc.train import load_checkpoint
from sweeps.driver import StorageError, run_sweep
from sweeps.tracking import SweepTracker, TrackingUnavailable, TrialRun
from sweeps.trainable import PENDING_FILE

cloudpickle.register_pickle_by_value(sweep_util)  # Ray workers cannot import the tests folder


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    """One `mlflow server` for this module; tests that stop it start it again before they end."""
    srv = MlflowServer(tmp_path_factory.mktemp("mlflow_server"))
    srv.start()
    yield srv
    srv.stop()


# --------------------------------------------------------------------------- a trial's worker killed


@pytest.mark.slow
def test_a_trial_killed_mid_epoch_is_retried_from_its_last_checkpoint(local_ray: None, tmp_path: Path) -> None:
    notes_file, marker = tmp_path / "attempts.jsonl", tmp_path / "killed_once"
    cfg = tiny_ablation("sigkill", tmp_path, variants=[{"loss": "pclc"}], seeds=[0], max_retries=1)
    run_fn = functools.partial(
        sweep_util.killed_once_mid_trial, notes_file=str(notes_file), marker=str(marker), kill_epoch=3
    )
    result = run_sweep(cfg, run_fn=run_fn, out=io.StringIO())

    # ---- the worker really died (SIGKILL after training epoch 3), and a new one went on from epoch 2's checkpoint
    assert marker.exists()
    attempts = notes(notes_file)
    starts = [a for a in attempts if "resume_epoch" in a]
    assert [a["resume_epoch"] for a in starts] == [None, 2]
    assert starts[0]["pid"] != starts[1]["pid"]
    trained = [(a["pid"], a["epoch"]) for a in attempts if "epoch" in a]
    assert trained == [(starts[0]["pid"], 1), (starts[0]["pid"], 2), (starts[0]["pid"], 3), (starts[1]["pid"], 3)]
    assert result.failed == [] and len(result.finished) == 1

    # ---- MLflow: one run for the trial, FINISHED, every epoch once (the lost epoch 3 logged by the retry)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    _, children = runs(uri, "sigkill")
    assert len(children) == 1
    child = children[0]
    assert child.info.status == "FINISHED" and child.data.tags["pclc.attempts"] == "2"
    assert "pclc.failure_reason" not in child.data.tags
    for key in EPOCH_KEYS:
        assert [s for s, _ in history(uri, child, key)] == [1, 2, 3], key
    assert set(final_metric_names(cfg.trial)) <= set(child.data.metrics)


@pytest.mark.slow
class LastCheckpoint(Silent):
    """A reporter that keeps the newest checkpoint: an uninterrupted run's final weights."""

    state: dict[str, Any]

    def on_epoch(self, metrics: dict[str, float], state: dict[str, Any] | None) -> None:
        if state is not None:
            self.state = state


def test_a_trial_killed_between_checkpoints_resumes_from_the_last_one_with_the_same_weights(
    local_ray: None, tmp_path: Path
) -> None:
    # checkpoint_every 2 over 5 epochs: checkpoints after epochs 2, 4 and 5. Killed once epoch 4 has trained
    # (before its checkpoint), the retry resumes from epoch 2 and ends with an uninterrupted run's weights.
    notes_file, marker = tmp_path / "attempts.jsonl", tmp_path / "killed_once"
    trial = {"epochs": 5, "checkpoint_every": 2, "save_weights": True, "device": "cpu"}
    cfg = tiny_ablation(
        "interval",
        tmp_path,
        variants=[{"loss": "pclc"}],
        seeds=[0],
        max_retries=1,
        trial={**sweep_util.TINY_TRIAL, **trial},
    )
    run_fn = functools.partial(
        sweep_util.killed_once_mid_trial, notes_file=str(notes_file), marker=str(marker), kill_epoch=4
    )
    result = run_sweep(cfg, run_fn=run_fn, out=io.StringIO())
    assert marker.exists() and result.failed == [] and len(result.finished) == 1
    starts = [a["resume_epoch"] for a in notes(notes_file) if "resume_epoch" in a]
    assert starts == [None, 2]  # epoch 3 reported no checkpoint: the newest one is epoch 2's

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    _, (child,) = runs(uri, "interval")
    assert [s for s, _ in history(uri, child, "epoch")] == [1, 2, 3, 4, 5]  # each epoch once
    (weights,) = (tmp_path / "ray_results" / "interval" / "outputs").glob("*/model.pt")
    straight = LastCheckpoint()
    run_trial(cfg.trial_config({"loss": "pclc", "seed": 0, "out_dir": None}), straight)
    swept = load_checkpoint(weights)
    for key, value in straight.state["model"].items():
        assert torch.equal(swept[key], value), key


# --------------------------------------------------------------------------- the tracking server down


def _tracker(uri: str, name: str, tmp_path: Path) -> SweepTracker:
    return started_tracker(uri, name, experiment_path=str(tmp_path / "ray_results" / name))


@pytest.mark.slow
def test_unsent_metrics_wait_in_the_buffer_file_and_a_retried_attempt_sends_them(
    server: MlflowServer, tmp_path: Path
) -> None:
    tracker = _tracker(server.uri, "buffered", tmp_path)
    buffer = tmp_path / "trial" / PENDING_FILE
    first = TrialRun.open(
        tracker.target, trial_id="t1", params=TrialConfig().to_dict(), buffer_path=buffer, patience_s=1.0
    )
    first.log_epoch({"epoch": 1, "train_loss": 1.0})
    assert not buffer.exists()  # sent at once

    server.stop()
    first.log_epoch({"epoch": 2, "train_loss": 0.5})  # returns: training goes on while the server is down
    pending = json.loads(buffer.read_text())
    assert sorted((k, step) for k, _, _, step in pending) == [("epoch", 2), ("train_loss", 2)]
    with pytest.raises(TrackingUnavailable, match=f"{server.uri}.*final evaluation"):
        first.log_final({"epoch": 2, "robust_acc": 0.25}, {"metrics": {}}, None)
    assert len(json.loads(buffer.read_text())) == 3  # the final metric waits with the rest

    server.start()
    second = TrialRun.open(
        tracker.target, trial_id="t1", params=TrialConfig().to_dict(), buffer_path=buffer
    )  # the retry
    assert second.run_id == first.run_id and 2 in second.logged_epochs and not buffer.exists()
    second.log_epoch({"epoch": 2, "train_loss": 0.5})  # the retry's checkpoint was epoch 1: not logged twice
    second.log_final({"epoch": 2, "robust_acc": 0.5}, {"metrics": {}}, None)

    client = MlflowClient(server.uri)
    run = client.get_run(first.run_id)
    assert run.info.status == "FINISHED"
    assert [(m.step, m.value) for m in client.get_metric_history(first.run_id, "train_loss")] == [(1, 1.0), (2, 0.5)]
    assert [m.step for m in client.get_metric_history(first.run_id, "epoch")] == [1, 2]
    # the first attempt's final value reached MLflow too (step 2, as logged); the retry's is the latest
    assert sorted(m.value for m in client.get_metric_history(first.run_id, "robust_acc")) == [0.25, 0.5]


@pytest.mark.slow
def test_trials_train_on_while_the_tracking_server_is_down_and_every_metric_arrives(
    local_ray: None, server: MlflowServer, tmp_path: Path
) -> None:
    notes_dir, go_file = tmp_path / "notes", tmp_path / "server_is_down"
    notes_dir.mkdir()
    cfg = tiny_optimize("outage", tmp_path, num_trials=2, max_concurrent=2, max_retries=0)
    run_fn = functools.partial(sweep_util.noting_reports, notes_dir=str(notes_dir), go_file=str(go_file))
    seen: dict[str, object] = {}

    def epochs_noted() -> list[set[int]]:
        return [
            {int(n["metrics"]["epoch"]) for n in notes(f) if "metrics" in n and not n["final"]}
            for f in notes_dir.glob("*.jsonl")
        ]

    def outage() -> None:  # stop the server once both trials logged epoch 1; restart it once both trained on
        try:
            deadline = time.monotonic() + 300
            while not (len(epochs_noted()) == 2 and all(1 in e for e in epochs_noted())):
                assert time.monotonic() < deadline, "the trials did not log epoch 1"
                time.sleep(0.2)
            server.stop()
            seen["down"] = not server.answers()
            go_file.touch()
            while not all(e == {1, 2, 3} for e in epochs_noted()):
                assert time.monotonic() < deadline, (
                    f"the trials stopped training while MLflow was down: {epochs_noted()}"
                )
                time.sleep(0.2)
            seen["pending"] = [json.loads(p.read_text()) for p in (tmp_path / "ray_results").rglob(PENDING_FILE)]
            time.sleep(3)  # the trials now wait for the server to log their final evaluation
            server.start()
        except BaseException as exc:  # reported by the test thread
            seen["error"] = exc
            go_file.touch()
            if not server.answers():
                server.start()

    thread = threading.Thread(target=outage)
    thread.start()
    try:
        result = run_sweep(cfg, tracking_uri=server.uri, run_fn=run_fn, out=io.StringIO())
    finally:
        thread.join()
    assert "error" not in seen, seen.get("error")
    assert seen["down"] is True
    # epochs 2 and 3 of both trials were trained and reported while the server was down; their metrics waited
    pending = seen["pending"]
    assert isinstance(pending, list) and len(pending) == 2
    assert all({step for key, _, _, step in rows if key == "epoch"} == {2, 3} for rows in pending)

    assert result.failed == [] and len(result.finished) == 2
    assert_mlflow_holds_every_report(server.uri, "outage", notes_dir, cfg.trial)
    assert list((tmp_path / "ray_results").rglob(PENDING_FILE)) == []  # everything sent


# --------------------------------------------------------------------------- storage that cannot be written


def _sweep_file(tmp_path: Path) -> Path:
    cfg = tiny_optimize("storage", tmp_path, num_trials=1)
    path = tmp_path / "storage.yaml"
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    return path


def _mount_tmpfs(folder: Path, options: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(
            f"cannot mount a tmpfs here ({done.stderr.strip() or done.returncode}): needs root and CAP_SYS_ADMIN"
        )


@pytest.fixture
def mounts() -> Iterator[list[Path]]:
    mounted: list[Path] = []
    yield mounted
    for folder in mounted:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)


@pytest.fixture(params=["under_a_file", "read_only", "full"])
def bad_storage(request: pytest.FixtureRequest, tmp_path: Path, mounts: list[Path]) -> tuple[Path, str]:
    """(storage_path, the reason the error must give) for a storage folder that cannot be written."""
    if request.param == "under_a_file":
        (tmp_path / "a_file").write_text("not a folder")
        return tmp_path / "a_file" / "results", "Not a directory"
    folder = tmp_path / request.param
    if request.param == "read_only":
        if os.geteuid() != 0:
            folder.mkdir()
            folder.chmod(0o500)
            return folder / "results", "Permission denied"
        _mount_tmpfs(folder, "ro,size=1m")  # root writes through chmod 0o500: a read-only mount instead
        mounts.append(folder)
        return folder / "results", "Read-only file system"
    _mount_tmpfs(folder, "size=256k")
    mounts.append(folder)
    with open(folder / "filler", "wb", buffering=0) as f:  # fill it to the last byte
        try:
            while True:
                f.write(b"\0" * 4096)
        except OSError:
            pass
    return folder / "results", "No space left on device"


def test_unwritable_storage_path_is_one_clear_error_before_ray_starts(
    tmp_path: Path, bad_storage: tuple[Path, str]
) -> None:
    storage, reason = bad_storage
    proc = subprocess.run(
        [sys.executable, "-m", "sweeps", str(_sweep_file(tmp_path)), "--storage-path", str(storage)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert f"storage_path {storage} cannot be written ({reason})" in proc.stderr
    assert "Ray" not in proc.stdout + proc.stderr  # no local Ray was started
    assert not (tmp_path / "mlflow.db").exists()  # nor the MLflow store touched


@pytest.mark.slow
def test_a_disk_full_during_training_fails_the_trial_naming_the_path(
    local_ray: None, tmp_path: Path, mounts: list[Path]
) -> None:
    storage = tmp_path / "small_disk"
    _mount_tmpfs(storage, "size=4m")
    mounts.append(storage)
    cfg = tiny_optimize("full", tmp_path, num_trials=1, max_retries=0, storage_path=str(storage))
    run_fn = functools.partial(sweep_util.filling_disk_after_first_epoch, fill_dir=str(storage))
    # Ray cannot even read its own results back from the full disk: the sweep ends with one clear error
    with pytest.raises(StorageError, match=f"storage_path {storage} cannot be written \\(No space left on device\\)"):
        run_sweep(cfg, run_fn=run_fn, out=io.StringIO())

    parent, children = runs(f"sqlite:///{tmp_path / 'mlflow.db'}", "full")
    assert len(children) == 1 and children[0].info.status == "FAILED"
    reason = children[0].data.tags["pclc.failure_reason"]
    # the checkpoint of epoch 2 could not be saved: the reason says so and where
    assert reason.startswith("StorageFullError: [Errno 28] No space left on device while saving the checkpoint"), reason
    assert f"{storage}/full/trial_{children[0].data.tags['pclc.trial_id']}" in reason, reason
    assert [s for s, _ in history(f"sqlite:///{tmp_path / 'mlflow.db'}", children[0], "epoch")] == [1, 2]
    assert parent.info.status == "FAILED" and "No space left on device" in parent.data.tags["pclc.failure_reason"]


# --------------------------------------------------------------------------- the driver's wrap-up during an outage
@pytest.mark.slow
def test_the_driver_wraps_up_a_sweep_through_a_tracking_server_outage(
    server: MlflowServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sweeps.tracking import TrackingTarget

    monkeypatch.setenv("PCLC_TRACKING_PATIENCE_S", "120")
    tracker = started_tracker(
        server.uri, "outage-wrapup", experiment_path="/nowhere/outage-wrapup", objective=[], resolved_config="name: x\n"
    )
    target = TrackingTarget(server.uri, tracker.experiment_id, tracker.parent_run_id)
    run = TrialRun.open(target, trial_id="t1", params={"seed": 0})
    run.log_epoch({"epoch": 1, "clean_acc": 0.5})

    # The server goes down just as the sweep ends, and is back 4 s later: the wrap-up waits for it.
    server.stop()
    back = threading.Timer(4.0, server.start)
    back.start()
    try:
        tracker.close_trial("t1", error="RuntimeError: boom")
        tracker.finish_parent("FINISHED")
    finally:
        back.join()
    client = MlflowClient(server.uri)
    assert client.get_run(tracker.parent_run_id).info.status == "FINISHED"
    child = client.get_run(run.run_id)
    assert child.info.status == "FAILED" and child.data.tags["pclc.failure_reason"] == "RuntimeError: boom"
