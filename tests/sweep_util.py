"""Shared pieces of the sweep tests: tiny sweep files, MLflow read-back, and injected faults.

The fault functions wrap the real `run_trial`; they are sent to Ray workers by value
(`register_pickle_by_value`), since workers cannot import this test folder.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from pclc import metrics as M
from pclc.config import TrialConfig
from pclc.experiment import run_trial
from sweeps.config import SweepConfig, objective_metrics, parse_sweep

EPOCH_KEYS = (M.EPOCH, M.TRAIN_LOSS, M.CLEAN_ACC, M.EPOCH_ROBUST_ACC)

# A trial of a few seconds: digits, 2-3 epochs, 64 test samples, two cheap attacks.
TINY_TRIAL: dict[str, Any] = {
    "dataset": "digits", "model": "small_cnn", "epochs": 3, "warmup_epochs": 1, "lr": 0.003,
    "eval_limit": 64, "epoch_eval_samples": 32, "attacks": ["fgsm", "pgd_ce"], "eps": [0.1, 0.2],
    "headline_eps": 0.1, "attack_steps": 3, "masking_eps": 0.5, "save_weights": False, "threads": 1,
}  # fmt: skip


def tiny_optimize(name: str, tmp: Path, **changes: Any) -> SweepConfig:
    data: dict[str, Any] = {
        "name": name,
        "mode": "optimize",
        "trial": dict(TINY_TRIAL),
        "objective": [{"metric": "robust_acc", "mode": "max"}],
        "space": {
            "margin": {"type": "uniform", "low": 0.9, "high": 0.999},
            "lc_weight": {"type": "loguniform", "low": 0.01, "high": 0.5},
        },
        "initial_points": [{"margin": 0.995, "lc_weight": 0.05}],
        "num_trials": 3,
        "max_concurrent": 2,
        "max_retries": 1,
        "storage_path": str(tmp / "ray_results"),
        "tracking_uri": f"sqlite:///{tmp / 'mlflow.db'}",
    }
    for key, value in changes.items():
        if key == "trial":
            data["trial"].update(value)
        else:
            data[key] = value
    return parse_sweep(data, source=f"<{name}>")


def tiny_ablation(name: str, tmp: Path, variants: list[dict[str, Any]], seeds: list[int], **changes: Any) -> SweepConfig:
    data = tiny_optimize(name, tmp).model_dump(mode="json")
    for key in ("space", "initial_points", "num_trials"):
        data.pop(key)
    data.update(mode="ablation", variants=variants, seeds=seeds, **changes)
    return parse_sweep(data, source=f"<{name}>")


def final_metric_names(trial: TrialConfig) -> list[str]:
    """Every final metric the MLflow child run must hold (DESIGN.md schema, MLflow-mapped)."""
    names = set(objective_metrics(trial)) | set(EPOCH_KEYS) | {M.PROB_GAP, "trial_seconds"}
    return sorted(M.to_mlflow(n) for n in names)


def runs(tracking_uri: str, experiment: str) -> tuple[Run, list[Run]]:
    """(parent, children) of an experiment's single sweep."""
    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None, f"no MLflow experiment {experiment}"
    all_runs = client.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in all_runs if r.data.tags.get("pclc.role") == "sweep"]
    assert len(parents) == 1, [r.data.tags for r in parents]
    children = [r for r in all_runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert len(children) + 1 == len(all_runs), "runs outside the sweep"
    return parents[0], children


def history(tracking_uri: str, run: Run, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in MlflowClient(tracking_uri).get_metric_history(run.info.run_id, key))


# --------------------------------------------------------------------------- injected faults


def _note(path: str, record: dict[str, Any]) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def notes(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def failing_after_first_epoch(
    cfg: TrialConfig, report: Any, *, prepared: Any = None, resume: Any = None, notes_file: str
) -> dict[str, float]:
    """Trials with loss 'pc' raise after each epoch they train; every attempt is noted in `notes_file`
    (bind it with functools.partial)."""
    _note(notes_file, {
        "seed": cfg.seed, "loss": cfg.loss, "prepared": prepared is not None,
        "resume_epoch": None if resume is None else resume["epoch"],
    })  # fmt: skip
    if cfg.loss != "pc":
        return run_trial(cfg, report, prepared=prepared, resume=resume)

    def report_then_fail(metrics: dict[str, float], state: Any) -> None:
        report(metrics, state)
        if state is not None:
            raise RuntimeError(f"injected failure after epoch {int(metrics['epoch'])}")

    return run_trial(cfg, report_then_fail, prepared=prepared, resume=resume)
