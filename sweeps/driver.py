"""The sweep driver: `run_sweep` reads as the pipeline, plan → parent run → stages → judge → summary.

Three layers, as the Ray Tune examples have them: `pclc.experiment.run_trial` evaluates, the thin
`sweeps.trainable.trainable` reads config and reports, and the driver runs the sweep's stages
(`sweeps.stages`: the search, then its confirmation), each a Tuner assembled in `sweeps.tuner`, after
`sweeps.plan` has decided where the sweep runs, whether it continues, and opened its parent run.
`ray.init` and the process-wide Tune settings happen only in `sweep_command` (the CLI: `ray_session`,
`set_tune_environment`); `run_sweep` uses whatever Ray is running.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
from collections.abc import Iterator
from typing import Any, TextIO

from sweeps.config import SweepConfig, read_sweep_file
from sweeps.plan import SweepPlan, open_parent_run, plan_sweep, sweep_fingerprint  # noqa: F401  (re-exported)
from sweeps.result import SweepResult
from sweeps.stages import run_stages, stages_of
from sweeps.storage import StorageError, check_storage, storage_root  # noqa: F401  (StorageError: raised by run_sweep)
from sweeps.summary import print_summary
from sweeps.tracking import SweepTracker
from sweeps.trainable import RunTrial

# Names that lived here before the sweep was split into rooms, importable from here still. The Tuner's pickled
# state (tuner.pkl, the experiment snapshot) names its callbacks, searcher and trial-folder function by module:
# a sweep started before the split is resumed only if `sweeps.driver` still holds them.
from sweeps.tuner import (  # noqa: F401
    SNAPSHOT_AUTO_ABOVE,
    FinalMetricOptunaSearch,
    ProgressPrinter,
    TrackingCallback,
    _trial_dirname,
    build_scheduler,
    build_searcher,
    snapshot_period,
)


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
    plan → parent run → stages (each a Tuner: fit, then collect, MLflow made to agree with Tune) → judge →
    summary.

    The process must have Tune's settings (`set_tune_environment`, done by `sweep_command`).

    Args:
        cfg: a validated sweep (see `sweeps.config.read_sweep_file`).
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
        >>> cfg = read_sweep_file("sweeps/configs/quickstart.yaml")  # doctest: +SKIP
        >>> result = run_sweep(cfg)  # doctest: +SKIP
        >>> print(result.ui_command)  # doctest: +SKIP
    """
    out = out or sys.stdout
    plan = plan_sweep(cfg, resume=resume, storage_path=storage_path, tracking_uri=tracking_uri, out=out)
    tracker = open_parent_run(cfg, plan, out=out)
    try:
        result = run_stages(
            cfg,
            plan,
            tracker,
            stages_of(cfg),
            run_fn=run_fn,
            prepared=prepared,
            verbose=verbose,
            retry_failed=retry_failed,
            out=out,
        )
        result.verdict = judge(tracker, out)
        tracker.log_cost_totals()
    except BaseException as exc:
        tracker.finish_parent("KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED", reason=repr(exc))
        raise
    tracker.finish_parent("FINISHED")
    print_summary(cfg, result, out)
    return result


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


# --------------------------------------------------------------------------- the command


class SocketPathError(ValueError):
    """The temporary folder's path is too long for Ray's Unix sockets: named, with the fix."""


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


def gpu_shortfall(gpu: float, nodes: list[dict[str, Any]]) -> str | None:
    """One line when no live node of a cluster holds the GPUs a trial asks for (trials would wait until one joins,
    if the autoscaler can add one at all); None when one does, or when no GPU is asked for.

    >>> gpu_shortfall(2, [{"Alive": True, "Resources": {"CPU": 8.0, "GPU": 1.0}}])[:44]
    'resources.gpu = 2: no node of this cluster h'
    """
    if gpu <= 0:
        return None
    most = max((n.get("Resources", {}).get("GPU", 0.0) for n in nodes if n.get("Alive")), default=0.0)
    if gpu <= most:
        return None
    return (
        f"resources.gpu = {gpu:g}: no node of this cluster holds more than {most:g} GPU(s) now; trials wait until "
        "the autoscaler adds a node that does (give a share of one GPU, e.g. 0.25, to run on these)"
    )


def _nodes() -> list[dict[str, Any]]:
    import ray

    return list(ray.nodes())


def sweep_command(args: argparse.Namespace) -> int:
    """`pclc sweep CONFIG [--resume] [--address A] [--tracking-uri U] [--storage-path P] [--smoke-test]`."""
    # every config error is raised here, before Ray starts
    cfg = read_sweep_file(args.config, getattr(args, "set", None), smoke=getattr(args, "smoke_test", False))
    tracking_uri = args.tracking_uri
    if tracking_uri:
        from pclc.contract import normalize_tracking_uri

        tracking_uri = normalize_tracking_uri(tracking_uri)

    check_storage(storage_root(cfg, args.storage_path))  # before Ray starts
    with ray_session(args.address):
        set_tune_environment()
        if args.address and (said := gpu_shortfall(cfg.resources.gpu, _nodes())):
            print(f"pclc sweep: warning: {said}", file=sys.stderr)
        result = run_sweep(
            cfg,
            resume=args.resume,
            storage_path=args.storage_path,
            tracking_uri=tracking_uri,
            retry_failed=getattr(args, "retry_failed", False),
        )
    return 1 if result.trials and len(result.failed) == len(result.trials) else 0
