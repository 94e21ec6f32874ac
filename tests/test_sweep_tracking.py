"""The MLflow layout without Ray: a trial's run is found again on retry (same run, no step twice), a real
SQLite lock is waited out instead of losing a write, and failure reasons are the line that says why."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from pclc.config import TrialConfig
from pclc.contract import param_value
from sweeps.tracking import SweepTracker, TrialRun, failure_reason


def _tracker(tmp_path: Path) -> SweepTracker:
    tracker = SweepTracker(f"sqlite:///{tmp_path / 'mlflow.db'}")
    tracker.start_parent(
        name="unit",
        mode="optimize",
        headline_metric="robust_acc",
        objective=[{"metric": "robust_acc", "mode": "max"}],
        experiment_path=str(tmp_path / "ray_results/unit"),
        resolved_config="name: unit\n",
        resume=False,
    )
    return tracker


def test_attacks_left_out_for_too_few_classes_become_a_tag_the_report_lists(tmp_path: Path) -> None:
    from analysis.load import load_sweep
    from analysis.report import build_blocks, render_markdown
    from pclc.attacks import LEFT_OUT
    from pclc.contract import LEFT_OUT as TAG

    tracker = _tracker(tmp_path)
    said = [
        f"{LEFT_OUT}: autoattack ran apgd_ce, fab_t, square without apgd_t: apgd_t needs at least 4 classes",
        f"{LEFT_OUT}: the per-epoch signal (epoch_robust_acc) ran apgd_ce without apgd_t: apgd_t needs at least 4",
    ]
    for tid, warnings in (("t1", said + ["Gradient masking suspected: …"]), ("t2", said[:1]), ("t3", [])):
        run = TrialRun.open(tracker.target, trial_id=tid, params={**TrialConfig().to_dict(), "seed": int(tid[1])})
        run.log_epoch({"epoch": 1, "train_loss": 1.0})
        run.log_final({"epoch": 1, "robust_acc": 0.5, "clean_acc": 0.9}, {"metrics": {}, "warnings": warnings}, None)
    client = MlflowClient(tracker.tracking_uri)
    tags = {r.data.tags["pclc.trial_id"]: r.data.tags.get(TAG) for r in tracker.child_runs()}
    assert tags == {"t1": " | ".join(said), "t2": said[0], "t3": None}  # the masking warning is not one of them
    tracker.finish_parent()
    sweep = load_sweep("unit", tracking_uri=tracker.tracking_uri, client=client)
    md = render_markdown(build_blocks(sweep, []))
    listed = md.split("**Attacks left out**")[1].split("\n\n")[1]
    assert f"- {said[0]} (2 runs)" in listed and f"- {said[1]} (1 run)" in listed


def test_a_final_logged_before_a_kill_is_not_written_again_by_the_resumed_attempt(tmp_path: Path) -> None:
    """benchmarks/scale.py found it at 1000 trials: the driver killed after a trial's final metrics went out but
    before its `pclc.final` tag; the resumed attempt trained the last epoch again from an older checkpoint and
    wrote every final metric a second time (same values, new timestamps)."""
    tracker = _tracker(tmp_path)
    params = TrialConfig().to_dict()
    epoch = {"epoch": 3, "train_loss": 0.25, "clean_acc": 0.9}
    final = {**epoch, "robust_acc": 0.5, "robust_acc/worst/eps=0.1": 0.5, "prob_gap": 0.7}
    first = TrialRun.open(tracker.target, trial_id="t1", params=params)
    for e in (1, 2, 3):
        first.log_epoch({**epoch, "epoch": e})

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # the driver's kill, after the metrics and before the artifacts and the tag

    first.client.log_dict = killed
    with pytest.raises(KeyboardInterrupt):
        first.log_final(final, {"metrics": final}, None)

    second = TrialRun.open(tracker.target, trial_id="t1", params=params)  # resumed from the epoch-2 checkpoint
    assert second.finished_metrics() is None  # no `pclc.final`: the trial runs on
    second.log_epoch(epoch)  # epoch 3 trained again: already logged, not written
    second.log_final(final, {"metrics": final}, None)
    client = MlflowClient(tracker.tracking_uri)
    for key in ("robust_acc", "prob_gap", "robust_acc/worst/eps_0.1", "train_loss"):
        steps = [m.step for m in client.get_metric_history(second.run_id, key)]
        assert steps.count(3) == 1, (key, steps)
    assert client.get_run(second.run_id).data.tags["pclc.final"] == "1"


def test_a_retried_trial_reopens_its_run_and_logs_no_epoch_twice(tmp_path: Path) -> None:
    tracker = _tracker(tmp_path)
    params = TrialConfig().to_dict()
    first = TrialRun.open(tracker.target, trial_id="t1", params=params)
    for epoch in (1, 2):
        first.log_epoch({"epoch": epoch, "train_loss": 1.0 / epoch})
    first.fail("RuntimeError: worker died")

    second = TrialRun.open(tracker.target, trial_id="t1", params=params)  # the retry
    assert second.run_id == first.run_id and second.reopened
    for epoch in (2, 3):  # epoch 2 again: the checkpoint was older than the last logged epoch
        second.log_epoch({"epoch": epoch, "train_loss": 1.0 / epoch})
    second.log_final({"epoch": 3, "train_loss": 1 / 3, "robust_acc": 0.5}, {"metrics": {}}, None)

    client = MlflowClient(tracker.tracking_uri)
    run = client.get_run(first.run_id)
    assert run.info.status == "FINISHED" and "pclc.failure_reason" not in run.data.tags
    assert run.data.tags["pclc.attempts"] == "2"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "epoch")] == [1, 2, 3]
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train_loss")] == [1, 2, 3]
    assert run.data.metrics["robust_acc"] == 0.5
    assert len(tracker.child_runs()) == 1
    # a third attempt after the run finished only reads the final metrics back
    third = TrialRun.open(tracker.target, trial_id="t1", params=params)
    assert third.finished_metrics() == {"epoch": 3.0, "train_loss": pytest.approx(1 / 3), "robust_acc": 0.5}


def test_a_trial_resumed_after_its_last_epoch_logs_no_epoch_metric_twice(tmp_path: Path) -> None:
    # The driver was killed between the last epoch's checkpoint and the final evaluation: the resumed
    # attempt trains no epoch, and its final metrics repeat the last epoch's values at the same step.
    tracker = _tracker(tmp_path)
    params = TrialConfig().to_dict()
    first = TrialRun.open(tracker.target, trial_id="t1", params=params)
    for epoch in (1, 2, 3):
        first.log_epoch({"epoch": epoch, "train_loss": 1.0 / epoch, "clean_acc": 0.9, "train_seconds": 2.0 * epoch})

    second = TrialRun.open(tracker.target, trial_id="t1", params=params)
    assert second.logged_at(3) == {"epoch": 3, "train_loss": pytest.approx(1 / 3), "clean_acc": 0.9, "train_seconds": 6}
    assert second.logged_at(4) == {}
    second.log_final(
        {"epoch": 3, "clean_acc": 0.9, "train_seconds": 6.0, "robust_acc": 0.5, "eps=0.1/pgd": 0.6}, {}, None
    )

    client = MlflowClient(tracker.tracking_uri)
    for key in ("epoch", "clean_acc", "train_seconds", "train_loss"):
        assert [m.step for m in client.get_metric_history(first.run_id, key)] == [1, 2, 3], key
    for key in ("robust_acc", "eps_0.1/pgd"):  # the final evaluation's own metrics: logged once, at the last step
        assert [m.step for m in client.get_metric_history(first.run_id, key)] == [3], key
    assert client.get_run(first.run_id).info.status == "FINISHED"


def test_reconcile_leaves_one_closed_run_per_trial(tmp_path: Path) -> None:
    from sweeps.tracking import TrialOutcome

    tracker = _tracker(tmp_path)
    params = TrialConfig().to_dict()
    TrialRun.open(tracker.target, trial_id="kept", params=params).log_epoch({"epoch": 1})
    TrialRun.open(tracker.target, trial_id="orphan", params=params)  # Tune lost it: the driver died
    counts = tracker.reconcile(
        {"kept": TrialOutcome(), "never_started": TrialOutcome(error="ValueError: bad", params=params)}
    )
    runs = {r.data.tags["pclc.trial_id"]: r for r in tracker.child_runs()}
    assert set(runs) == {"kept", "never_started"} and counts["orphans_deleted"] == 1
    assert runs["kept"].info.status == "KILLED"  # ended without its final evaluation
    assert runs["never_started"].info.status == "FAILED"
    assert runs["never_started"].data.tags["pclc.failure_reason"] == "ValueError: bad"
    assert runs["never_started"].data.params["margin"] == "0.995"


def test_a_twin_run_from_a_retried_create_never_takes_the_place_of_the_trials_record(tmp_path: Path) -> None:
    """benchmarks/scale.py at 32 trials at once on 2 cores: a `create_run` the server committed but answered too
    late was retried, leaving an empty twin run with the trial's tags that started first; reconcile kept the
    earliest run and deleted the one holding the metrics (11 of 100 trials, 627 points)."""
    from sweeps.tracking import TrialOutcome, _trial_tags, find_trial_run

    tracker = _tracker(tmp_path)
    client = MlflowClient(tracker.tracking_uri)
    target = tracker.target
    real = TrialRun.open(target, trial_id="t1", params=TrialConfig().to_dict())
    started = client.get_run(real.run_id).info.start_time
    twin = client.create_run(target.experiment_id, start_time=started - 1000, tags=_trial_tags(target, "t1"))
    real.log_epoch({"epoch": 1, "train_loss": 1.0})
    assert find_trial_run(client, target, "t1").info.run_id == real.run_id  # a retry reopens the record
    real.log_final({"epoch": 1, "train_loss": 1.0, "robust_acc": 0.5}, {"metrics": {}}, None)
    counts = tracker.reconcile({"t1": TrialOutcome()})
    assert counts["duplicates_deleted"] == 1
    (left,) = tracker.child_runs()
    assert left.info.run_id == real.run_id and left.data.metrics["robust_acc"] == 0.5
    assert client.get_run(twin.info.run_id).info.lifecycle_stage == "deleted"


@pytest.mark.slow
def test_a_locked_sqlite_store_is_waited_out_not_lost(tmp_path: Path) -> None:
    tracker = _tracker(tmp_path)
    run = TrialRun.open(tracker.target, trial_id="t1", params={"lr": 0.001})
    locked = threading.Event()

    def hold_lock() -> None:  # another writer holding the file past MLflow's own 20 s SQLite busy timeout
        con = sqlite3.connect(tmp_path / "mlflow.db", timeout=30)  # wait out a reader MLflow may still hold
        con.execute("BEGIN EXCLUSIVE")
        locked.set()
        time.sleep(21)
        con.rollback()
        con.close()

    holder = threading.Thread(target=hold_lock)
    holder.start()
    assert locked.wait(timeout=60), "the test could not take the SQLite lock"
    run.log_epoch({"epoch": 1, "train_loss": 0.5})  # raises 'database is locked' without the retry
    holder.join()
    history = MlflowClient(tracker.tracking_uri).get_metric_history(run.run_id, "train_loss")
    assert [(m.step, m.value) for m in history] == [(1, 0.5)]


def test_failure_reason_is_the_exception_line_of_a_traceback() -> None:
    tb = 'Traceback (most recent call last):\n  File "x.py", line 1, in f\n    raise X\nNonFiniteLossError: loss is nan\n'
    assert failure_reason(tb) == "NonFiniteLossError: loss is nan"
    ray_text = 'ray::ImplicitFunc.train() (pid=1, ip=10.0.0.1)\n  File "t.py", line 3\nRuntimeError: injected\n'
    assert failure_reason(ray_text) == "RuntimeError: injected"
    assert failure_reason("the worker died unexpectedly\n") == "the worker died unexpectedly"
    assert failure_reason("") == "unknown error"


def test_params_encode_lists_as_json() -> None:
    assert param_value([0.1, 0.2]) == "[0.1, 0.2]" and param_value(None) == "None" and param_value(0.5) == "0.5"


def test_a_sweep_killed_while_mlflow_creates_its_store_leaves_it_whole_or_absent(tmp_path: Path) -> None:
    # MLflow builds a new SQLite store one migration at a time (about a second); a driver killed in between
    # used to leave a file that every later run refused ("table … already exists"). Kill it at many moments.
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    create = (
        "from sweeps.tracking import SweepTracker; print('go', flush=True); "
        f"SweepTracker({uri!r}).ensure_experiment('first')"
    )
    outcomes = []
    for after in (0.05, 0.2, 0.35, 0.5, 0.65, 0.8, 1.0, 1.3):
        proc = subprocess.Popen([sys.executable, "-c", create], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        assert proc.stdout is not None and proc.stdout.readline() == b"go\n"
        time.sleep(after)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        exists = (tmp_path / "mlflow.db").exists()
        outcomes.append((after, exists))
        if exists:  # whole: the next sweep opens it and records into it
            break
    tracker = SweepTracker(uri)
    assert tracker.ensure_experiment("next"), outcomes
    assert (tmp_path / "mlflow.db").exists() and not list(tmp_path.glob(".mlflow.db.*")), outcomes
