"""The sweep driver: sweep file → searcher, scheduler and Tuner → results in Ray and MLflow.

Three layers, as the Ray Tune examples have them: `pclc.experiment.run_trial` evaluates, the thin
`sweeps.trainable.trainable` reads config and reports, and this module builds the Tuner:
OptunaSearch (TPE, one or several objectives) behind a ConcurrencyLimiter, or a plain grid for an
ablation; optional ASHA; FailureConfig retries; data and substitute prepared once here and shared
through the object store. An interrupted sweep is continued with `Tuner.restore`.
`ray.init` and the process-wide Tune settings happen only in `sweep_command` (the CLI: `ray_session`,
`set_tune_environment`); `run_sweep` uses whatever Ray is running: plan → parent run → Tuner → fit → collect.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import optuna
from ray import tune
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search import ConcurrencyLimiter
from ray.tune.search.optuna import OptunaSearch

from pclc import contract as C
from pclc import metrics as M
from pclc.config import ConfigError
from pclc.files import write_atomic
from pclc.redact import mask_uri
from sweeps.config import LABELS, SweepConfig, load_sweep, resolved_yaml
from sweeps.storage import (  # noqa: F401  (StorageError: raised by run_sweep, imported from here by callers)
    CONFIG_COPY,
    METADATA_FILE,
    StorageError,
    check_storage,
    experiment_path,
    read_metadata,
    storage_root,
)
from sweeps.summary import best_rows, fmt, print_summary
from sweeps.tracking import PARENT_CONFIG_ARTIFACT, SweepTracker, TrackingTarget, TrialOutcome, failure_reason
from sweeps.trainable import GRID_KEY, VARIANT, RunTrial, TrialSetup, restoring_from_storage, trainable
from sweeps.tune_state import align_search_state, has_snapshot

_IGNORED_ON_RESUME = ("storage_path", "tracking_uri")


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
        return {GRID_KEY: tune.grid_search(cfg.trial_overrides())}, None, 1
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


# --------------------------------------------------------------------------- the sweep


@dataclass
class SweepResult:
    """What a finished `run_sweep` hands back (and prints)."""

    name: str
    experiment_path: str
    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    resumed: bool
    trials: dict[str, TrialOutcome]
    finished: list[dict[str, Any]] = field(default_factory=list)  # one row per trial with final metrics
    best: list[dict[str, Any]] = field(default_factory=list)
    stopped_early: int = 0
    reconcile: dict[str, int] = field(default_factory=dict)
    grid: Any = field(default=None, repr=False)  # Tune's ResultGrid, for callers that want more
    confirmed: list[dict[str, Any]] = field(default_factory=list)  # the confirmation runs that finished
    verdict: Any = None  # analysis.verdict.Verdict: the comparisons with the references

    @property
    def failed(self) -> list[str]:
        return [t for t, o in self.trials.items() if o.error is not None]

    @property
    def ui_command(self) -> str:
        return f"mlflow ui --backend-store-uri {mask_uri(self.tracking_uri)}"


class SocketPathError(ValueError):
    """The temporary folder's path is too long for Ray's Unix sockets: named, with the fix."""


def _write_local(exp_path: str, name: str, text: str) -> None:
    if "://" in exp_path:
        return  # remote storage: the parent run in MLflow holds the same information
    write_atomic(Path(exp_path) / name, text)


def _searched(resolved: str) -> dict[str, Any]:
    """A resolved sweep file's fields that decide what is searched: all but where it is stored and tracked."""
    import yaml

    return {k: v for k, v in (yaml.safe_load(resolved) or {}).items() if k not in _IGNORED_ON_RESUME}


def _changed(before: str, cfg: SweepConfig) -> list[str]:
    """The fields of `cfg` that differ from the resolved sweep file `before` (what is searched only)."""
    old, now = _searched(before), _searched(resolved_yaml(cfg))
    return sorted(k for k in set(old) | set(now) if old.get(k) != now.get(k))


def sweep_fingerprint(cfg: SweepConfig) -> str:
    """The sha256 of what `cfg` searches (`_searched`): recorded on the parent run (`C.SWEEP_FINGERPRINT`) when it
    is created, before Tune starts, so a later driver can tell whether it runs the same sweep file."""
    import hashlib

    text = json.dumps(_searched(resolved_yaml(cfg)), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _check_unchanged(cfg: SweepConfig, exp_path: str) -> None:
    """Resuming continues the stored search: refuse a sweep file that changed what is searched."""
    path = Path(exp_path) / CONFIG_COPY
    if "://" in exp_path or not path.is_file():
        return
    changed = _changed(path.read_text(), cfg)
    if changed:
        raise ConfigError(
            f"the sweep at {exp_path} was started from a different sweep file (changed: {', '.join(changed)}); "
            f"resuming would mix two searches. Use a new `name`, or delete {exp_path} to start over"
        )


@dataclass(frozen=True)
class SweepPlan:
    """Where a sweep runs and is tracked, decided before anything starts."""

    root: str  # Ray results root (storage_path)
    experiment_path: str  # <root>/<name>: Tune's experiment folder
    tracking_uri: str
    restorable: bool  # the folder holds a Tune experiment: it is continued, not started again
    phase: str = C.PHASE_SEARCH  # the search (or ablation grid), or its confirmation

    @property
    def name(self) -> str:
        """Tune's name for the experiment: the folder's last part."""
        return self.experiment_path.rstrip("/").rsplit("/", 1)[-1]


def plan_sweep(
    cfg: SweepConfig, *, resume: bool, storage_path: str | None, tracking_uri: str | None, out: TextIO
) -> SweepPlan:
    """Storage, experiment folder and tracking store of the sweep; refuses a resume that would mix two sweeps
    or that Tune would silently start over (`sweeps.tune_state`)."""
    root = storage_root(cfg, storage_path)
    check_storage(root)  # also done by sweep_command before Ray starts; here for callers of run_sweep
    exp_path = experiment_path(root, cfg.name)
    restorable = has_snapshot(exp_path)
    if resume and not restorable:
        started = tune.Tuner.can_restore(exp_path)  # the driver died before Tune's first snapshot
        why = " (the driver stopped before Tune saved any trial)" if started else ""
        print(f"pclc sweep: nothing to resume at {exp_path}{why}; starting the sweep", file=out)
    if restorable:
        _check_unchanged(cfg, exp_path)
    stored = read_metadata(exp_path) if restorable else {}
    uri = tracking_uri or cfg.tracking_uri or stored.get("tracking_uri") or C.default_tracking_uri()
    if stored.get("tracking_uri") and uri != stored["tracking_uri"]:
        raise ConfigError(
            f"the sweep at {exp_path} is tracked in {stored['tracking_uri']}; resume with that "
            f"--tracking-uri (got {uri}) so its runs are not split over two stores"
        )
    if restorable:
        aligned = align_search_state(exp_path)  # a kill mid-copy can tear Tune's saved state: mend it first
        if aligned:
            print(f"pclc sweep: {aligned}", file=out)
    return SweepPlan(root=root, experiment_path=exp_path, tracking_uri=uri, restorable=restorable)


CONFIRM_SUFFIX = ".confirm"  # the confirmation's Tune experiment: <root>/<name>.confirm, beside the search's
CONFIRM_ARMS = "confirm_arms.json"  # in that folder: the arms it was started with, checked on resume


def plan_confirmation(cfg: SweepConfig, plan: SweepPlan, arms: list[dict[str, Any]], *, out: TextIO) -> SweepPlan:
    """The confirmation's own Tune experiment, continued only if it was started for the same arms (a
    search run anew can rank differently: an old confirmation must not be taken for its own)."""
    exp_path = experiment_path(plan.root, cfg.name + CONFIRM_SUFFIX)
    restorable = has_snapshot(exp_path)
    if restorable:
        stored = Path(exp_path) / CONFIRM_ARMS
        if "://" not in exp_path and stored.is_file() and json.loads(stored.read_text()) != arms:
            raise ConfigError(
                f"the confirmation at {exp_path} was started for other configurations than this search ranks "
                f"best now; delete {exp_path} to confirm these ones"
            )
        print(f"pclc sweep: resuming the confirmation at {exp_path}", file=out)
    return SweepPlan(plan.root, exp_path, plan.tracking_uri, restorable, phase=C.PHASE_CONFIRM)


def open_parent_run(cfg: SweepConfig, plan: SweepPlan, *, out: TextIO) -> SweepTracker:
    """The MLflow experiment and the sweep's parent run, created (or reopened) here on the driver.

    An earlier parent run of the same experiment folder is continued only if it was started from this sweep
    file (`sweep_fingerprint`). With Tune's snapshot, a different file is refused (resuming would mix two
    searches; `plan_sweep` already refuses it from the folder's copy, this also covers remote storage). Without
    one (a driver killed before Tune saved any trial), nothing of the earlier start is kept anyway: its parent
    run is closed as FAILED, its trial runs deleted, and the sweep starts under a new parent run, which is said.
    """
    tracker = SweepTracker(plan.tracking_uri)
    tracker.ensure_experiment(cfg.name)
    fingerprint = sweep_fingerprint(cfg)
    earlier = tracker.find_parent(plan.experiment_path)
    superseded = ""  # what changed, when the earlier parent run is not continued
    if earlier is not None and (plan.restorable or earlier.info.status == "RUNNING"):
        recorded = earlier.data.tags.get(C.SWEEP_FINGERPRINT)
        changed = None if recorded == fingerprint else _changed_since(tracker, earlier, cfg)
        # a parent run from before fingerprints is judged by the file it logged; one without that file (killed
        # between creating the run and logging it) cannot be checked: with a snapshot the folder's copy was
        # (`_check_unchanged`), without one it is superseded
        same = recorded == fingerprint or (recorded is None and changed == [])
        if not same:
            what = f"changed: {', '.join(changed)}" if changed else "changed"
            if plan.restorable and recorded is not None:
                raise ConfigError(
                    f"the sweep at {plan.experiment_path} (parent run {earlier.info.run_id}) was started from a "
                    f"different sweep file ({what}); resuming would mix two searches. Use a new `name`, or delete "
                    f"{plan.experiment_path} to start over"
                )
            if not plan.restorable:
                superseded = what
                tracker.supersede_parent(
                    earlier,
                    f"superseded: the sweep file {what} before Tune saved any trial; the sweep started again "
                    "under a new parent run",
                )
    tracker.start_parent(
        name=cfg.name,
        mode=cfg.mode,
        headline_metric=cfg.headline_metric,
        objective=[o.model_dump() for o in cfg.objective],
        experiment_path=plan.experiment_path,
        resolved_config=resolved_yaml(cfg),
        resume=plan.restorable,
        references=[r["name"] for r in cfg.references()],
        verdict=cfg.verdict.model_dump(),
        fingerprint=fingerprint,
    )
    if superseded and earlier is not None:
        print(
            f"pclc sweep: the parent run {earlier.info.run_id} was started from a different sweep file ({superseded}) "
            f"and stopped before Tune saved any trial: closed as FAILED; the sweep starts under a new parent run "
            f"{tracker.parent_run_id}",
            file=out,
        )
    return tracker


def _changed_since(tracker: SweepTracker, parent: Any, cfg: SweepConfig) -> list[str] | None:
    """The fields changed since the sweep file `parent` logged when it was created (`sweep_config.yaml`), or None
    when it holds none (a driver killed between creating the run and logging it) or it cannot be read."""
    try:
        with tempfile.TemporaryDirectory(prefix="pclc-parent-") as tmp:
            path = tracker.client.download_artifacts(parent.info.run_id, PARENT_CONFIG_ARTIFACT, tmp)
            return _changed(Path(path).read_text(), cfg)
    except Exception:  # no artifact, or a store that cannot serve it: the fingerprint alone decides
        return None


SNAPSHOT_ENV = "TUNE_GLOBAL_CHECKPOINT_S"
_USER_SNAPSHOT = os.environ.get(SNAPSHOT_ENV)  # a period the user set wins
SNAPSHOT_AUTO_ABOVE = 200  # trials


def snapshot_period(trials: int) -> str:
    """How often Tune snapshots the experiment state. A small sweep every 5 s: a killed driver redoes little.
    Above SNAPSHOT_AUTO_ABOVE trials Tune's own "auto" (every max(10 s, 19 × the snapshot's cost)): a snapshot
    grows with the trials (0.8–1.4 s at 1000), so a fixed period would spend a growing share of the driver
    on it, and the sweep's snapshot time would grow with the square of its trials."""
    return "5" if trials <= SNAPSHOT_AUTO_ABOVE else "auto"


def build_tuner(
    cfg: SweepConfig,
    plan: SweepPlan,
    target: TrackingTarget,
    *,
    run_fn: RunTrial | None = None,
    prepared: Any = None,
    verbose: int = 0,
    retry_failed: bool = False,
    arms: list[dict[str, Any]] | None = None,
    out: TextIO,
) -> tune.Tuner:
    """The Tuner, fresh or restored with its trials and Optuna state, and the files a later resume reads.

    With `arms` it is the confirmation's: a grid over those overrides on `cfg.confirm_trial()` (AutoAttack
    on every evaluated sample), no search, no scheduler.
    The data and the transfer substitute are prepared here, once per sweep (as a Ray task on a worker, cached
    in shared storage: `sweeps.preparation`), and shared with every trial through the object store.
    """
    from sweeps.preparation import prepare_for_sweep

    exp_path = plan.experiment_path
    prepared = prepared if prepared is not None else prepare_for_sweep(cfg, storage_root=plan.root, out=out)
    base = cfg.trial if arms is None else cfg.confirm_trial()
    setup = TrialSetup(
        base=base.model_dump(),
        outputs_root=_outputs_root(exp_path, plan.name),
        threads=max(1, math.floor(cfg.resources.cpu)),
        target=target,
        searched=tuple(cfg.space) if cfg.mode == "optimize" and arms is None else _varied(cfg, arms),
        run_fn=run_fn,
        extra_tags={C.SWEEP: cfg.name},
        experiment_path=exp_path,
        skip_recorded_failures=plan.restorable and not retry_failed,
        checkpoint_epochs=cfg.rung_epochs() if arms is None else (),
    )
    fn = tune.with_resources(
        restoring_from_storage(tune.with_parameters(trainable, prepared=prepared, setup=setup)),
        {"cpu": cfg.resources.cpu, "gpu": cfg.resources.gpu},
    )
    total_trials = cfg.total_trials(confirmation=False) if arms is None else len(arms)
    os.environ[SNAPSHOT_ENV] = _USER_SNAPSHOT or snapshot_period(total_trials)  # read when fit() starts
    if plan.restorable:
        print(f"pclc sweep: resuming {exp_path}", file=out)
        tuner = tune.Tuner.restore(exp_path, trainable=fn, resume_errored=True)
    else:
        if arms is None:
            param_space, search_alg, num_samples = build_searcher(cfg)
            scheduler, total = build_scheduler(cfg), cfg.total_trials(confirmation=False)
        else:
            param_space, search_alg, num_samples = {GRID_KEY: tune.grid_search(arms)}, None, 1
            scheduler, total = None, len(arms)
            _write_local(exp_path, CONFIRM_ARMS, json.dumps(arms))
        tuner = tune.Tuner(
            fn,
            param_space=param_space,
            tune_config=tune.TuneConfig(
                search_alg=search_alg,
                scheduler=scheduler,
                num_samples=num_samples,
                max_concurrent_trials=cfg.max_concurrent if search_alg is None else None,
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
                    ProgressPrinter([o.metric for o in cfg.objective], total),
                ],
                verbose=verbose,
            ),
        )
        if arms is None:
            _write_local(exp_path, CONFIG_COPY, resolved_yaml(cfg))
    _write_local(exp_path, METADATA_FILE, json.dumps({"tracking_uri": plan.tracking_uri, **target.__dict__}, indent=2))
    return tuner


def fit(tuner: tune.Tuner, plan: SweepPlan) -> Any:
    """Run the trials; Tune's ResultGrid. A storage folder that ran full is named (Ray's own error does not)."""
    try:
        return tuner.fit()
    except Exception:
        check_storage(plan.root)
        raise


def run_sweep(
    cfg: SweepConfig,
    *,
    resume: bool = False,
    storage_path: str | None = None,
    tracking_uri: str | None = None,
    run_fn: RunTrial | None = None,
    prepared: Any = None,
    verbose: int = 0,
    out: TextIO | None = None,
    retry_failed: bool = False,
) -> SweepResult:
    """Run (or continue) the sweep `cfg` on the Ray cluster this process is connected to:
    plan → parent run → Tuner → fit → collect (MLflow made to agree with Tune) → summary.

    The process must have Tune's settings (`set_tune_environment`, done by `sweep_command`).

    Args:
        cfg: a validated sweep (see `sweeps.config.load_sweep`).
        resume: continue the stored experiment; it is also continued without this flag when
            `<storage>/<name>` holds a restorable Tune experiment.
        storage_path: Ray results root (default: the file's `storage_path`, else `<cwd>/ray_results`).
        tracking_uri: MLflow URI (default: the file's, else the one the experiment was started with,
            else `sqlite:///<cwd>/mlflow.db`).
        run_fn: what a trial calls, `pclc.experiment.run_trial` by default (tests inject faults).
        prepared: the `pclc.experiment.Prepared` of `cfg.trial` if the caller already has it.
        verbose: Ray Tune's own verbosity (0: only this module's one line per trial … 3 detailed).
        out: where the summary is printed (default stdout).
        retry_failed: on resume, re-run trials whose failure was deterministic (by default they keep it).

    Example (an illustration: it needs Ray running):
        >>> cfg = load_sweep("sweeps/configs/quickstart.yaml")  # doctest: +SKIP
        >>> result = run_sweep(cfg)  # doctest: +SKIP
        >>> print(result.ui_command)  # doctest: +SKIP
    """
    out = out or sys.stdout
    plan = plan_sweep(cfg, resume=resume, storage_path=storage_path, tracking_uri=tracking_uri, out=out)
    tracker = open_parent_run(cfg, plan, out=out)
    try:
        tuner = build_tuner(
            cfg,
            plan,
            tracker.target,
            run_fn=run_fn,
            prepared=prepared,
            verbose=verbose,
            retry_failed=retry_failed,
            out=out,
        )
        grid = fit(tuner, plan)
        result = collect(cfg, grid, tracker, plan)
        arms = cfg.confirm_overrides(best_rows(cfg, result.finished, top=len(result.finished)))
        if arms:
            confirm(cfg, result, plan, tracker, arms=arms, run_fn=run_fn, verbose=verbose, out=out)
        result.verdict = judge(tracker, out)
        tracker.log_cost_totals()
    except BaseException as exc:
        tracker.finish_parent("KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED", reason=repr(exc))
        raise
    tracker.finish_parent("FINISHED")
    print_summary(cfg, result, out)
    return result


def confirm(
    cfg: SweepConfig,
    result: SweepResult,
    plan: SweepPlan,
    tracker: SweepTracker,
    *,
    arms: list[dict[str, Any]],
    run_fn: RunTrial | None,
    verbose: int,
    out: TextIO,
) -> None:
    """The confirmation phase: `arms` (top configurations + references × fresh seeds) as a grid, tracked as
    children of the same parent run (tag `pclc.phase` = confirm); its outcome is added to `result`."""
    cplan = plan_confirmation(cfg, plan, arms, out=out)
    ctracker = SweepTracker(plan.tracking_uri, phase=C.PHASE_CONFIRM)
    ctracker.experiment_id, ctracker.parent_run_id = tracker.experiment_id, tracker.parent_run_id
    configs = len(arms) // max(1, len(cfg.confirm_seeds()))
    print(
        f"pclc sweep: confirming {configs} configurations (the search's best and the references) on fresh seeds "
        f"{cfg.confirm_seeds()}, AutoAttack on all {cfg.trial.eval_limit} evaluated samples: {len(arms)} trials",
        file=out,
    )
    tuner = build_tuner(cfg, cplan, ctracker.target, run_fn=run_fn, verbose=verbose, arms=arms, out=out)
    confirmed = collect(cfg, fit(tuner, cplan), ctracker, cplan)
    result.trials.update(confirmed.trials)
    result.confirmed = confirmed.finished
    result.stopped_early += confirmed.stopped_early


def judge(tracker: SweepTracker, out: TextIO) -> Any:
    """The verdict from MLflow: the confirmation runs (optimize) or the grid (ablation) against the references.
    What it cannot say it says in a warning: the sweep's results are recorded, whatever the analysis makes of them."""
    from analysis.verdict import verdict_for_parent

    try:
        return verdict_for_parent(
            tracker.client, tracker.experiment_id, tracker.parent_run_id, tracking_uri=tracker.tracking_uri
        )
    except Exception as exc:
        print(f"pclc sweep: warning: no verdict ({type(exc).__name__}: {exc}); run `pclc analyze`", file=out)
        return None


def _outputs_root(exp_path: str, name: str) -> str:
    if "://" in exp_path:  # remote storage: trial outputs stay on the trial's node
        return str(Path(tempfile.gettempdir()) / "pclc_outputs" / name)
    return str(Path(exp_path) / "outputs")


def _varied(cfg: SweepConfig, arms: list[dict[str, Any]] | None = None) -> tuple[str, ...]:
    """The TrialConfig fields a grid varies: its variants', or its `arms`' (labels left out), and the seed."""
    keys: list[str] = []
    for v in arms if arms is not None else [*cfg.variants, *cfg.references()]:
        keys += [k for k in v if k not in ("name", *LABELS) and k not in keys]
    return tuple(keys + (["seed"] if "seed" not in keys else []))


def _trial_id(result: Any) -> str | None:
    tid = (result.metrics or {}).get("trial_id")
    if tid:
        return str(tid)
    name = Path(str(result.path)).name
    return name.removeprefix("trial_") if name.startswith("trial_") else None


def collect(cfg: SweepConfig, grid: Any, tracker: SweepTracker, plan: SweepPlan) -> SweepResult:
    """How every trial ended, per Tune; MLflow made to agree (one run per trial, none RUNNING); the best rows."""
    trials: dict[str, TrialOutcome] = {}
    rows: list[dict[str, Any]] = []
    for res in grid:
        tid = _trial_id(res)
        if tid is None:
            continue
        config = dict(res.config or {})
        sampled = config.get(GRID_KEY, config)
        try:
            params: dict[str, Any] | None = cfg.trial_config(
                sampled, confirmation=plan.phase == C.PHASE_CONFIRM
            ).to_dict()
        except Exception:
            params = None
        error = failure_reason(str(res.error)) if res.error is not None else None
        trials[tid] = TrialOutcome(error=error, params=params)
        metrics = res.metrics or {}
        if error is None and all(o.metric in metrics for o in cfg.objective):
            row = {"trial_id": tid, **{k: sampled[k] for k in sampled if k not in LABELS}}
            if VARIANT in sampled:
                row[VARIANT] = sampled[VARIANT]
            row.update({o.metric: metrics[o.metric] for o in cfg.objective})
            for extra in (M.CLEAN_ACC, M.ROBUST_ACC):
                if extra in metrics:
                    row[extra] = metrics[extra]
            rows.append(row)
    counts = tracker.reconcile(trials)
    stopped = sum(1 for r in tracker.child_runs() if r.data.tags.get(C.STOPPED_EARLY) == "true")
    return SweepResult(
        name=cfg.name,
        experiment_path=plan.experiment_path,
        tracking_uri=tracker.tracking_uri,
        experiment_id=tracker.target.experiment_id,
        parent_run_id=tracker.target.parent_run_id,
        resumed=plan.restorable,
        trials=trials,
        finished=rows,
        best=best_rows(cfg, rows),
        stopped_early=stopped,
        reconcile=counts,
        grid=grid,
    )


# --------------------------------------------------------------------------- the command


def set_tune_environment() -> None:
    """The process-wide settings a sweep needs from Tune, which reads them from the environment."""
    # Trials report the objective only with their final evaluation (see FinalMetricOptunaSearch).
    os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"
    # with num_to_keep, Tune snapshots the experiment every few trial checkpoints: wanted here, not a warning
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")


@contextlib.contextmanager
def ray_session(address: str | None, **init: Any) -> Iterator[None]:
    """Ray for one command: started (or joined, address 'auto') and shut down after, unless already running."""
    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if address is None:  # a private local Ray: its trials are this command's work, at its own priority (Ray's
        # default niceness 15 leaves a trial a few % of a core beside any other busy process)
        os.environ.setdefault("RAY_worker_niceness", "0")
    started = not ray.is_initialized()
    if started:
        # address None: a private local Ray on this machine ("local": ray.init(None) would join any cluster
        # `ray start` left running here, even one being torn down); "auto": join the cluster started with
        # `ray start`
        try:
            ray.init(address=address or "local", include_dashboard=False, configure_logging=False, **init)
        except OSError as exc:
            if "AF_UNIX path length" not in str(exc):
                raise
            ray_tmp = os.environ.get("RAY_TMPDIR") or tempfile.gettempdir()
            raise SocketPathError(
                f"Ray cannot start here: its socket paths under the temporary folder {ray_tmp} ({len(ray_tmp)} "
                "characters, from TMPDIR or RAY_TMPDIR) exceed the 107-byte limit of Unix sockets. "
                "Set a short TMPDIR, e.g. `TMPDIR=/tmp pclc sweep …`, or RAY_TMPDIR for Ray alone"
            ) from None
    try:
        yield
    finally:
        if started:
            ray.shutdown()  # workers stop now, quietly, rather than at interpreter exit


def sweep_command(args: argparse.Namespace) -> int:
    """`pclc sweep CONFIG [--resume] [--address A] [--tracking-uri U] [--storage-path P] [--smoke-test]`."""
    # every config error is raised here, before Ray starts
    cfg = load_sweep(args.config, getattr(args, "set", None), smoke=getattr(args, "smoke_test", False))
    tracking_uri = args.tracking_uri
    if tracking_uri:
        from pclc.contract import normalize_tracking_uri

        tracking_uri = normalize_tracking_uri(tracking_uri)

    check_storage(storage_root(cfg, args.storage_path))  # before Ray starts
    with ray_session(args.address):
        set_tune_environment()
        result = run_sweep(
            cfg,
            resume=args.resume,
            storage_path=args.storage_path,
            tracking_uri=tracking_uri,
            retry_failed=getattr(args, "retry_failed", False),
        )
    return 1 if result.trials and len(result.failed) == len(result.trials) else 0
