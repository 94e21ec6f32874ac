"""MLflow bookkeeping of a sweep, in the layout `pclc.contract` fixes (analysis reads it back).

One parent run per sweep (created on the driver, with the resolved sweep file, git commit and
package versions) and one child run per trial. A trial finds its child run by the tag
`pclc.trial_id` under the parent, so a retried or resumed trial writes into the same run and the
store ends with exactly one run per trial. Every write goes through `retrying`, because SQLite
answers "database is locked" when several trial processes write at once. A trial's metrics
survive a tracking server that is down for a while: they wait in a buffer (in memory and in a
file in the trial's output folder, so a retry finds them) and are sent once it answers again;
the final evaluation waits for it at most `patience_s`. No Ray import here.

One room (~760 lines): both ends of the run layout, the driver's (`SweepTracker`) and the trial's (`TrialRun`),
over one retry policy (`retrying`, `patiently`); they must agree on every tag and on how a run is found.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import random
import subprocess
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, TypeVar

from mlflow.entities import Metric, Param, Run, RunTag, ViewType
from mlflow.tracking import MlflowClient

from pclc import contract as C
from pclc import metrics as M
from pclc.attacks import LEFT_OUT as LEFT_OUT_WARNING
from pclc.contract import (  # noqa: F401  (re-exported: the writer's names, for callers of this module)
    CUSTOM_MODEL_DEVELOPMENT,
    DETERMINISTIC,
    EXPERIMENT_KIND,
    EXPERIMENT_PATH,
    FAILURE,
    FINAL,
    HEADLINE,
    MODE,
    PARENT,
    ROLE,
    STOPPED_EARLY,
    TRIAL_ID,
    default_tracking_uri,
    experiment_ui_path,
    param_value,
)
from pclc.files import write_atomic
from pclc.redact import mask

T = TypeVar("T")
PARENT_CONFIG_ARTIFACT = "sweep_config.yaml"  # the parent run's copy of the resolved sweep file

_LOCKED = ("database is locked", "database is busy", "database table is locked")
# How a tracking server that is down (or restarting) shows through MLflow's REST client.
_UNREACHABLE = (
    "connection refused",
    "max retries exceeded",
    "failed to establish a new connection",
    "connection aborted",
    "connection reset",
    "remotedisconnected",
    "read timed out",
    "connecttimeout",
    "bad gateway",
    "service unavailable",
    "gateway timeout",
    "too many 502 error",
    "too many 503 error",
    "too many 504 error",
)
PATIENCE_ENV = "PCLC_TRACKING_PATIENCE_S"  # how long a trial waits for MLflow at its end (seconds)
DEFAULT_PATIENCE_S = 600.0
# MLflow's client retries a refused request 7 times with back-off (minutes) before it raises:
# a trial retries on its own terms instead, so the client gives up after a few seconds (the one policy).
_CLIENT_LIMITS = C.MLFLOW_CLIENT_ENV


def artifact_root(tracking_uri: str) -> str | None:
    """Where a new experiment keeps artifacts: beside a SQLite file (absolute); a server decides itself."""
    if tracking_uri.startswith("sqlite:///"):
        return (Path(tracking_uri.removeprefix("sqlite:///")).parent / "mlartifacts").resolve().as_uri()
    return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        pass
    return True


def ensure_sqlite_store(tracking_uri: str) -> None:
    """A new SQLite store is built aside and linked into place whole. MLflow creates its tables one
    migration at a time (a minute on a busy machine): a sweep killed in between would leave a file that
    no later run can open ("table … already exists"). A store that exists is left alone."""
    if not tracking_uri.startswith("sqlite:///"):
        return
    path = Path(tracking_uri.removeprefix("sqlite:///"))
    if path.exists():
        return
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{path.name}.*.tmp*"):  # left by a driver killed while building one
        pid = int(stale.name.split(".")[-2].split("-")[0])
        if not _alive(pid):
            stale.unlink(missing_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{random.getrandbits(32):08x}.tmp")
    try:
        SqlAlchemyStore(f"sqlite:///{tmp}", artifact_root(tracking_uri)).engine.dispose()
        with contextlib.suppress(FileExistsError):  # another driver made it first: theirs stands
            os.link(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
        tmp.with_name(f"{tmp.name}-journal").unlink(missing_ok=True)


def retrying(fn: Callable[..., T], *args: Any, attempts: int = 60, **kwargs: Any) -> T:
    """Call `fn`, retrying with jittered back-off while SQLite reports a lock (about 2 min at most)."""
    delay = 0.05
    for attempt in range(attempts):
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # MlflowException wraps sqlalchemy's OperationalError
            if attempt == attempts - 1 or not any(s in str(exc).lower() for s in _LOCKED):
                raise
            time.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 1.6, 2.0)
    raise AssertionError("unreachable")


class TrackingUnavailable(RuntimeError):
    """The tracking server stayed unreachable for longer than a trial's patience."""


def unreachable(exc: BaseException) -> bool:
    """Whether `exc` says the tracking server could not be reached (as opposed to a refused request)."""
    text = f"{type(exc).__name__}: {exc}".lower()
    return isinstance(exc, ConnectionError) or any(s in text for s in _UNREACHABLE)


def tracking_patience() -> float:
    """Seconds a trial waits for an unreachable tracking server before it fails (env PCLC_TRACKING_PATIENCE_S)."""
    try:
        return float(os.environ.get(PATIENCE_ENV, DEFAULT_PATIENCE_S))
    except ValueError:
        return DEFAULT_PATIENCE_S


def limit_client_retries() -> None:
    """Keep MLflow's own HTTP retries short in this (trial) process; an explicit setting wins."""
    for key, value in _CLIENT_LIMITS.items():
        os.environ.setdefault(key, value)


def patiently(fn: Callable[..., T], *args: Any, deadline: float, what: str, uri: str, **kwargs: Any) -> T:
    """`retrying(fn)`, and while the server is unreachable, again until `deadline` (time.monotonic())."""
    delay = 0.5
    while True:
        try:
            return retrying(fn, *args, **kwargs)
        except Exception as exc:
            if not unreachable(exc):
                raise
            left = deadline - time.monotonic()
            if left <= 0:
                raise TrackingUnavailable(
                    f"the MLflow tracking server at {uri} could not be reached while {what} "
                    f"(gave up after the trial's patience, {PATIENCE_ENV}): {failure_reason(str(exc), 500)}"
                ) from None
            time.sleep(min(delay, left))
            delay = min(delay * 1.5, 5.0)


def _metrics(values: dict[str, float], step: int, now: int) -> list[Metric]:
    return [Metric(M.to_mlflow(k), float(v), now, step) for k, v in values.items() if isinstance(v, (int, float))]


def _batched(items: list[T], size: int) -> Iterable[list[T]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def failure_reason(text: str, limit: int = 4000) -> str:
    """The line that says why, from an exception text or traceback (MLflow caps tags at 8000 chars)."""
    lines = [ln.strip() for ln in mask(str(text)).strip().splitlines() if ln.strip()]
    for ln in reversed(lines):  # the last "SomethingError: message" line of a traceback
        head = ln.split(":", 1)[0]
        if head.endswith(("Error", "Exception", "Interrupt")) and " " not in head:
            return ln[:limit]
    return (lines[-1] if lines else "unknown error")[:limit]


def git_commit(path: str | Path | None = None) -> str:
    """The checkout's commit (with '-dirty' when files changed), or 'unknown' outside git."""
    cwd = Path(path or Path(__file__).parent)
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10)
        if head.returncode != 0:
            return "unknown"
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=cwd, capture_output=True, text=True, timeout=10)
        return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def package_versions() -> dict[str, str]:
    names = ("pclc-sweeps", "torch", "torchvision", "ray", "optuna", "mlflow", "advertorch", "numpy", "pydantic")
    out = {"python": platform.python_version()}
    for name in names:
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[name] = metadata.version(name)
    return out


@dataclass(frozen=True)
class TrackingTarget:
    """What a trial process needs to find its run: picklable, no client inside."""

    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    phase: str = C.PHASE_SEARCH  # the part of the sweep its trials belong to (tag C.PHASE)
    look: str = ""  # a later look of a sequential confirmation (tag C.LOOK): its own Tune experiment


@dataclass(frozen=True)
class TrialOutcome:
    """How Tune saw a trial end: its error text (None if it ended normally) and its parameters."""

    error: str | None = None
    params: dict[str, Any] | None = None


# --------------------------------------------------------------------------- driver side


class _NotLookedUp:
    """`close_trial(run=NOT_LOOKED_UP)`: the caller has not looked the trial's run up (close_trial searches it)."""


NOT_LOOKED_UP = _NotLookedUp()


class SweepTracker:
    """The driver's view: the experiment, the parent run, and the final word on every child run."""

    def __init__(self, tracking_uri: str, *, phase: str = C.PHASE_SEARCH, look: str = "") -> None:
        self.tracking_uri = tracking_uri
        ensure_sqlite_store(tracking_uri)
        self.client = MlflowClient(tracking_uri)
        self.experiment_id: str | None = None
        self.parent_run_id: str | None = None
        self.phase = phase  # the trials `close_trial` and `reconcile` speak for
        self.look = look  # ... and, in a sequential confirmation, of which look (each is its own Tune experiment)

    def _call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Every write of the driver waits out a tracking server that is down (up to the patience,
        PCLC_TRACKING_PATIENCE_S), as the trials do: an outage at the end must not lose the wrap-up."""
        deadline = time.monotonic() + tracking_patience()
        return patiently(fn, *args, deadline=deadline, what="recording the sweep", uri=self.tracking_uri, **kwargs)

    @property
    def target(self) -> TrackingTarget:
        assert self.experiment_id and self.parent_run_id, "call start_parent first"
        return TrackingTarget(self.tracking_uri, self.experiment_id, self.parent_run_id, self.phase, self.look)

    def ensure_experiment(self, name: str) -> str:
        """Create the experiment once, here on the driver (trials only look it up)."""
        exp = self._call(self.client.get_experiment_by_name, name)
        if exp is None:
            try:
                self.experiment_id = self._call(
                    self.client.create_experiment, name, artifact_location=artifact_root(self.tracking_uri)
                )
            except Exception:  # another driver created it meanwhile
                exp = self._call(self.client.get_experiment_by_name, name)
                if exp is None:
                    raise
                self.experiment_id = exp.experiment_id
        else:
            if exp.lifecycle_stage == "deleted":
                self._call(self.client.restore_experiment, exp.experiment_id)
            self.experiment_id = exp.experiment_id
        self._call(self.client.set_experiment_tag, self.experiment_id, EXPERIMENT_KIND, CUSTOM_MODEL_DEVELOPMENT)
        return self.experiment_id

    def log_cost_totals(self) -> dict[str, float]:
        """Sum each trial's cost metrics (GPU-hours, trial, training and evaluation time) into the parent run."""
        totals = {M.total_key(name): 0.0 for name in M.COST}
        for run in self.child_runs():
            for name in M.COST:
                value = run.data.metrics.get(name)
                if value is not None and math.isfinite(value):
                    totals[M.total_key(name)] += value
        now = int(time.time() * 1000)
        self._call(self.client.log_batch, self.parent_run_id, metrics=[Metric(k, v, now, 0) for k, v in totals.items()])
        return totals

    def find_parent(self, experiment_path: str) -> Run | None:
        """The parent run of an earlier (interrupted) run of the same Ray experiment, if any."""
        runs = self._call(
            self.client.search_runs,
            [self.experiment_id],
            filter_string=f"tags.`{ROLE}` = '{C.ROLE_SWEEP}' and tags.`{EXPERIMENT_PATH}` = '{experiment_path}'",
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
        return runs[0] if runs else None

    def start_parent(
        self,
        *,
        name: str,
        mode: str,
        headline_metric: str,
        objective: list[dict[str, str]],
        experiment_path: str,
        resolved_config: str,
        resume: bool,
        references: list[str] | None = None,
        verdict: dict[str, Any] | None = None,
        fingerprint: str | None = None,
    ) -> str:
        """Open (or, on resume, reopen) the sweep's parent run; returns its id. `fingerprint` (the sweep file's,
        `C.SWEEP_FINGERPRINT`) is recorded on a new parent run; whether an earlier one may be continued is the
        driver's decision (`sweeps.driver.open_parent_run`), made before this call."""
        self.ensure_experiment(name)
        existing = self.find_parent(experiment_path) if resume else None
        if existing is not None:
            self.parent_run_id = existing.info.run_id
            self._call(self.client.update_run, self.parent_run_id, status="RUNNING")
            self._call(self.client.set_tag, self.parent_run_id, C.RESUMED, str(int(time.time())))
            return self.parent_run_id
        tags = {
            ROLE: C.ROLE_SWEEP,
            MODE: mode,
            HEADLINE: headline_metric,
            C.OBJECTIVE: json.dumps(objective),
            C.REFERENCES: json.dumps(references or []),
            **({C.VERDICT: json.dumps(verdict)} if verdict else {}),
            EXPERIMENT_PATH: experiment_path,
            C.GIT_COMMIT: git_commit(),
            C.VERSIONS: json.dumps(package_versions()),
            **({C.SWEEP_FINGERPRINT: fingerprint} if fingerprint else {}),
        }
        stale = self.find_parent(experiment_path)
        if stale is not None and stale.info.status == "RUNNING":
            # A driver killed before Tune saved anything: the sweep starts over under the same parent (one
            # parent per sweep); the trial runs it had begun are orphans, deleted by `reconcile` at the end.
            self.parent_run_id = stale.info.run_id
            self._call(self.client.set_tag, self.parent_run_id, C.RESUMED, str(int(time.time())))
            return self.parent_run_id
        run = self._call(self.client.create_run, self.experiment_id, tags=tags, run_name=f"sweep-{name}")
        self.parent_run_id = run.info.run_id
        self._call(self.client.log_text, self.parent_run_id, resolved_config, PARENT_CONFIG_ARTIFACT)
        return self.parent_run_id

    def supersede_parent(self, run: Run, reason: str) -> None:
        """Close an earlier parent run that no driver will continue: FAILED with `reason`, and the trial runs it
        had begun deleted (Tune saved none of their trials, so none of them is a result; the same orphans
        `reconcile` deletes when a parent is taken over)."""
        for child in self.child_runs(parent_run_id=run.info.run_id):
            self._call(self.client.delete_run, child.info.run_id)
        self._call(self.client.set_tag, run.info.run_id, FAILURE, failure_reason(reason))
        self._call(self.client.set_terminated, run.info.run_id, "FAILED")

    def finish_parent(self, status: str = "FINISHED", reason: str | None = None) -> None:
        if self.parent_run_id is None:
            return
        if reason:
            self._call(self.client.set_tag, self.parent_run_id, FAILURE, failure_reason(reason))
        self._call(self.client.set_terminated, self.parent_run_id, status)

    def child_runs(self, view: int = ViewType.ACTIVE_ONLY, parent_run_id: str | None = None) -> list[Run]:
        """Every child run of the parent (this sweep's by default), page by page."""
        return C.every_page(
            lambda token: self._call(
                self.client.search_runs,
                [self.experiment_id],
                filter_string=f"tags.`{PARENT}` = '{parent_run_id or self.parent_run_id}'",
                run_view_type=view,
                max_results=C.RUNS_PAGE,
                page_token=token,
            )
        )

    def close_trial(
        self,
        trial_id: str,
        *,
        error: str | None = None,
        stopped: bool = False,
        params: dict[str, Any] | None = None,
        run: Run | None | _NotLookedUp = NOT_LOOKED_UP,
    ) -> None:
        """The driver's last word on one trial: FAILED with a reason, KILLED when stopped early. `run` is its
        run when the caller already searched (None: it has none), else it is searched for here."""
        if run is NOT_LOOKED_UP:
            run = self._call(find_trial_run, self.client, self.target, trial_id)
        if run is None:
            if error is None:
                return
            # the trial died before it could open its run: still one run per trial, with the reason
            run = self._call(
                self.client.create_run,
                self.experiment_id,
                tags=_trial_tags(self.target, trial_id),
                run_name=f"trial_{trial_id}",
            )
            items = [Param(k, param_value(v)) for k, v in (params or {}).items()]
            for chunk in _batched(items, 100):
                self._call(self.client.log_batch, run.info.run_id, params=chunk)
        run_id, status, tags = run.info.run_id, run.info.status, run.data.tags
        if error is not None:
            if FAILURE not in tags or status != "FAILED":
                self._call(self.client.set_tag, run_id, FAILURE, failure_reason(error))
            if status != "FAILED":
                self._call(self.client.set_terminated, run_id, "FAILED")
        elif status in ("RUNNING", "SCHEDULED"):
            if tags.get(FINAL) == "1":
                self._call(self.client.set_terminated, run_id, "FINISHED")
            else:  # Tune ended it before its final evaluation (ASHA, or stopped by the user)
                if stopped:
                    self._call(self.client.set_tag, run_id, STOPPED_EARLY, "true")
                self._call(self.client.set_terminated, run_id, "KILLED")

    def reconcile(self, trials: dict[str, TrialOutcome]) -> dict[str, int]:
        """Make MLflow agree with Tune at the end of this phase: `trials` maps every trial id of the
        phase to how it ended.

        Child runs of trials Tune no longer knows (the driver was killed before Tune saved its state,
        so the trial was started again under a new id) are deleted: one run per trial, no duplicates.
        The other phase's runs, and another look's, are not this Tune experiment's, and are left alone.
        """
        counts = {"closed": 0, "orphans_deleted": 0, "duplicates_deleted": 0}
        kept: dict[str, Run] = {}  # one search for the whole phase, not one per trial (O(N) runs, not O(N²))
        mine = [r for r in self.child_runs() if run_phase(r) == self.phase and r.data.tags.get(C.LOOK, "") == self.look]
        by_trial: dict[str, list[Run]] = {}
        for run in mine:
            by_trial.setdefault(run.data.tags.get(TRIAL_ID, ""), []).append(run)
        for tid, runs in by_trial.items():
            keep = richest(runs) if tid in trials else None
            for run in runs:
                if run is keep:
                    kept[tid] = run
                    continue
                self._call(self.client.delete_run, run.info.run_id)
                counts["orphans_deleted" if keep is None else "duplicates_deleted"] += 1
        for tid, outcome in trials.items():
            # KILLED without `stopped_early`: the live callback tags trials ASHA stopped; here the
            # rest (e.g. a sweep interrupted with Ctrl-C) is closed so that no run stays RUNNING
            self.close_trial(tid, error=outcome.error, params=outcome.params, run=kept.get(tid))
            counts["closed"] += 1
        return counts


# --------------------------------------------------------------------------- trial side


def _trial_tags(target: TrackingTarget, trial_id: str) -> dict[str, str]:
    look = {C.LOOK: target.look} if target.look else {}
    return {PARENT: target.parent_run_id, ROLE: C.ROLE_TRIAL, TRIAL_ID: trial_id, C.PHASE: target.phase, **look}


def run_phase(run: Run) -> str:
    """The part of its sweep a trial run belongs to; an older sweep's runs, untagged, were all its search."""
    return run.data.tags.get(C.PHASE, C.PHASE_SEARCH)


def richest(runs: list[Run]) -> Run:
    """The run that holds a trial's record when there are several: finished with its final tag, else the most
    metrics, then parameters, then the earliest. A second run appears when a `create_run` the server committed
    is answered too late and retried: the empty one must never be the run kept (its twin's metrics deleted)."""
    return max(
        runs,
        key=lambda r: (r.data.tags.get(FINAL) == "1", len(r.data.metrics), len(r.data.params), -r.info.start_time),
    )


def find_trial_run(client: MlflowClient, target: TrackingTarget, trial_id: str) -> Run | None:
    runs = retrying(
        client.search_runs,
        [target.experiment_id],
        filter_string=f"tags.`{PARENT}` = '{target.parent_run_id}' and tags.`{TRIAL_ID}` = '{trial_id}'",
        order_by=["attributes.start_time ASC"],
    )
    return richest(runs) if runs else None


class TrialRun:
    """One trial's child run, opened in the trial's process; the same run across retries and resumes.

    Metrics go through a pending buffer: a write the server does not answer stays there (and in
    `buffer_path`, when given) and is sent with the next one; `log_final` waits for the server up
    to `patience_s` before it gives up with `TrackingUnavailable`.
    """

    def __init__(
        self,
        client: MlflowClient,
        run: Run,
        logged_epochs: set[int],
        reopened: bool,
        *,
        buffer_path: Path | None = None,
        patience_s: float | None = None,
        uri: str = "",
    ) -> None:
        self.client = client
        self.run_id = run.info.run_id
        self.logged_epochs = logged_epochs  # steps already in MLflow or buffered: a retry does not log them twice
        self.reopened = reopened
        self.buffer_path = buffer_path
        self.patience_s = tracking_patience() if patience_s is None else patience_s
        self.uri = uri
        self.pending: list[Metric] = []  # metrics the server has not acknowledged yet
        self._previous = run
        self._last_epoch: dict[str, float] = {}
        self._stored_at: dict[int, dict[str, float]] = {}  # see `logged_at`
        self.recorded_failure: str | None = None  # see `open(keep_recorded_failure=True)`
        self.earlier_epochs: set[int] = set()  # steps earlier attempts logged (see `logged_at`)
        self.earlier_keys: set[str] = set()  # the metric keys they logged

    @classmethod
    def open(
        cls,
        target: TrackingTarget,
        *,
        trial_id: str,
        params: dict[str, Any],
        tags: dict[str, str] | None = None,
        buffer_path: str | Path | None = None,
        patience_s: float | None = None,
        keep_recorded_failure: bool = False,
    ) -> TrialRun:
        """Find the trial's run under the parent, or create it with every parameter.

        Metrics an earlier attempt left in `buffer_path` (the server was down) are sent first. With
        `keep_recorded_failure`, a run that FAILED for a deterministic reason is left exactly as it is and
        `recorded_failure` says why: re-running it would only fail again.
        """
        limit_client_retries()
        patience = tracking_patience() if patience_s is None else patience_s
        deadline = time.monotonic() + patience
        client = MlflowClient(target.tracking_uri)

        def call(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
            return patiently(
                fn, *args, deadline=deadline, what="opening the trial's run", uri=target.tracking_uri, **kwargs
            )

        buffer = Path(buffer_path) if buffer_path is not None else None
        run = call(find_trial_run, client, target, trial_id)
        if (
            keep_recorded_failure
            and run is not None
            and run.info.status == "FAILED"
            and run.data.tags.get(DETERMINISTIC) == "1"
        ):
            kept = cls(
                client, run, set(), reopened=True, buffer_path=None, patience_s=patience, uri=target.tracking_uri
            )
            kept.recorded_failure = run.data.tags.get(FAILURE, "an earlier attempt failed")
            return kept
        all_tags = {**_trial_tags(target, trial_id), **(tags or {})}
        if run is None:
            run = call(client.create_run, target.experiment_id, tags=all_tags, run_name=f"trial_{trial_id}")
            items = [Param(k, param_value(v)) for k, v in params.items()]
            for chunk in _batched(items, 100):
                call(client.log_batch, run.info.run_id, params=chunk)
            opened = cls(
                client, run, set(), reopened=False, buffer_path=buffer, patience_s=patience, uri=target.tracking_uri
            )
        else:
            history = call(client.get_metric_history, run.info.run_id, M.EPOCH)
            logged = {int(m.step) for m in history}
            if run.info.status != "FINISHED" or run.data.tags.get(FINAL) != "1":
                call(client.update_run, run.info.run_id, status="RUNNING")
                for stale in (FAILURE, DETERMINISTIC):  # a retry: the earlier attempt's reason no longer holds
                    if stale in run.data.tags:
                        call(client.delete_tag, run.info.run_id, stale)
            attempts = int(run.data.tags.get(C.ATTEMPTS, "1")) + 1
            call(
                client.log_batch,
                run.info.run_id,
                tags=[RunTag(k, v) for k, v in {**(tags or {}), C.ATTEMPTS: str(attempts)}.items()],
            )
            opened = cls(
                client, run, logged, reopened=True, buffer_path=buffer, patience_s=patience, uri=target.tracking_uri
            )
        opened.pending = _read_buffer(buffer)
        opened.logged_epochs |= {int(m.step) for m in opened.pending if m.key == M.EPOCH}
        # what earlier attempts logged: a step of theirs may hold more than its epoch metrics (the final)
        opened.earlier_epochs = set(opened.logged_epochs)
        opened.earlier_keys = set(run.data.metrics) | {m.key for m in opened.pending}
        opened.flush(deadline=deadline, what="sending the metrics an earlier attempt buffered")
        return opened

    def finished_metrics(self) -> dict[str, float] | None:
        """The final metrics, if an earlier attempt already finished and logged them."""
        run = self._previous
        if run.info.status == "FINISHED" and run.data.tags.get(FINAL) == "1":
            return {M.from_mlflow(k): v for k, v in run.data.metrics.items()}
        return None

    def flush(self, *, deadline: float | None = None, what: str = "logging metrics") -> bool:
        """Send the pending metrics. Without a deadline one try: an unreachable server leaves them
        pending (persisted) and returns False; with one, wait for the server until then."""
        while self.pending:
            chunk = self.pending[:500]
            try:
                if deadline is None:
                    retrying(self.client.log_batch, self.run_id, metrics=chunk)
                else:
                    patiently(
                        self.client.log_batch, self.run_id, metrics=chunk, deadline=deadline, what=what, uri=self.uri
                    )
            except Exception as exc:
                self._persist()
                if deadline is None and unreachable(exc):
                    return False
                raise
            # identical (key, value, timestamp, step) rows are stored once: a resent chunk is harmless
            del self.pending[: len(chunk)]
        self._persist()
        return True

    def _persist(self) -> None:
        """Mirror the pending metrics in `buffer_path` (removed once empty), for a retried attempt."""
        if self.buffer_path is None:
            return
        try:
            if not self.pending:
                self.buffer_path.unlink(missing_ok=True)
                return
            write_atomic(self.buffer_path, json.dumps([[m.key, m.value, m.timestamp, m.step] for m in self.pending]))
        except OSError as exc:  # the metrics stay in memory; only a retry after a crash would miss them
            print(f"pclc trial: warning: cannot keep unsent metrics in {self.buffer_path}: {exc}", flush=True)

    def log_epoch(self, metrics: dict[str, float]) -> None:
        """Per-epoch metrics at step=epoch (skipped when a previous attempt logged that epoch).

        Never waits for an unreachable server: the metrics stay pending and training goes on.
        """
        step = int(metrics[M.EPOCH])
        self._last_epoch = dict(metrics)
        if step in self.logged_epochs:
            return
        self.pending += _metrics(metrics, step, int(time.time() * 1000))
        self.logged_epochs.add(step)
        self.flush()

    def logged_at(self, step: int) -> dict[str, float]:
        """The metrics logged at epoch `step`: this attempt's last epoch, or what an earlier attempt
        logged there (read back from the store: a trial resumed after its last epoch trains none)."""
        if step not in self.logged_epochs:
            return {}
        if self._last_epoch.get(M.EPOCH) == step and step not in self.earlier_epochs:
            return self._last_epoch
        # an earlier attempt logged this step: it may have logged the final there too (killed before its
        # `pclc.final` tag), and a resumed attempt that trained the epoch again must not write those twice
        if step not in self._stored_at:
            found: dict[str, float] = {}
            for name in sorted(self.earlier_keys):  # the run as opened, and what its buffer held
                rows = [m for m in retrying(self.client.get_metric_history, self.run_id, name) if m.step == step]
                if rows:
                    found[M.from_mlflow(name)] = max(rows, key=lambda m: m.timestamp).value
            self._stored_at[step] = found
        return self._stored_at[step]

    def log_final(
        self,
        final: dict[str, float],
        evaluation: dict[str, Any],
        weights: Path | None,
        *,
        outcomes: str | None = None,
    ) -> None:
        """The final evaluation at step=epochs, evaluation.json, the per-sample `outcomes` (the JSON text of
        `pclc.outcomes`) when given, the weights if asked; then FINISHED. The tag `pclc.final` comes last,
        so a run it marks holds every one of them.

        Waits up to `patience_s` for an unreachable server, then raises `TrackingUnavailable`.
        """
        deadline = time.monotonic() + self.patience_s
        step = int(final[M.EPOCH])
        # keys already logged at this step with the same value are not written twice
        already = self.logged_at(step)
        fresh = {k: v for k, v in final.items() if not (k in already and _same(already[k], v))}
        self.pending += _metrics(fresh, step, int(time.time() * 1000))
        what = "logging the final evaluation"
        self.flush(deadline=deadline, what=what)

        def call(fn: Callable[..., Any], *args: Any) -> None:
            patiently(fn, *args, deadline=deadline, what=what, uri=self.uri)

        call(self.client.log_dict, self.run_id, evaluation, C.EVALUATION_ARTIFACT)
        if outcomes is not None:
            call(self.client.log_text, self.run_id, outcomes, C.OUTCOMES_ARTIFACT)
        if weights is not None and weights.is_file():
            call(self.client.log_artifact, self.run_id, str(weights), C.WEIGHTS_DIR)
        tags = C.samples_tags(evaluation.get("samples") or {})  # the analysis reads them from the runs' search
        left_out = [str(w) for w in evaluation.get("warnings", []) if str(w).startswith(LEFT_OUT_WARNING)]
        if left_out:  # a tag, so that the analysis sees it without downloading every run's evaluation.json
            tags[C.LEFT_OUT] = failure_reason(" | ".join(left_out))
        if tags:
            call(self.client.log_batch, self.run_id, [], [], [RunTag(k, v) for k, v in tags.items()])
        call(self.client.set_tag, self.run_id, FINAL, "1")
        call(self.client.set_terminated, self.run_id, "FINISHED")

    def fail(self, reason: str, patience_s: float = 10.0, *, deterministic: bool = False) -> None:
        """FAILED with the reason; Tune may retry the trial, which reopens this run. A deterministic
        failure is marked so that a resumed sweep does not re-run it unless asked (`--retry-failed`).

        Waits only briefly for an unreachable server: the driver records the failure at the end too.
        """
        deadline = time.monotonic() + patience_s
        what = "recording the trial's failure"
        tags = [RunTag(FAILURE, failure_reason(reason)), RunTag(DETERMINISTIC, "1" if deterministic else "0")]
        patiently(self.client.log_batch, self.run_id, tags=tags, deadline=deadline, what=what, uri=self.uri)
        patiently(self.client.set_terminated, self.run_id, "FAILED", deadline=deadline, what=what, uri=self.uri)


def _read_buffer(path: Path | None) -> list[Metric]:
    """The metrics an earlier attempt could not send (see `TrialRun._persist`)."""
    if path is None or not path.is_file():
        return []
    try:
        rows = json.loads(path.read_text())
        return [Metric(str(k), float(v), int(ts), int(step)) for k, v, ts, step in rows]
    except (OSError, ValueError, TypeError) as exc:
        print(f"pclc trial: warning: ignoring unreadable metric buffer {path}: {exc}", flush=True)
        return []


def _same(a: float, b: float) -> bool:
    return a == b or (isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b))


__all__ = [
    "SweepTracker",
    "TrialRun",
    "TrackingTarget",
    "TrialOutcome",
    "TrackingUnavailable",
    "default_tracking_uri",
    "artifact_root",
    "retrying",
    "patiently",
    "unreachable",
    "tracking_patience",
    "limit_client_retries",
    "failure_reason",
    "find_trial_run",
    "param_value",
]
