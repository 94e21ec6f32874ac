"""Before any trial: where a sweep runs and is tracked (`SweepPlan`), whether a stored experiment is continued,
and the sweep's parent run in MLflow. Every refusal (a changed sweep file, another tracking store) is made here,
before Tune starts."""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from ray import tune

from pclc import contract as C
from pclc.config import ConfigError
from sweeps.config import SweepConfig, resolved_yaml
from sweeps.storage import CONFIG_COPY, check_storage, experiment_path, read_metadata, storage_root
from sweeps.tracking import PARENT_CONFIG_ARTIFACT, SweepTracker
from sweeps.tune_state import align_search_state, has_snapshot

_IGNORED_ON_RESUME = ("storage_path", "tracking_uri")


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
        verdict={**cfg.verdict.model_dump(), **({"looks": list(cfg.look_sizes())} if cfg.sequential() else {})},
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
