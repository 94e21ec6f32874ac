"""Shared pieces of the sweep tests: tiny sweep files, MLflow read-back, injected faults, and a real
`mlflow server` that a test can stop and start again.

The fault functions wrap the real `run_trial`; they are sent to Ray workers by value
(`register_pickle_by_value`), since workers cannot import this test folder.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from machine import mlflow_answers
from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from pclc import metrics as M
from pclc.config import TrialConfig
from pclc.contract import param_value
from pclc.experiment import Evaluation, Reporter, run_trial
from sweeps.config import SweepConfig, objective_metrics, parse_sweep
from sweeps.driver import ray_session, set_tune_environment
from sweeps.tracking import SweepTracker

EPOCH_KEYS = (M.EPOCH, M.TRAIN_LOSS, M.CLEAN_ACC, M.EPOCH_ROBUST_ACC)


def epoch_steps(key: str, epochs: int, rungs: tuple[int, ...] = ()) -> list[int]:
    """The epochs a trial of `epochs` logs `key` at: every one, but the per-epoch signal only at its default
    cadence and a scheduler's `rungs` (`TrialConfig.signal_epochs`)."""
    if key != M.EPOCH_ROBUST_ACC:
        return list(range(1, epochs + 1))
    return list(TrialConfig(epochs=epochs, warmup_epochs=0).signal_epochs(also=rungs))


# A trial of a few seconds: digits, 2-3 epochs, 64 test samples, two cheap attacks (one AutoAttack-grade,
# so the robust_acc objective is one a sweep may optimise).
TINY_TRIAL: dict[str, Any] = {
    "dataset": "digits",
    "model": "small_cnn",
    "epochs": 3,
    "warmup_epochs": 1,
    "lr": 0.003,
    "eval_limit": 64,
    "epoch_eval_samples": 32,
    "attacks": ["fgsm", "apgd_ce"],
    "eps": [0.1, 0.2],
    "headline_eps": 0.1,
    "attack_steps": 3,
    "aa_steps": 5,
    "aa_limit": 32,
    "epoch_attack_steps": 3,
    "masking_eps": 0.5,
    "save_weights": False,
    "threads": 1,
}


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
        # the plumbing tests count their trials: no reference arm, no confirmation unless a test asks
        "reference": [],
        "confirm": {"top": 0},
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


def tiny_ablation(
    name: str, tmp: Path, variants: list[dict[str, Any]], seeds: list[int], **changes: Any
) -> SweepConfig:
    data = tiny_optimize(name, tmp).model_dump(mode="json")
    for key in ("space", "initial_points", "num_trials", "confirm"):
        data.pop(key)
    data.update(mode="ablation", variants=variants, seeds=seeds, **changes)
    return parse_sweep(data, source=f"<{name}>")


def final_metric_names(trial: TrialConfig) -> list[str]:
    """Every final metric the MLflow child run must hold (DESIGN.md schema, MLflow-mapped)."""
    names = set(objective_metrics(trial)) | set(EPOCH_KEYS) | {M.PROB_GAP, M.TRIAL_SECONDS}
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


def assert_mlflow_holds_every_report(uri: str, experiment: str, notes_dir: Path, trial: TrialConfig) -> None:
    """Each trial's MLflow run holds every param and every (step, value) the trial reported, each once."""
    _, children = runs(uri, experiment)
    by_trial = {c.data.tags["pclc.trial_id"]: c for c in children}
    noted = {p.stem: notes(p) for p in notes_dir.glob("*.jsonl")}
    assert len(children) == len(by_trial) == len(noted) and set(by_trial) == set(noted)
    client = MlflowClient(uri)
    for trial_id, entries in noted.items():
        child = by_trial[trial_id]
        assert child.info.status == "FINISHED", child.data.tags.get("pclc.failure_reason")
        params = entries[0]["params"]
        assert child.data.params == {k: param_value(v) for k, v in params.items()}
        expected: dict[str, set[tuple[int, float]]] = {}
        for entry in (e for e in entries if "metrics" in e):
            step = int(entry["metrics"]["epoch"])
            for key, value in entry["metrics"].items():
                expected.setdefault(M.to_mlflow(key), set()).add((step, float(value)))
        assert set(child.data.metrics) == set(expected)
        assert set(final_metric_names(trial)) <= set(expected)
        for key, points in expected.items():
            logged = [(m.step, m.value) for m in client.get_metric_history(child.info.run_id, key)]
            assert sorted(logged) == sorted(points), (trial_id, key)  # all there, none twice


def started_tracker(
    uri: str,
    name: str,
    *,
    experiment_path: str,
    objective: list[dict[str, str]] | None = None,
    resolved_config: str | None = None,
) -> SweepTracker:
    """A `SweepTracker` on `uri` with its parent run of an optimize sweep `name` (headline robust_acc) open;
    the objective defaults to max robust_acc, the resolved config to `name: <name>`."""
    tracker = SweepTracker(uri)
    tracker.start_parent(
        name=name,
        mode="optimize",
        headline_metric="robust_acc",
        objective=[{"metric": "robust_acc", "mode": "max"}] if objective is None else objective,
        experiment_path=experiment_path,
        resolved_config=f"name: {name}\n" if resolved_config is None else resolved_config,
        resume=False,
    )
    return tracker


# --------------------------------------------------------------------------- injected faults


def _note(path: str, record: dict[str, Any]) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def notes(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@dataclass
class Hooked:
    """A reporter that passes everything on to `inner`, with a fault or a note around each report."""

    inner: Reporter
    before_epoch: Callable[[dict[str, float]], None] | None = None
    after_epoch: Callable[[dict[str, float]], None] | None = None
    after_final: Callable[[Evaluation], None] | None = None

    def on_epoch(self, metrics: dict[str, float], state: dict[str, Any] | None) -> None:
        if self.before_epoch is not None:
            self.before_epoch(metrics)
        self.inner.on_epoch(metrics, state)
        if self.after_epoch is not None:
            self.after_epoch(metrics)

    def on_final(self, evaluation: Evaluation) -> None:
        self.inner.on_final(evaluation)
        if self.after_final is not None:
            self.after_final(evaluation)


def _resume_epoch(options: dict[str, Any]) -> Any:
    """The epoch a trial resumes after (None for a fresh start), from the options passed on to `run_trial`."""
    resume = options.get("resume")
    return None if resume is None else resume["epoch"]


def failing_after_first_epoch(
    cfg: TrialConfig, report: Reporter, *, notes_file: str, **options: Any
) -> dict[str, float]:
    """Trials with loss 'pc' raise after each epoch they train; every attempt is noted in `notes_file`
    (bind it with functools.partial)."""
    _note(
        notes_file,
        {
            "seed": cfg.seed,
            "loss": cfg.loss,
            "prepared": options.get("prepared") is not None,
            "resume_epoch": _resume_epoch(options),
        },
    )
    if cfg.loss != "pc":
        return run_trial(cfg, report, **options)

    def fail(metrics: dict[str, float]) -> None:
        raise RuntimeError(f"injected failure after epoch {int(metrics['epoch'])}")

    return run_trial(cfg, Hooked(report, after_epoch=fail), **options)


def killed_once_mid_trial(
    cfg: TrialConfig, report: Reporter, *, notes_file: str, marker: str, kill_epoch: int, **options: Any
) -> dict[str, float]:
    """SIGKILL of the trial's own worker process once, when epoch `kill_epoch` has trained but before it is
    reported (the epoch's work is lost mid-way); `marker` makes it happen to the first attempt only."""
    _note(notes_file, {"pid": os.getpid(), "resume_epoch": _resume_epoch(options)})

    def die(metrics: dict[str, float]) -> None:
        _note(notes_file, {"pid": os.getpid(), "epoch": int(metrics["epoch"])})
        if int(metrics["epoch"]) == kill_epoch and not os.path.exists(marker):
            open(marker, "w").close()
            os.kill(os.getpid(), signal.SIGKILL)

    return run_trial(cfg, Hooked(report, before_epoch=die), **options)


def noting_reports(
    cfg: TrialConfig,
    report: Reporter,
    *,
    notes_dir: str,
    go_file: str | None = None,
    together: int | None = None,
    **options: Any,
) -> dict[str, float]:
    """Note every report of the trial (after it went through) in `<notes_dir>/<trial>.jsonl`, so a test
    can compare MLflow with what the trial really reported. With `go_file`, wait after epoch 1 until that
    file exists (the test stops the tracking server meanwhile). With `together`, wait after epoch 1 until
    that many trials have reported an epoch: trials overlap by an event, not by the machine's speed."""
    path = os.path.join(notes_dir, os.path.basename(str(cfg.out_dir)) + ".jsonl")
    _note(path, {"params": cfg.to_dict()})

    def reported(note: str) -> bool:
        with open(note) as f:
            return '"final": false' in f.read()

    def note_epoch(metrics: dict[str, float]) -> None:
        _note(path, {"final": False, "metrics": metrics, "time": time.time()})
        if int(metrics["epoch"]) != 1:
            return
        deadline = time.monotonic() + 300
        while go_file is not None and not os.path.exists(go_file) and time.monotonic() < deadline:
            time.sleep(0.2)
        while together is not None and time.monotonic() < deadline:
            started = [n for n in os.listdir(notes_dir) if n.endswith(".jsonl")]
            if sum(reported(os.path.join(notes_dir, n)) for n in started) >= together:
                break
            time.sleep(0.2)

    def note_final(evaluation: Evaluation) -> None:
        _note(path, {"final": True, "metrics": evaluation.metrics, "time": time.time()})

    return run_trial(cfg, Hooked(report, after_epoch=note_epoch, after_final=note_final), **options)


def _stand_in(cfg: TrialConfig, report: Reporter, robust: float, epoch: dict[str, float]) -> dict[str, float]:
    """What a stand-in trial reports: `epoch`'s metrics every epoch, then `robust` as its headline."""
    for e in range(1, cfg.epochs + 1):
        report.on_epoch({M.EPOCH: e, M.TRAIN_LOSS: 1.0 / e, M.CLEAN_ACC: 0.9, **epoch}, None)
    final = {
        M.EPOCH: cfg.epochs,
        M.CLEAN_ACC: 0.9,
        M.ROBUST_ACC: robust,
        M.robust_key(M.WORST, cfg.headline_eps): robust,
    }
    report.on_final(Evaluation(metrics=final, warnings=[], config=cfg.to_dict()))
    return final


def _draws(cfg: TrialConfig) -> random.Random:
    """The stand-ins' noise, keyed by the configuration and seed (not by the run's folders: the same sweep draws the
    same numbers)."""
    return random.Random(repr((cfg.loss, cfg.margin, cfg.lc_weight, cfg.seed)))


def noise_trial(cfg: TrialConfig, report: Reporter, **_: Any) -> dict[str, float]:
    """A stand-in trial: its robust accuracy is a draw around 0.5, so no configuration is better than another and
    the search's winner is luck."""
    return _stand_in(cfg, report, 0.5 + _draws(cfg).uniform(-0.1, 0.1), {M.EPOCH_ROBUST_ACC: 0.5})


def loss_trial(cfg: TrialConfig, report: Reporter, **_: Any) -> dict[str, float]:
    """A stand-in trial whose robust accuracy is 0.5 for CE and 0.8 for any PC-LC, plus ±3 points of noise: a real
    difference between the losses, none within one."""
    return _stand_in(cfg, report, (0.5 if cfg.loss == "ce" else 0.8) + _draws(cfg).uniform(-0.03, 0.03), {})


def filling_disk_after_first_epoch(
    cfg: TrialConfig, report: Reporter, *, fill_dir: str, **options: Any
) -> dict[str, float]:
    """After epoch 1 is reported, fill the file system of `fill_dir` to the last byte (disk full)."""

    def fill(metrics: dict[str, float]) -> None:
        if int(metrics["epoch"]) == 1:
            with open(os.path.join(fill_dir, "filler"), "ab", buffering=0) as f:
                try:
                    while True:
                        f.write(b"\0" * 4096)
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise

    return run_trial(cfg, Hooked(report, after_epoch=fill), **options)


# --------------------------------------------------------------------------- a real MLflow server


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class MlflowServer:
    """`mlflow server` on 127.0.0.1 over a SQLite store in `folder`: started, stopped and restarted on the
    same port with the same store (one process group, so its uvicorn workers stop with it)."""

    def __init__(self, folder: Path, port: int | None = None) -> None:
        self.folder, self.port = folder, port or free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.proc: Any = None
        self.starts = 0

    def start(self, timeout: float = 180.0) -> None:
        self.starts += 1
        command = [
            str(Path(sys.executable).parent / "mlflow"),
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--workers",
            "1",
            "--backend-store-uri",
            f"sqlite:///{self.folder / 'server.db'}",
            "--artifacts-destination",
            str(self.folder / "server_artifacts"),
        ]
        log = open(self.folder / f"server{self.starts}.log", "w")  # noqa: SIM115  (the server's, for its lifetime)
        self.proc = subprocess.Popen(  # without MLflow 3's job runner (nine processes no test uses), as the head's
            command,
            cwd=self.folder,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
        )
        deadline = time.monotonic() + timeout
        while not self.answers():
            assert self.proc.poll() is None, (self.folder / f"server{self.starts}.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the MLflow server did not answer in time"
            time.sleep(0.3)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=20)
        with contextlib.suppress(ProcessLookupError):  # uvicorn's workers share the group: none may keep the port
            os.killpg(self.proc.pid, signal.SIGKILL)

    def answers(self) -> bool:
        return mlflow_answers(self.uri)


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    """A private local Ray per test module: never a `ray start` cluster that may run on the machine."""
    with ray_session("local", num_cpus=2):
        set_tune_environment()
        yield


# --------------------------------------------------------------------------- trial writers without training


def write_like_a_trial(
    target: Any,
    trial_id: str,
    params: dict[str, Any],
    final_names: list[str],
    *,
    epochs: int,
    notes_dir: str,
    pause_s: float = 0.0,
    barrier: Any = None,
) -> None:
    """What a trial writes to MLflow, through the project's own writer (`TrialRun`), minus the training:
    open its run, log `epochs` epochs (`pause_s` apart), then the final metrics, each noted after it went
    through as `noting_reports` notes them. With `barrier`, start the epochs together with the other writers."""
    from sweeps.tracking import TrialRun

    path = os.path.join(notes_dir, f"{trial_id}.jsonl")
    _note(path, {"params": params})
    run = TrialRun.open(target, trial_id=trial_id, params=params, buffer_path=Path(notes_dir) / f"{trial_id}.pending")
    if barrier is not None:
        barrier.wait()
    seed = sum(map(ord, trial_id))
    epoch_metrics: dict[str, float] = {}
    for epoch in range(1, epochs + 1):
        epoch_metrics = {
            M.EPOCH: epoch,
            M.TRAIN_LOSS: 1.0 / epoch + seed % 97 / 1000,
            M.CLEAN_ACC: 0.5 + epoch / 100,
            M.EPOCH_ROBUST_ACC: 0.25 + epoch / 200 + seed % 13 / 1000,
        }
        if epoch == 1:
            _note(path, {"start": time.time()})
        run.log_epoch(epoch_metrics)
        _note(path, {"final": False, "metrics": epoch_metrics, "time": time.time()})
        time.sleep(pause_s)
    final = {
        **epoch_metrics,
        **{M.from_mlflow(n): 0.1 + (seed % 89) / 1000 for n in final_names if n not in epoch_metrics},
    }
    run.log_final(final, {"metrics": final}, None)
    _note(path, {"final": True, "metrics": final, "time": time.time()})


def run_smoke(benchmark: str, tmp_path: Path, *, timeout: float) -> tuple[subprocess.CompletedProcess[str], Any]:
    """`benchmarks/<benchmark> --smoke-test --json FILE` in its own process: (the process, FILE's JSON).
    Fails, with the ends of its output, when it exits non-zero."""
    out = tmp_path / f"{Path(benchmark).stem}.json"
    repo = Path(__file__).resolve().parents[1]
    proc = subprocess.run(
        [sys.executable, str(repo / "benchmarks" / benchmark), "--smoke-test", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-5000:]
    return proc, json.loads(out.read_text())
