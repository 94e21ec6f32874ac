"""The stages of a sweep: each says which trials it runs, on which seeds, and how its results feed the next.

A sweep is an ordered list of stages (`stages_of`): the search (Optuna's, or the ablation's grid), then, in
optimize mode, the confirmation (the search's best and the references, re-trained on fresh seeds). Each
stage runs as its own Tune experiment (`<storage>/<name><suffix>`), resumed on its own, its trials tracked
under the sweep's one parent run with the tag `pclc.phase` = its `phase`. A new stage is one `Stage`
subclass here (plus its phase in `pclc.contract` if its runs are tagged apart).

For example, a look of a sequential confirmation (`confirm: {looks: [3, 6, 10]}`) is a stage whose `trials`
computes the verdict so far (`analysis.verdict.verdict_for_parent`, from `before`'s tracking ids), returns the arms
still in an undecided comparison × the look's new seeds (None when all are decided), and `merge` adds its runs
to `confirmed`; its own suffix (`.confirm.look2`, …) and `on_resume` check make a kill between looks resume at
the right look.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, TextIO

from pclc import contract as C
from pclc import metrics as M
from pclc.config import ConfigError
from sweeps.config import LABELS, SweepConfig, resolved_yaml
from sweeps.plan import SweepPlan
from sweeps.result import SweepResult
from sweeps.storage import CONFIG_COPY, experiment_path, write_local
from sweeps.summary import best_rows
from sweeps.tracking import SweepTracker, TrialOutcome, failure_reason, run_phase
from sweeps.trainable import GRID_KEY, VARIANT, RunTrial
from sweeps.tune_state import has_snapshot
from sweeps.tuner import StageTrials, build_tuner, fit, grid_of, sweep_search


class Stage:
    """One part of a sweep, run as its own Tune experiment under the sweep's parent run."""

    phase: str  # the tag `pclc.phase` of its runs (C.PHASE), and its name
    suffix: str  # its Tune experiment is <storage>/<sweep name><suffix>; "" for the sweep's own folder
    look_tag: str = ""  # tag C.LOOK of its runs, for a phase run as several Tune experiments (its later looks)

    def trials(self, cfg: SweepConfig, before: SweepResult | None) -> StageTrials | None:
        """What it runs, given the stages before it (None: it is the first); None to skip it."""
        raise NotImplementedError

    def on_resume(self, exp_path: str, trials: StageTrials, out: TextIO) -> None:
        """Its stored experiment is about to be continued: refuse one started for other trials."""

    def announce(self, cfg: SweepConfig, trials: StageTrials, out: TextIO) -> None:
        """The line printed before it runs."""

    def record(self, cfg: SweepConfig, exp_path: str, trials: StageTrials) -> None:
        """The files a later resume of a freshly started experiment checks."""

    def merge(self, before: SweepResult | None, done: SweepResult) -> SweepResult:
        """The sweep's result with this stage's outcome added (the first stage's result is the sweep's)."""
        return done


class SearchStage(Stage):
    """The search: Optuna TPE over the space (optimize) or the grid of variants × seeds (ablation), with ASHA
    if the file asks; in the sweep's own folder, which the parent run is keyed by (`sweeps.plan`)."""

    phase, suffix = C.PHASE_SEARCH, ""

    def trials(self, cfg: SweepConfig, before: SweepResult | None) -> StageTrials:
        return StageTrials(
            base=cfg.trial,
            searched=tuple(cfg.space) if cfg.mode == "optimize" else _varied(cfg),
            total=len(cfg.trial_overrides(cfg.look_seeds(0)))
            if cfg.mode == "ablation"
            else cfg.total_trials(confirmation=False),
            search=lambda: sweep_search(cfg),
            checkpoint_epochs=cfg.rung_epochs(),
        )

    def record(self, cfg: SweepConfig, exp_path: str, trials: StageTrials) -> None:
        write_local(exp_path, CONFIG_COPY, resolved_yaml(cfg))  # a resume refuses a changed file (`sweeps.plan`)


CONFIRM_SUFFIX = ".confirm"  # the confirmation's Tune experiment: <root>/<name>.confirm, beside the search's
CONFIRM_ARMS = "confirm_arms.json"  # in that folder: the arms it was started with, checked on resume


class ConfirmStage(Stage):
    """Optimize mode: the search's top configurations and the references × fresh seeds, as a grid (no search,
    no scheduler), AutoAttack on every evaluated sample (`cfg.confirm_trial()`)."""

    phase, suffix = C.PHASE_CONFIRM, CONFIRM_SUFFIX

    arms: list[dict[str, Any]] | None = None  # what it ran: the later looks add seeds to some of these

    def trials(self, cfg: SweepConfig, before: SweepResult | None) -> StageTrials | None:
        finished = before.finished if before is not None else []
        arms = cfg.confirm_overrides(best_rows(cfg, finished, top=len(finished)))
        self.arms = arms
        if not arms:
            return None
        return StageTrials(
            base=cfg.confirm_trial(),
            searched=_varied(cfg, arms),
            total=len(arms),
            search=lambda: grid_of(arms),
            arms=arms,
        )

    def on_resume(self, exp_path: str, trials: StageTrials, out: TextIO) -> None:
        """Continued only if it was started for the same arms (a search run anew can rank differently: an old
        confirmation must not be taken for its own)."""
        stored = Path(exp_path) / CONFIRM_ARMS
        if "://" not in exp_path and stored.is_file() and json.loads(stored.read_text()) != trials.arms:
            raise ConfigError(
                f"the confirmation at {exp_path} was started for other configurations than this search ranks "
                f"best now; delete {exp_path} to confirm these ones"
            )
        print(f"pclc sweep: resuming the confirmation at {exp_path}", file=out)

    def announce(self, cfg: SweepConfig, trials: StageTrials, out: TextIO) -> None:
        arms = trials.arms or []
        configs = len(arms) // max(1, len(cfg.confirm_seeds()))
        print(
            f"pclc sweep: confirming {configs} configurations (the search's best and the references) on fresh "
            f"seeds {cfg.confirm_seeds()}, AutoAttack on all {cfg.trial.eval_limit} evaluated samples: "
            f"{len(arms)} trials",
            file=out,
        )

    def record(self, cfg: SweepConfig, exp_path: str, trials: StageTrials) -> None:
        write_local(exp_path, CONFIRM_ARMS, json.dumps(trials.arms))

    def merge(self, before: SweepResult | None, done: SweepResult) -> SweepResult:
        assert before is not None, "the confirmation follows the search"
        before.trials.update(done.trials)
        before.confirmed = done.finished
        before.stopped_early += done.stopped_early
        return before


class LookStage(Stage):
    """A later look of a sequential design (`confirm.looks`, or an ablation's `looks`): the verdict so far, judged
    at the design's boundaries (`analysis.sequential`), stops the decided comparisons; the arms still in an open
    one get this look's seeds (`cfg.look_seeds`). Its own Tune experiment (`.confirm.look2`, or `.look2` beside an
    ablation's grid): a kill between looks resumes at the right look, because where the sweep stands is read back
    from MLflow, never kept in the driver."""

    def __init__(self, look: int, first: ConfirmStage | SearchStage) -> None:
        # 0-based; the first look is the stage `first`: the confirmation, or an ablation's grid (its search)
        self.look, self.first = look, first
        self.phase = first.phase
        self.suffix = f"{first.suffix}.look{look + 1}"
        self.look_tag = str(look + 1)  # tag C.LOOK of its runs: its reconcile leaves the other looks' alone
        self.note = ""

    def _arms(self, cfg: SweepConfig) -> list[dict[str, Any]]:
        """The first look's arms, one override per trial: the confirmation's, or the ablation's grid."""
        return (self.first.arms or []) if isinstance(self.first, ConfirmStage) else cfg.trial_overrides()

    def trials(self, cfg: SweepConfig, before: SweepResult | None) -> StageTrials | None:
        configs = {a[VARIANT]: a for a in self._arms(cfg)}  # one per configuration (any seed)
        if before is None or not configs:
            return None
        stored = Path(experiment_path(str(Path(before.experiment_path).parent), cfg.name + self.suffix)) / CONFIRM_ARMS
        if stored.is_file():  # this look was started: the same trials, whatever the verdict says now
            arms = json.loads(stored.read_text())
        else:
            state = _progress(before, looks_run=self.look)
            if state is None or state.next_look != self.look:
                return None  # every comparison decided (or waiting on trials that failed)
            open_ = state.arms_next()
            seeds = cfg.look_seeds(self.look)
            arms = [{**a, "seed": seed} for name, a in configs.items() if name in open_ for seed in seeds]
            self.note = state.summary()
        if not arms:
            return None
        return StageTrials(
            base=cfg.confirm_trial() if isinstance(self.first, ConfirmStage) else cfg.trial,
            searched=_varied(cfg, arms),
            total=len(arms),
            search=lambda: grid_of(arms),
            arms=arms,
        )

    def on_resume(self, exp_path: str, trials: StageTrials, out: TextIO) -> None:
        print(f"pclc sweep: resuming look {self.look + 1} at {exp_path}", file=out)

    def announce(self, cfg: SweepConfig, trials: StageTrials, out: TextIO) -> None:
        arms = trials.arms or []
        configs = sorted({a[VARIANT] for a in arms})
        seeds = sorted({a["seed"] for a in arms})
        if self.note:
            print(f"pclc sweep: {self.note}", file=out)
        print(
            f"pclc sweep: look {self.look + 1} of {len(cfg.look_sizes())}: {', '.join(configs)} (in a comparison still "
            f"open) on seeds {seeds}: {len(arms)} trials",
            file=out,
        )

    def record(self, cfg: SweepConfig, exp_path: str, trials: StageTrials) -> None:
        write_local(exp_path, CONFIRM_ARMS, json.dumps(trials.arms))

    def merge(self, before: SweepResult | None, done: SweepResult) -> SweepResult:
        assert before is not None, "a look follows the first one"
        before.trials.update(done.trials)
        if isinstance(self.first, ConfirmStage):
            before.confirmed = before.confirmed + done.finished
        else:  # an ablation's grid: its rows, and its best, hold every look's
            before.finished = before.finished + done.finished
        before.stopped_early += done.stopped_early
        return before


def _progress(result: SweepResult, *, looks_run: int) -> Any:
    """Where the sequential confirmation stands, read back from MLflow (`analysis.sequential.Progress`)."""
    from mlflow import MlflowClient

    from analysis.verdict import verdict_for_parent

    client = MlflowClient(result.tracking_uri)
    found = verdict_for_parent(
        client, result.experiment_id, result.parent_run_id, tracking_uri=result.tracking_uri, looks_run=looks_run
    )
    return found.progress


def stages_of(cfg: SweepConfig) -> list[Stage]:
    """The sweep's stages, in order (a stage with nothing to run skips itself): the search, the confirmation
    (its first look) and, with `confirm.looks`, each later look; an ablation's grid is its own first look, and
    with `looks` each later one follows it."""
    search = SearchStage()
    first: ConfirmStage | SearchStage = search if cfg.mode == "ablation" else ConfirmStage()
    stages: list[Stage] = [search] if first is search else [search, first]
    return stages + [LookStage(i, first) for i in range(1, len(cfg.look_sizes()))]


def run_stages(
    cfg: SweepConfig,
    plan: SweepPlan,
    tracker: SweepTracker,
    stages: list[Stage],
    *,
    run_fn: RunTrial | None = None,
    prepared: Any = None,
    verbose: int = 0,
    retry_failed: bool = False,
    out: TextIO,
) -> SweepResult:
    """Each stage in turn, its outcome handed to the next; the sweep's result."""
    result: SweepResult | None = None
    for stage in stages:
        trials = stage.trials(cfg, result)
        if trials is None:
            continue
        first = result is None  # the caller's prepared data and --retry-failed are the search's (as before stages)
        splan = stage_plan(cfg, plan, stage, trials, out=out)
        stracker = _tracker_for(tracker, stage.phase, stage.look_tag)
        stage.announce(cfg, trials, out)
        tuner = build_tuner(
            cfg,
            splan,
            stracker.target,
            trials,
            run_fn=run_fn,
            prepared=prepared if first else None,
            verbose=verbose,
            retry_failed=retry_failed and first,
            out=out,
        )
        if not splan.restorable:
            stage.record(cfg, splan.experiment_path, trials)
        result = stage.merge(result, collect(cfg, fit(tuner, splan), stracker, splan, trials))
    assert result is not None, "the search always runs"
    return result


def stage_plan(cfg: SweepConfig, plan: SweepPlan, stage: Stage, trials: StageTrials, *, out: TextIO) -> SweepPlan:
    """Where `stage` runs: the sweep's own folder (planned before the parent run, `sweeps.plan.plan_sweep`), or
    its own Tune experiment beside it, continued if it holds a snapshot and the stage agrees."""
    if stage.suffix == "":
        return plan
    exp_path = experiment_path(plan.root, cfg.name + stage.suffix)
    restorable = has_snapshot(exp_path)
    if restorable:
        stage.on_resume(exp_path, trials, out)
    return SweepPlan(plan.root, exp_path, plan.tracking_uri, restorable, phase=stage.phase)


def _tracker_for(tracker: SweepTracker, phase: str, look: str = "") -> SweepTracker:
    """The parent run's tracker, speaking for the runs of `phase` (and of one later look of it)."""
    if phase == tracker.phase and look == tracker.look:
        return tracker
    staged = SweepTracker(tracker.tracking_uri, phase=phase, look=look)
    staged.experiment_id, staged.parent_run_id = tracker.experiment_id, tracker.parent_run_id
    return staged


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


def collect(cfg: SweepConfig, grid: Any, tracker: SweepTracker, plan: SweepPlan, trials: StageTrials) -> SweepResult:
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
            params: dict[str, Any] | None = trials.trial_config(sampled).to_dict()
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
    stopped = sum(  # this stage's own: each stage adds its count to the sweep's (the search's ASHA stops once)
        1
        for r in tracker.child_runs()
        if r.data.tags.get(C.STOPPED_EARLY) == "true"
        and run_phase(r) == tracker.phase
        and r.data.tags.get(C.LOOK, "") == tracker.look
    )
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
