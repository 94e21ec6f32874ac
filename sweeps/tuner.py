"""Tuner assembly: the searcher (OptunaSearch behind a ConcurrencyLimiter, or a grid), the scheduler (ASHA),
the callbacks (live MLflow status, one line per trial), the snapshot period, and the Tuner itself, fresh or
restored. What a Tuner runs is a stage's `StageTrials` (`sweeps.stages`); this module knows no stage by name.
"""

from __future__ import annotations

import json
import math
import os
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import optuna
from ray import tune
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search import ConcurrencyLimiter
from ray.tune.search.optuna import OptunaSearch

from pclc import contract as C
from pclc.config import TrialConfig
from sweeps.config import SweepConfig, with_overrides
from sweeps.plan import SweepPlan
from sweeps.storage import METADATA_FILE, check_storage, read_metadata, write_local
from sweeps.summary import fmt
from sweeps.tracking import SweepTracker, TrackingTarget, failure_reason
from sweeps.trainable import GRID_KEY, RunTrial, TrialSetup, restoring_from_storage, trainable

# --------------------------------------------------------------------------- search and scheduling


class FinalMetricOptunaSearch(OptunaSearch):
    """OptunaSearch that skips intermediate results lacking the objective.

    Trials report per-epoch metrics (epoch_robust_acc, …) and the objective (robust_acc, …) only
    with the final evaluation; the pruner is a no-op, so nothing is lost by not reporting it early.
    A trial stopped by ASHA before its evaluation is told to Optuna as pruned, not as a fake value.
    """

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        metrics = self.metric if isinstance(self.metric, list) else [self.metric]
        if all(m in result for m in metrics):
            super().on_trial_result(trial_id, result)


def optuna_space(cfg: SweepConfig) -> dict[str, optuna.distributions.BaseDistribution]:
    """The sweep file's `space` as Optuna distributions (int bounds inclusive, as in the file)."""
    out: dict[str, optuna.distributions.BaseDistribution] = {}
    for name, p in cfg.space.items():
        if p.type == "choice":
            out[name] = optuna.distributions.CategoricalDistribution(p.values)  # type: ignore[arg-type]
        elif p.type == "int":
            out[name] = optuna.distributions.IntDistribution(int(p.low), int(p.high), log=p.log)  # type: ignore[arg-type]
        else:
            out[name] = optuna.distributions.FloatDistribution(p.low, p.high, log=p.type == "loguniform")  # type: ignore[arg-type]
    return out


def build_searcher(cfg: SweepConfig) -> tuple[dict[str, Any], Any, int]:
    """(param_space, search_alg, num_samples): Optuna TPE for optimize, a grid for ablation."""
    if cfg.mode == "ablation":
        return {GRID_KEY: tune.grid_search(cfg.trial_overrides(cfg.look_seeds(0)))}, None, 1  # the first look's seeds
    metrics = [o.metric for o in cfg.objective]
    modes = [o.mode for o in cfg.objective]
    searcher = FinalMetricOptunaSearch(
        space=optuna_space(cfg),
        metric=metrics if cfg.multi_objective else metrics[0],
        mode=modes if cfg.multi_objective else modes[0],
        points_to_evaluate=cfg.full_initial_points() or None,
        sampler=optuna.samplers.TPESampler(seed=cfg.sampler_seed),
    )
    return {}, ConcurrencyLimiter(searcher, max_concurrent=cfg.max_concurrent), int(cfg.num_trials or 1)


def build_scheduler(cfg: SweepConfig) -> ASHAScheduler | None:
    """ASHA on a per-epoch metric, with `epoch` as its clock.

    max_t is epochs − 1 with stop_last_trials off, so the last rung lies before the final epoch:
    a trial that survives every rung always reaches its final evaluation.
    """
    s = cfg.scheduler
    if s.type == "none":
        return None
    return ASHAScheduler(
        time_attr="epoch",
        metric=s.metric,
        mode=s.mode,
        max_t=cfg.asha_max_t(),
        grace_period=s.grace_period,
        reduction_factor=s.reduction_factor,
        stop_last_trials=False,
    )


def _trial_dirname(trial: Any) -> str:
    return f"trial_{trial.trial_id}"


class TrackingCallback(tune.Callback):
    """Live MLflow status on the driver: FAILED (with reason) once retries run out, KILLED if stopped early."""

    def __init__(
        self, tracking_uri: str, experiment_id: str, parent_run_id: str, experiment_path: str, phase: str
    ) -> None:
        self.tracking_uri, self.experiment_id, self.parent_run_id = tracking_uri, experiment_id, parent_run_id
        self.experiment_path, self.phase = experiment_path, phase
        self._tracker: SweepTracker | None = None

    def __getstate__(self) -> dict[str, Any]:  # pickled into the Tuner state: no client inside
        return {**self.__dict__, "_tracker": None}

    def _get(self) -> SweepTracker:
        if self._tracker is None:
            # restored from the Tuner state: the driver may have written newer ids (e.g. a new parent run)
            stored = read_metadata(self.experiment_path)
            for key in ("tracking_uri", "experiment_id", "parent_run_id"):
                setattr(self, key, stored.get(key, getattr(self, key)))
            # a Tuner saved before phases existed holds no phase: it was a search
            self._tracker = SweepTracker(self.tracking_uri, phase=getattr(self, "phase", C.PHASE_SEARCH))
            self._tracker.experiment_id, self._tracker.parent_run_id = self.experiment_id, self.parent_run_id
        return self._tracker

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._safely(lambda: self._get().close_trial(trial.trial_id, error=trial_error(trial)))

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._safely(lambda: self._get().close_trial(trial.trial_id, stopped=True))

    @staticmethod
    def _safely(fn: Callable[[], None]) -> None:
        try:  # bookkeeping must never stop a sweep; the end-of-sweep reconcile tries again
            fn()
        except Exception as exc:
            print(f"pclc sweep: warning: MLflow update failed ({exc}); retried at the end", file=sys.stderr)


class ProgressPrinter(tune.Callback):
    """One line per trial that ends (Tune's own tables are long with ~40 metrics per trial)."""

    def __init__(self, metrics: list[str], total: int) -> None:
        self.metrics, self.total, self.ended = metrics, total, 0

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.ended += 1
        last = trial.last_result or {}
        shown = "  ".join(f"{m}={fmt(last[m])}" for m in self.metrics if m in last)
        status = "finished" if all(m in last for m in self.metrics) else "stopped early"
        print(f"[{self.ended}/{self.total}] trial {trial.trial_id} {status}  {shown}", flush=True)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.ended += 1
        print(
            f"[{self.ended}/{self.total}] trial {trial.trial_id} FAILED: {failure_reason(trial_error(trial))}",
            flush=True,
        )

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        print(
            f"trial {trial.trial_id} failed, retrying from its last checkpoint: {failure_reason(trial_error(trial))}",
            flush=True,
        )


def trial_error(trial: Any) -> str:
    """A trial's error text, however Ray kept it."""
    try:
        err = trial.get_error()
        if err is not None:
            return str(err)
    except Exception:
        pass
    path = getattr(trial, "error_file", None)
    if path and Path(path).is_file():
        return Path(path).read_text()
    return "the trial failed (Ray kept no error message)"


SNAPSHOT_ENV = "TUNE_GLOBAL_CHECKPOINT_S"
_USER_SNAPSHOT = os.environ.get(SNAPSHOT_ENV)  # a period the user set wins
SNAPSHOT_AUTO_ABOVE = 200  # trials


def snapshot_period(trials: int) -> str:
    """How often Tune snapshots the experiment state. A small sweep every 5 s: a killed driver redoes little.
    Above SNAPSHOT_AUTO_ABOVE trials Tune's own "auto" (every max(10 s, 19 × the snapshot's cost)): a snapshot
    grows with the trials (0.8–1.4 s at 1000), so a fixed period would spend a growing share of the driver
    on it, and the sweep's snapshot time would grow with the square of its trials."""
    return "5" if trials <= SNAPSHOT_AUTO_ABOVE else "auto"


# --------------------------------------------------------------------------- the Tuner of one stage


@dataclass(frozen=True)
class Search:
    """How Tune draws a stage's trials: its param_space, search algorithm, sample count and scheduler."""

    param_space: dict[str, Any]
    search_alg: Any = None
    num_samples: int = 1
    scheduler: ASHAScheduler | None = None


def sweep_search(cfg: SweepConfig) -> Search:
    """The sweep file's own search: Optuna TPE (optimize) or the ablation's grid, with its scheduler."""
    param_space, search_alg, num_samples = build_searcher(cfg)
    return Search(param_space, search_alg, num_samples, build_scheduler(cfg))


def grid_of(arms: list[dict[str, Any]]) -> Search:
    """A fixed grid of trial overrides (arms × seeds): no search, no scheduler."""
    return Search({GRID_KEY: tune.grid_search(arms)})


@dataclass(frozen=True)
class StageTrials:
    """What one stage hands Tune: the trial its overrides apply to, how they are drawn, and how many."""

    base: TrialConfig  # the trial every override applies to
    searched: tuple[str, ...]  # the TrialConfig fields the stage varies (its runs' searched params)
    total: int  # the trials it runs
    search: Callable[[], Search]  # built only when the experiment starts (a restore keeps Tune's own)
    checkpoint_epochs: tuple[int, ...] = ()  # epochs a trial checkpoints at whatever its cadence (ASHA's rungs)
    arms: list[dict[str, Any]] | None = None  # a fixed grid's overrides (None: the search draws them)

    def trial_config(self, overrides: dict[str, Any]) -> TrialConfig:
        """The TrialConfig of one of its trials: `base` with `overrides` applied (labels left out)."""
        return with_overrides(self.base, overrides)


def build_tuner(
    cfg: SweepConfig,
    plan: SweepPlan,
    target: TrackingTarget,
    trials: StageTrials,
    *,
    run_fn: RunTrial | None = None,
    prepared: Any = None,
    verbose: int = 0,
    retry_failed: bool = False,
    out: TextIO,
) -> tune.Tuner:
    """The Tuner of one stage, fresh or restored with its trials and search state, and the metadata a later
    resume reads (where the sweep is tracked).

    The data and the transfer substitute are prepared here, once per sweep (as a Ray task on a worker, cached
    in shared storage: `sweeps.preparation`), and shared with every trial through the object store.
    """
    from sweeps.preparation import prepare_for_sweep

    exp_path = plan.experiment_path
    prepared = prepared if prepared is not None else prepare_for_sweep(cfg, storage_root=plan.root, out=out)
    setup = TrialSetup(
        base=trials.base.model_dump(),
        outputs_root=_outputs_root(exp_path, plan.name),
        threads=max(1, math.floor(cfg.resources.cpu)),
        target=target,
        searched=trials.searched,
        run_fn=run_fn,
        extra_tags={C.SWEEP: cfg.name},
        experiment_path=exp_path,
        skip_recorded_failures=plan.restorable and not retry_failed,
        checkpoint_epochs=trials.checkpoint_epochs,
    )
    fn = tune.with_resources(
        restoring_from_storage(tune.with_parameters(trainable, prepared=prepared, setup=setup)),
        {"cpu": cfg.resources.cpu, "gpu": cfg.resources.gpu},
    )
    os.environ[SNAPSHOT_ENV] = _USER_SNAPSHOT or snapshot_period(trials.total)  # read when fit() starts
    if plan.restorable:
        print(f"pclc sweep: resuming {exp_path}", file=out)
        tuner = tune.Tuner.restore(exp_path, trainable=fn, resume_errored=True)
    else:
        search = trials.search()
        tuner = tune.Tuner(
            fn,
            param_space=search.param_space,
            tune_config=tune.TuneConfig(
                search_alg=search.search_alg,
                scheduler=search.scheduler,
                num_samples=search.num_samples,
                max_concurrent_trials=cfg.max_concurrent if search.search_alg is None else None,
                trial_dirname_creator=_trial_dirname,
                reuse_actors=True,  # one worker process per concurrent slot: no re-import per trial
            ),
            run_config=tune.RunConfig(
                name=plan.name,
                storage_path=plan.root,
                failure_config=tune.FailureConfig(max_failures=cfg.max_retries),
                checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
                callbacks=[
                    TrackingCallback(
                        plan.tracking_uri, target.experiment_id, target.parent_run_id, exp_path, plan.phase
                    ),
                    ProgressPrinter([o.metric for o in cfg.objective], trials.total),
                ],
                verbose=verbose,
            ),
        )
    write_local(exp_path, METADATA_FILE, json.dumps({"tracking_uri": plan.tracking_uri, **target.__dict__}, indent=2))
    return tuner


def fit(tuner: tune.Tuner, plan: SweepPlan) -> Any:
    """Run the trials; Tune's ResultGrid. A storage folder that ran full is named (Ray's own error does not)."""
    try:
        return tuner.fit()
    except Exception:
        check_storage(plan.root)
        raise


def _outputs_root(exp_path: str, name: str) -> str:
    if "://" in exp_path:  # remote storage: trial outputs stay on the trial's node
        return str(Path(tempfile.gettempdir()) / "pclc_outputs" / name)
    return str(Path(exp_path) / "outputs")
