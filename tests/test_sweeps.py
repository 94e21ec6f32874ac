"""End-to-end sweeps on a real local Ray (started once for this module) and a real MLflow SQLite store:
the layout analysis reads, parallel writes, retries, NaN losses and ASHA."""

from __future__ import annotations

import functools
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
import sweep_util
from mlflow.tracking import MlflowClient
from ray import cloudpickle
from sweep_util import (  # noqa: F401  (local_ray is a fixture)
    EPOCH_KEYS,
    final_metric_names,
    history,
    local_ray,
    notes,
    runs,
    tiny_ablation,
    tiny_optimize,
)

from analysis.load import fetch_outcomes
from pclc import metrics as M
from pclc.config import TrialConfig
from pclc.data import load_stored
from pclc.experiment import draw_subsets
from pclc.samples import DESIGN
from sweeps.driver import run_sweep

cloudpickle.register_pickle_by_value(sweep_util)  # Ray workers cannot import the tests folder


def _uri(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


@pytest.mark.slow
def test_optimize_sweep_logs_one_finished_child_per_trial_with_every_write(local_ray: None, tmp_path: Path) -> None:
    cfg = tiny_optimize("opt", tmp_path, num_trials=4, max_concurrent=2, trial={"save_weights": True})
    printed = io.StringIO()
    result = run_sweep(cfg, out=printed)
    uri = _uri(tmp_path)
    client = MlflowClient(uri)

    # ---- the parent run: one per sweep, closed, with the resolved config, commit and versions
    parent, children = runs(uri, "opt")
    assert parent.info.status == "FINISHED"
    tags = parent.data.tags
    assert (tags["pclc.mode"], tags["pclc.headline_metric"]) == ("optimize", "robust_acc")
    assert "git_commit" in tags and "ray" in json.loads(tags["versions"])
    assert [a.path for a in client.list_artifacts(parent.info.run_id)] == ["sweep_config.yaml"]

    # ---- one child per trial, all FINISHED, every param and every metric step present
    drawn = draw_subsets(cfg.trial, load_stored(cfg.trial.dataset))
    assert len(children) == 4 and all(c.info.status == "FINISHED" for c in children)
    assert {c.data.tags["pclc.trial_id"] for c in children} == set(result.trials)
    for child in children:
        assert set(child.data.params) == set(TrialConfig.model_fields)
        assert json.loads(child.data.params["attacks"]) == ["fgsm", "apgd_ce"]
        assert set(final_metric_names(cfg.trial)) <= set(child.data.metrics)
        for key in EPOCH_KEYS:  # per epoch, once each, though two trials wrote to SQLite at once
            assert [s for s, _ in history(uri, child, key)] == [1, 2, 3], key
        artifacts = {a.path for a in client.list_artifacts(child.info.run_id)}
        assert {"evaluation.json", "weights"} <= artifacts
        assert [a.path for a in client.list_artifacts(child.info.run_id, "weights")] == ["weights/model.pt"]
        evaluation = json.loads(
            Path(client.download_artifacts(child.info.run_id, "evaluation.json", str(tmp_path))).read_text()
        )
        assert evaluation["metrics"]["robust_acc"] == child.data.metrics["robust_acc"]
        # the per-sample outcomes, logged with evaluation.json, give back every accuracy exactly (analysis reads them)
        outcomes = fetch_outcomes(client, child.info.run_id)
        assert outcomes is not None and outcomes.dataset == "digits" and outcomes.samples == DESIGN
        assert outcomes.indices.tolist() == drawn.evaluated.tolist()  # the stratified draw, the same for every trial
        logged = {M.canonical_metric(k): v for k, v in child.data.metrics.items()}
        recomputed = outcomes.metrics()
        assert {k for k in logged if k in recomputed or M.parse_robust_key(k)} == set(recomputed)
        assert {k: logged[k] for k in recomputed} == recomputed

    # the trials really ran side by side (two writers on the SQLite file)
    spans = sorted((c.info.start_time, c.info.end_time) for c in children)
    assert any(later[0] < earlier[1] for earlier, later in zip(spans, spans[1:]))
    # Optuna evaluated the authors' defaults first
    assert any(c.data.params["margin"] == "0.995" and c.data.params["lc_weight"] == "0.05" for c in children)

    text = printed.getvalue()
    assert "best configurations by robust_acc (max)" in text
    assert f"mlflow ui --backend-store-uri {uri}" in text
    assert len(result.best) == 4 and result.best[0]["robust_acc"] == max(r["robust_acc"] for r in result.finished)


@pytest.mark.slow
def test_failing_trial_is_retried_from_its_checkpoint_then_recorded_failed(local_ray: None, tmp_path: Path) -> None:
    notes_file = tmp_path / "attempts.jsonl"
    cfg = tiny_ablation(
        "faults", tmp_path, variants=[{"loss": "ce"}, {"loss": "pc", "margin": 0.99}], seeds=[0], max_retries=2
    )
    run_fn = functools.partial(sweep_util.failing_after_first_epoch, notes_file=str(notes_file))
    result = run_sweep(cfg, run_fn=run_fn, out=io.StringIO())

    attempts = notes(notes_file)
    pc = [a for a in attempts if a["loss"] == "pc"]
    # 1 + max_retries attempts, each continuing from the checkpoint of the epoch before
    assert [a["resume_epoch"] for a in pc] == [None, 1, 2]
    assert all(a["prepared"] for a in attempts)  # data shared from the driver, not rebuilt per trial

    uri = _uri(tmp_path)
    _, children = runs(uri, "faults")
    by_loss = {c.data.params["loss"]: c for c in children}
    assert len(children) == 2 and set(by_loss) == {"ce", "pc"}
    failed, ok = by_loss["pc"], by_loss["ce"]
    assert failed.info.status == "FAILED"
    assert "RuntimeError: injected failure after epoch 3" in failed.data.tags["pclc.failure_reason"]
    assert failed.data.tags["pclc.attempts"] == "3"
    assert [s for s, _ in history(uri, failed, "epoch")] == [1, 2, 3]  # retries logged no epoch twice
    assert ok.info.status == "FINISHED" and set(final_metric_names(cfg.trial)) <= set(ok.data.metrics)
    assert result.failed == [failed.data.tags["pclc.trial_id"]]


@pytest.mark.slow
def test_nan_loss_fails_the_trial_with_the_reason_and_the_sweep_goes_on(local_ray: None, tmp_path: Path) -> None:
    # SGD with lr 1e6 really diverges: the loss is NaN within the first epoch
    variants = [{"name": "diverging", "loss": "ce", "optimizer": "sgd", "lr": 1e6}, {"name": "sane", "loss": "ce"}]
    cfg = tiny_ablation("nan", tmp_path, variants=variants, seeds=[0], max_retries=1)
    printed = io.StringIO()
    result = run_sweep(cfg, out=printed)

    _, children = runs(_uri(tmp_path), "nan")
    by_variant = {c.data.tags["pclc.variant"]: c for c in children}
    bad = by_variant["diverging"]
    assert bad.info.status == "FAILED"
    reason = bad.data.tags["pclc.failure_reason"]
    assert reason.startswith("NonFiniteLossError") and "nan" in reason
    assert bad.data.tags["pclc.attempts"] == "2"  # retried once
    assert by_variant["sane"].info.status == "FINISHED"
    assert len(result.failed) == 1
    table = printed.getvalue().split("ablation: mean ± sd over seeds")[1].split("Pareto front")[0]
    assert "variant=sane" in table and "diverging" not in table  # the table averages finished trials only
    assert "failed: trial" in printed.getvalue() and "NonFiniteLossError" in printed.getvalue()
    assert bad.data.tags["pclc.failure_deterministic"] == "1"

    # A resume does not train the diverging trial again: its failure would only repeat ...
    run_sweep(cfg, resume=True, out=io.StringIO())
    _, children = runs(_uri(tmp_path), "nan")
    again = {c.data.tags["pclc.variant"]: c for c in children}["diverging"]
    assert again.info.status == "FAILED" and again.data.tags["pclc.attempts"] == "2"
    assert again.data.tags["pclc.failure_reason"] == reason and again.info.end_time == bad.info.end_time
    # ... unless asked: --retry-failed runs it (and it fails the same way, two more attempts)
    run_sweep(cfg, resume=True, retry_failed=True, out=io.StringIO())
    _, children = runs(_uri(tmp_path), "nan")
    retried = {c.data.tags["pclc.variant"]: c for c in children}["diverging"]
    assert retried.info.status == "FAILED" and int(retried.data.tags["pclc.attempts"]) > 2
    assert retried.data.tags["pclc.failure_reason"].startswith("NonFiniteLossError")


@pytest.mark.slow
def test_asha_stops_a_weak_trial_early_and_each_run_says_how_it_ended(local_ray: None, tmp_path: Path) -> None:
    # one trial at a time: the first (a sane lr) sets the rung, the second (lr 1e-7 learns nothing) falls
    # below it at epoch 1 and is stopped; the rest are up to TPE and ASHA
    space = {
        "margin": {"type": "uniform", "low": 0.9, "high": 0.999},
        "lr": {"type": "choice", "values": [0.003, 1e-7]},
    }
    cfg = tiny_optimize(
        "asha",
        tmp_path,
        num_trials=4,
        max_concurrent=1,
        trial={"epochs": 4},
        space=space,
        initial_points=[{"margin": 0.995, "lr": 0.003}, {"margin": 0.995, "lr": 1e-7}],
        scheduler={"type": "asha", "metric": "epoch_robust_acc", "grace_period": 1, "reduction_factor": 2},
    )
    result = run_sweep(cfg, out=io.StringIO())
    uri = _uri(tmp_path)
    _, children = runs(uri, "asha")
    assert len(children) == 4
    finished = [c for c in children if c.info.status == "FINISHED"]
    stopped = [c for c in children if c.info.status == "KILLED"]
    assert len(finished) + len(stopped) == 4  # none RUNNING, none FAILED
    weak = [c for c in children if c.data.params["lr"] == "1e-07"]
    assert weak and all(c in stopped for c in weak)
    for c in stopped:  # stopped before the final evaluation: tagged, per-epoch metrics only
        assert c.data.tags.get("pclc.stopped_early") == "true"
        assert "robust_acc" not in c.data.metrics and [s for s, _ in history(uri, c, "epoch")][0] == 1
    assert all(set(final_metric_names(cfg.trial)) <= set(c.data.metrics) for c in finished)
    assert len(result.finished) == len(finished) and result.stopped_early == len(stopped)


@pytest.mark.slow
def test_pareto_search_over_clean_and_robust_accuracy(local_ray: None, tmp_path: Path) -> None:
    objective = [{"metric": "clean_acc", "mode": "max"}, {"metric": "robust_acc/apgd_ce/eps=0.1", "mode": "max"}]
    cfg = tiny_optimize("pareto", tmp_path, num_trials=4, objective=objective, trial={"epochs": 2})
    printed = io.StringIO()
    result = run_sweep(cfg, out=printed)
    _, children = runs(_uri(tmp_path), "pareto")
    assert len(children) == 4 and all(c.info.status == "FINISHED" for c in children)
    assert len(result.finished) == 4

    keys = ("clean_acc", "robust_acc/apgd_ce/eps=0.1")
    point = {r["trial_id"]: tuple(r[k] for k in keys) for r in result.finished}

    def dominated(p: tuple[float, ...]) -> bool:
        return any(all(a >= b for a, b in zip(q, p)) and q != p for q in point.values())

    front = {r["trial_id"] for r in result.best}
    assert front == {t for t, p in point.items() if not dominated(p)}
    assert "Pareto front by clean_acc (max), robust_acc/apgd_ce/eps=0.1 (max)" in printed.getvalue()


def test_bad_sweep_file_exits_2_before_ray_starts(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nnum_trials: 2\nspace: {margin: {type: uniform, low: 0.9, high: 1.5}}\n")
    proc = subprocess.run([sys.executable, "-m", "sweeps", str(bad)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert str(bad) in proc.stderr and "margin=1.5" in proc.stderr and "less than or equal to 1" in proc.stderr
    assert not (tmp_path / "ray_results").exists() and not (tmp_path / "mlflow.db").exists()


def test_tune_snapshots_every_5_s_in_small_sweeps_and_at_tunes_own_pace_in_large_ones() -> None:
    from sweeps.driver import SNAPSHOT_AUTO_ABOVE, snapshot_period

    # at 1000 trials one snapshot took 0.8–1.4 s (benchmarks/scale.py): every 5 s that is a fifth of the driver
    assert snapshot_period(40) == snapshot_period(SNAPSHOT_AUTO_ABOVE) == "5"
    assert snapshot_period(SNAPSHOT_AUTO_ABOVE + 1) == snapshot_period(1000) == "auto"
