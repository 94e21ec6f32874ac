"""`pclc sweep CONFIG --dry-run`: what a sweep will cost, from one epoch measured here, before any is run.

Runs the real trial code (`pclc.experiment.run_trial`) on this machine for one epoch of the sweep's base
trial, then its final evaluation on a small probe of the test samples, scaled to the config's sizes.
No Ray, no MLflow, no files: nothing of a sweep starts.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass
from typing import Any, TextIO

from pclc import metrics as M
from pclc.config import TrialConfig
from sweeps.cluster_file import Capacity
from sweeps.config import SweepConfig

PROBE_SAMPLES = 32  # test samples the evaluation probe attacks; its time is scaled up to eval_limit


class _OneEpoch(Exception):
    """Raised by the reporter once the first epoch is measured: the dry run trains no more."""


@dataclass(frozen=True)
class Estimate:
    """A sweep's cost, from one measured epoch and one scaled evaluation probe (seconds on this machine)."""

    trials: int
    cpu: float
    gpu: float
    concurrent: int
    prepare_s: float  # data and the transfer substitute: once per sweep
    epoch_s: float  # one training epoch, without the per-epoch signal
    eval_s: float  # the final evaluation, scaled from the probe to the config's sample counts
    epochs: int
    cluster: Capacity | None = None  # with --cluster: the trials at once are what its workers hold
    signal_s: float = 0.0  # one computation of the per-epoch signal
    signals: int = 0  # the epochs that compute it (its cadence and a scheduler's rungs)

    @property
    def slots(self) -> int | None:
        """Trials the cluster file's workers hold at once (None without one)."""
        return self.cluster.slots(self.cpu, self.gpu) if self.cluster is not None else None

    @property
    def at_once(self) -> int:
        """Trials running together: `max_concurrent`, or fewer where the cluster holds fewer."""
        return self.concurrent if self.slots is None else max(1, min(self.concurrent, self.slots))

    @property
    def trial_s(self) -> float:
        """One trial, trained to its last epoch (a scheduler that stops trials early only lowers it)."""
        return self.epochs * self.epoch_s + self.signals * self.signal_s + self.eval_s

    @property
    def wall_s(self) -> float:
        """Preparation, then the trials in waves of `concurrent` (the cluster assumed to fit that many)."""
        return self.prepare_s + math.ceil(self.trials / self.at_once) * self.trial_s

    @property
    def gpu_hours(self) -> float:
        return self.trials * self.trial_s * self.gpu / 3600.0


def _probe(trial: TrialConfig, n_test: int) -> tuple[TrialConfig, float]:
    """The trial with its evaluation cut to about PROBE_SAMPLES test samples, and the factor that scales it back."""
    n_eval = min(trial.eval_limit or n_test, n_test)
    fraction = min(1.0, PROBE_SAMPLES / n_eval)
    changes: dict[str, Any] = {"eval_limit": max(1, math.ceil(n_eval * fraction))}
    if trial.aa_limit:
        changes["aa_limit"] = max(1, math.ceil(min(trial.aa_limit, n_eval) * fraction))
    return trial.model_copy(update=changes), 1.0 / fraction


class _FirstEpoch:
    """A reporter that keeps the first epoch (its metrics and checkpoint), then stops the trial."""

    metrics: dict[str, float]
    state: dict[str, Any]

    def on_epoch(self, metrics: dict[str, float], state: dict[str, Any] | None) -> None:
        if state is not None:
            self.metrics, self.state = metrics, state
            raise _OneEpoch

    def on_final(self, evaluation: Any) -> None:
        pass


def measure(cfg: SweepConfig, cluster: Capacity | None = None) -> Estimate:
    """Time the preparation, one epoch and a scaled evaluation of the base trial, here and now."""
    from pclc.experiment import Silent, prepare, run_trial

    trial = cfg.trial.model_copy(
        update={
            "out_dir": None,
            "save_weights": False,
            "epochs": 1,
            "warmup_epochs": 0,
            "threads": cfg.trial.threads or max(1, math.floor(cfg.resources.cpu)),
        }
    )
    started = time.perf_counter()
    prepared = prepare(cfg.trial)  # the sweep's own preparation: its substitute trains for its own epochs
    prepare_s = time.perf_counter() - started

    first = _FirstEpoch()
    with contextlib.suppress(_OneEpoch):
        run_trial(trial, first, prepared=prepared)
    # the evaluation alone: resumed after its one epoch, the trial trains nothing more
    probe, scale = _probe(trial, len(prepared.data.y_test))
    final = run_trial(probe, Silent(), prepared=prepared, resume=first.state)
    return Estimate(
        trials=cfg.total_trials(),
        cpu=cfg.resources.cpu,
        gpu=cfg.resources.gpu,
        concurrent=cfg.max_concurrent,
        prepare_s=prepare_s,
        epoch_s=first.metrics[M.TRAIN_SECONDS] - first.metrics.get(M.SIGNAL_SECONDS, 0.0),
        signal_s=first.metrics.get(M.SIGNAL_SECONDS, 0.0),
        signals=len(cfg.trial.signal_epochs(also=cfg.rung_epochs())),
        eval_s=final[M.EVAL_SECONDS] * scale,
        epochs=cfg.trial.epochs,
        cluster=cluster,
    )


def print_estimate(cfg: SweepConfig, est: Estimate, out: TextIO) -> None:
    """The dry run's answer, one fact a line (the test reads these lines back)."""
    print(f"pclc sweep --dry-run: {cfg.name} (nothing was started)", file=out)
    print(f"trials: {est.trials}", file=out)
    print(f"resources per trial: {est.cpu:g} CPU, {est.gpu:g} GPU", file=out)
    if est.cluster is not None:
        print(f"cluster: {est.cluster.describe()}", file=out)
        print(f"cluster holds: {est.slots} trials at once", file=out)
    print(f"trials at once: {est.at_once}", file=out)
    print(
        f"measured here: preparation {est.prepare_s:.2f} s, one epoch {est.epoch_s:.2f} s, the per-epoch signal "
        f"{est.signal_s:.2f} s (at {est.signals} of {est.epochs} epochs), final evaluation {est.eval_s:.2f} s "
        f"(scaled from {PROBE_SAMPLES} samples)",
        file=out,
    )
    print(f"per trial: {est.trial_s:.2f} s ({est.epochs} epochs + evaluation)", file=out)
    print(f"estimated wall time: {est.wall_s:.1f} s ({est.wall_s / 3600:.2f} h)", file=out)
    print(f"estimated GPU-hours: {est.gpu_hours:.3f}", file=out)
    notes = ["timed on this machine; a GPU trains faster than this"]
    confirming = cfg.total_trials() - cfg.total_trials(confirmation=False)
    if confirming:
        notes.append(
            f"{confirming} of the trials confirm the best and the references on fresh seeds, their AutoAttack on "
            f"all {cfg.trial.eval_limit} evaluated samples rather than {cfg.trial.aa_limit}: they cost more than timed"
        )
    if est.slots is not None and est.slots > est.concurrent:
        notes.append(f"max_concurrent {est.concurrent} leaves {est.slots - est.concurrent} of the cluster's slots idle")
    elif est.slots is not None and est.slots < est.concurrent:
        notes.append(f"the cluster holds {est.slots} of max_concurrent {est.concurrent}: the rest wait")
    if cfg.scheduler.type == "asha":
        notes.append(f"ASHA may stop trials from epoch {cfg.scheduler.grace_period} on: an upper bound")
    print(f"note: {'; '.join(notes)}", file=out)


def dry_run(cfg: SweepConfig, out: TextIO, cluster: Capacity | None = None) -> int:
    """Measure and print (sized to `cluster`'s workers when given); exit code 0."""
    print_estimate(cfg, measure(cfg, cluster), out)
    return 0
