"""The sweep file: one typed, validated model (`SweepConfig`) read by one loader.

A sweep file names the base trial (a `pclc.config.TrialConfig`), the objective, the mode
(`optimize` with Optuna over `space`, or `ablation`: a grid of loss `variants` × `seeds`),
resources, concurrency, scheduler and retries. Every error names the file, the field, the bad
value and what is allowed, and is raised here, before Ray starts: the loader also builds every
corner of the search space into a TrialConfig so that no sampled trial can be invalid.
No Ray import here, so `pclc sweep` refuses a bad file in well under a second.

One room (~750 lines): the schema and every check of it, which read one another (a field's check needs the
others' values). The tracking-store probe (`sweeps.preflight`), the trial's metric list (`sweeps.trial_metrics`)
and the smoke-test shrink (`sweeps.smoke`) live apart.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from pclc import metrics as M
from pclc.config import OPTIMIZATION_FIELDS, ConfigError, StrictModel, TrialConfig, parse_override, read_yaml
from pclc.contract import DEFAULT_MARGIN, normalize_tracking_uri
from pclc.knobs import AUTHORS
from pclc.redact import mask
from sweeps.preflight import TrackingStoreError, check_tracking_store, limit_problems  # noqa: F401  (re-exported)
from sweeps.smoke import SMOKE_EPOCHS, smoke_overrides
from sweeps.trial_metrics import family_eps, objective_metrics, unchecked_robust_metric  # noqa: F401  (re-exported)

# Fields a sweep may vary per trial. The rest are fixed per sweep because `prepare()` builds the
# data and the transfer substitute once from them, or because they define what is measured
# (attack suite, eps grid, eval subset): trials that differ there could not be compared.
SEARCHABLE: tuple[str, ...] = (
    "loss",
    "margin",
    "lc_weight",
    "smoothing",
    "training",  # with its budget: a training mode is a configuration like a loss (pclc.training_modes)
    "adv_eps",
    "adv_steps",
    "adv_step_size",
    "trades_beta",
    "epochs",  # with warmup_epochs: how long the configured loss trains after the CE warm-up
    "warmup_epochs",
    "reset_optimizer",
    *OPTIMIZATION_FIELDS,
    "seed",
)

# Metrics reported after every epoch: what ASHA may cut on.
EPOCH_METRICS: dict[str, Literal["max", "min"]] = {
    M.EPOCH_ROBUST_ACC: "max",
    M.CLEAN_ACC: "max",
    M.TRAIN_LOSS: "min",
}
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_ENV_RE = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::-(?P<default>[^}]*))?\}")
_MAX_CORNERS = 4096  # corner trial configs built per sweep file (cheap: pydantic only)
# The references a sweep compares with when its file names none: plain CE with the sweep's own trial
# settings and, where PC-LC is trained, the authors' ξ and λ (Li et al., AAAI-21).
CE_REFERENCE: dict[str, Any] = {"name": "ce", "loss": "ce"}
AUTHORS_REFERENCE: dict[str, Any] = {"name": "pclc-authors", "loss": "pclc", **AUTHORS}
VARIANT = "variant"  # key of a trial override (and its Tune config): the arm's label in the grid
REFERENCE = "reference"  # key of a trial override (and its Tune config) naming the reference arm it is


class SweepConfigError(ConfigError):
    """A sweep file that cannot run; the message names file, field, value and what is allowed."""


# --------------------------------------------------------------------------- parts of a sweep file


class Objective(StrictModel):
    """One metric of the final evaluation and its direction."""

    model_config = ConfigDict(extra="forbid")

    metric: str = M.ROBUST_ACC  # a DESIGN.md metric name, e.g. robust_acc or robust_acc/pgd_ce/eps=0.1
    mode: Literal["max", "min"] = "max"


class Param(StrictModel):
    """One dimension of the Optuna search space."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["uniform", "loguniform", "int", "choice"]
    low: float | None = None  # uniform, loguniform, int: inclusive bounds
    high: float | None = None
    log: bool = False  # int only: sample on a log scale
    values: list[Any] | None = None  # choice only

    @model_validator(mode="after")
    def _shape(self) -> Param:
        if self.type == "choice":
            if not self.values:
                raise ValueError("type choice needs a non-empty `values` list (and no low/high)")
            if self.low is not None or self.high is not None:
                raise ValueError("type choice takes `values`, not low/high")
            return self
        if self.values is not None:
            raise ValueError(f"type {self.type} takes low and high, not `values`")
        if self.low is None or self.high is None:
            raise ValueError(f"type {self.type} needs both low and high")
        if not self.low < self.high:
            raise ValueError(f"low {self.low} must be below high {self.high}")
        if self.type == "loguniform" and self.low <= 0:
            raise ValueError(f"loguniform needs low > 0, got {self.low}")
        if self.type == "int":
            if self.low != int(self.low) or self.high != int(self.high):
                raise ValueError(f"type int needs whole-number bounds, got {self.low}..{self.high}")
            if self.log and self.low < 1:
                raise ValueError(f"int with log: true needs low >= 1, got {self.low}")
        elif self.log:
            raise ValueError("`log` is for type int; use type loguniform for floats")
        return self

    def corners(self) -> list[Any]:
        """The values that bound what this dimension can produce (every choice, both ends)."""
        if self.type == "choice":
            return list(self.values or [])
        if self.type == "int":
            return [int(self.low), int(self.high)]  # type: ignore[arg-type]
        return [self.low, self.high]

    def contains(self, value: Any) -> bool:
        if self.type == "choice":
            return value in (self.values or [])
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if self.type == "int" and value != int(value):
            return False
        return self.low <= value <= self.high  # type: ignore[operator]

    def describe(self) -> str:
        if self.type == "choice":
            return f"one of {self.values}"
        return f"{self.type} in [{self.low:g}, {self.high:g}]"


class Resources(StrictModel):
    """What one trial reserves from Ray: CPUs (also its torch threads) and a GPU share."""

    model_config = ConfigDict(extra="forbid")

    cpu: float = Field(1.0, gt=0)  # CPUs per trial; torch threads = max(1, floor(cpu))
    gpu: float = Field(0.0, ge=0)  # GPUs per trial; a fraction (0.25) packs 4 trials on one GPU

    @field_validator("gpu")
    @classmethod
    def _whole_above_one(cls, v: float) -> float:
        if v > 1 and v != int(v):
            raise ValueError(f"gpu {v}: above 1 a trial takes whole GPUs; use a fraction ≤ 1 or an integer")
        return v


class Scheduler(StrictModel):
    """Early stopping across trials: ASHA on a per-epoch metric, or none."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["none", "asha"] = "none"
    metric: str = M.EPOCH_ROBUST_ACC  # a per-epoch metric: epoch_robust_acc, clean_acc or train_loss
    grace_period: int = Field(2, ge=1)  # epochs every trial gets before it can be stopped
    reduction_factor: float = Field(2.0, gt=1)  # keep 1/reduction_factor of trials at each rung

    @field_validator("metric")
    @classmethod
    def _per_epoch(cls, v: str) -> str:
        if v not in EPOCH_METRICS:
            raise ValueError(f"{v!r} is not reported every epoch; choose one of {list(EPOCH_METRICS)}")
        return v

    @property
    def mode(self) -> Literal["max", "min"]:
        return EPOCH_METRICS[self.metric]


class Confirm(StrictModel):
    """Optimize mode: after the search, the top configurations and the references are re-trained on
    fresh seeds and scored with AutoAttack on the whole evaluation set. A one-seed search on a subset
    ranks noise (its winner is biased upward); the printed best and the verdict come from these runs."""

    model_config = ConfigDict(extra="forbid")

    top: int = Field(2, ge=0)  # distinct configurations confirmed, best first (0: no confirmation)
    seeds: list[int] | None = (
        None  # fresh seeds, none used by the search; default: the 3 (or looks[-1]) after trial.seed
    )
    # a pre-planned sequential confirmation: cumulative seeds per arm at each look, e.g. [3, 6, 10]. After each look
    # the verdict judges every comparison at that look's boundary (O'Brien–Fleming spending, analysis.spending);
    # decided ones stop, the arms of the others get the next look's seeds. None: one look on every seed.
    looks: list[int] | None = None


class VerdictSettings(StrictModel):
    """How the verdict decides (analysis.compare): a comparison whose simultaneous interval lies inside
    (−margin, +margin) is *equivalent within ±margin*; the margin is in the headline's units (accuracy: 0.03 is
    3 points) and is the smallest difference that matters, chosen before looking."""

    model_config = ConfigDict(extra="forbid")

    margin: float = Field(DEFAULT_MARGIN, gt=0.0, lt=1.0)
    # what a claim is about: these evaluated test samples (seed-to-seed spread only), or the test distribution
    # (adds a crossed seed × sample term from the per-sample outcomes: wider, about data the sweep never scored)
    population: Literal["samples", "distribution"] = "samples"


# --------------------------------------------------------------------------- the sweep file


class SweepConfig(StrictModel):
    """A whole sweep: the base trial, what varies, what is optimised, and how it runs."""

    model_config = ConfigDict(extra="forbid")

    name: str  # MLflow experiment and Ray experiment folder; letters, digits, _ . -
    description: str = ""
    mode: Literal["optimize", "ablation"] = "optimize"
    trial: TrialConfig = Field(default_factory=TrialConfig)  # the base trial; the sweep varies some fields

    # what is optimised: one metric, or several (a Pareto front, e.g. clean_acc and robust_acc)
    objective: list[Objective] = Field(default_factory=lambda: [Objective()])

    # mode optimize: Optuna TPE over `space`, starting with `initial_points`
    space: dict[str, Param] = Field(default_factory=dict)
    initial_points: list[dict[str, Any]] = Field(default_factory=list)  # evaluated first, in order
    num_trials: int | None = Field(None, ge=1)  # optimize: required; ablation: the grid's size
    sampler_seed: int = 0  # seed of the TPE sampler

    # mode ablation: each variant is {loss: name, field: value or [values]} → its grid, × seeds
    variants: list[dict[str, Any]] = Field(default_factory=list)
    seeds: list[int] = Field(default_factory=lambda: [0])
    # ablation's sequential design: cumulative seeds per arm at each look, taken from `seeds` in order, e.g. [3, 6, 10]:
    # the grid runs on the first looks[0]; after each look the verdict stops the decided comparisons and only the
    # arms of the open ones get the next look's seeds (optimize mode: confirm.looks)
    looks: list[int] | None = None

    # the verdict: every configuration is compared with these arms, trained on the same seeds and scored on
    # the same samples; each is {name, field: value} over searchable fields. None: CE, plus the authors'
    # ξ 0.995 λ 0.05 where the sweep trains PC-LC; [] for no reference (the sweep then ranks, it does not judge)
    reference: list[dict[str, Any]] | None = None
    confirm: Confirm = Field(default_factory=Confirm)
    verdict: VerdictSettings = Field(default_factory=VerdictSettings)

    # execution
    resources: Resources = Field(default_factory=Resources)
    max_concurrent: int = Field(2, ge=1)  # trials running at once (also bounds Optuna's pending asks)
    scheduler: Scheduler = Field(default_factory=Scheduler)
    max_retries: int = Field(1, ge=0)  # re-runs of a failed trial (from its last checkpoint)
    storage_path: str | None = None  # Ray results (absolute path or URI); default <cwd>/ray_results
    tracking_uri: str | None = None  # MLflow; default sqlite:///<cwd>/mlflow.db

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _NAME_RE.match(v):
            raise ValueError("use letters, digits, '_', '.' and '-' only (it names a folder)")
        return v

    @field_validator("objective", mode="before")
    @classmethod
    def _objective_shorthand(cls, v: Any) -> Any:
        # `objective: robust_acc` or a list of names / {metric, mode} mappings.
        items = v if isinstance(v, list) else [v]
        return [{"metric": x} if isinstance(x, str) else x for x in items]

    @field_validator("scheduler", mode="before")
    @classmethod
    def _scheduler_shorthand(cls, v: Any) -> Any:
        if v is None:
            return {"type": "none"}
        return {"type": v} if isinstance(v, str) else v

    @field_validator("storage_path")
    @classmethod
    def _absolute_storage(cls, v: str | None) -> str | None:
        if v is None or "://" in v:
            return v
        return str(Path(v).expanduser().resolve())

    @field_validator("tracking_uri")
    @classmethod
    def _tracking(cls, v: str | None) -> str | None:
        return None if v is None else normalize_tracking_uri(v)

    # ----------------------------------------------------------------- derived views

    def asha_max_t(self) -> int:
        """ASHA's max_t: the most epochs less one (the last rung lies before the final epoch), at least the grace."""
        return max(self.epoch_range()[1] - 1, self.scheduler.grace_period)

    def rung_epochs(self) -> tuple[int, ...]:
        """The epochs at which ASHA compares trials (its rungs, as Ray's one bracket lays them out): trials report
        a checkpoint and compute the per-epoch signal there, whatever their `checkpoint_every` and cadence."""
        s = self.scheduler
        if s.type == "none":
            return ()
        rungs = int(math.log(self.asha_max_t() / s.grace_period) / math.log(s.reduction_factor) + 1)
        return tuple(sorted({math.ceil(s.grace_period * s.reduction_factor**k) for k in range(rungs)}))

    def epoch_range(self) -> tuple[int, int]:
        """The fewest and the most epochs a trial of this sweep trains (`epochs` may be searched or varied)."""
        values = [self.trial.epochs]
        if "epochs" in self.space:
            values = [int(v) for v in self.space["epochs"].corners()]
        for v in [*self.variants, *(self.reference or [])]:
            if "epochs" in v:
                values += [int(e) for e in _as_grid("epochs", v["epochs"])]
        return min(values), max(values)

    @property
    def multi_objective(self) -> bool:
        return len(self.objective) > 1

    @property
    def headline_metric(self) -> str:
        """The metric a sweep is judged by: its first robust-accuracy objective, else its first objective."""
        robust = [o.metric for o in self.objective if o.metric.startswith(M.ROBUST_ACC)]
        return (robust or [self.objective[0].metric])[0]

    def references(self) -> list[dict[str, Any]]:
        """The reference arms, each {name, field: value}: the file's, or the default (see `reference`)."""
        if self.reference is not None:
            return [{"name": str(r.get("name") or _arm_name(r)), **r} for r in self.reference]
        losses = {self.trial.loss, *(v.get("loss") for v in self.variants)}
        if "loss" in self.space:
            losses |= set(self.space["loss"].values or [])
        return [dict(CE_REFERENCE)] + ([dict(AUTHORS_REFERENCE)] if "pclc" in losses else [])

    def reference_arms(self) -> list[tuple[str, dict[str, Any]]]:
        """(name, fields) of each reference: the overrides that train it, its name apart."""
        return [(r["name"], {k: v for k, v in r.items() if k != "name"}) for r in self.references()]

    def same_arm(self, a: dict[str, Any], b: dict[str, Any]) -> bool:
        """Two override dicts train the same configuration (whatever their seeds and labels); an invalid one
        trains nothing, so it matches nothing (the checks name it)."""
        try:
            return _without_seed(self.trial_config(a)) == _without_seed(self.trial_config(b))
        except ValidationError:
            return False

    def trial_overrides(self, seeds: list[int] | None = None) -> list[dict[str, Any]]:
        """Ablation: one override dict per trial (variant grid × `seeds`, all of them by default), with a
        `variant` label; a grid point that trains a reference carries its name under `reference`, and a reference
        the grid lacks is added as a variant of its own, on the same seeds. With `looks`, each grid point of a
        variant holding several is labelled apart ('pclc (margin=0.9)'): a look adds seeds to one arm."""
        seeds = list(self.seeds) if seeds is None else seeds
        out: list[dict[str, Any]] = []
        for variant in self.variants:
            label = str(variant.get("name") or variant.get("loss", "variant"))
            fields = {k: v for k, v in variant.items() if k != "name"}
            keys = list(fields)
            grids = [_as_grid(k, fields[k]) for k in keys]
            combos = list(itertools.product(*grids))
            for combo in combos:
                values = dict(zip(keys, combo))
                varied = {k: v for k, v, g in zip(keys, combo, grids) if len(g) > 1}
                named = f"{label} ({_arm_name(varied)})" if self.looks and len(combos) > 1 else label
                for seed in seeds:
                    out.append({VARIANT: named, **values, "seed": seed})
        for name, fields in self.reference_arms():
            matches = [o for o in out if REFERENCE not in o and self.same_arm(o, fields)]
            for o in matches:
                o[REFERENCE] = name
            if not matches:
                out += [{VARIANT: name, **fields, "seed": seed, REFERENCE: name} for seed in seeds]
        return out

    def planned_seeds(self) -> list[int]:
        """Every seed the verdict's arms may use, in the order the looks take them: an ablation's `seeds`, or the
        confirmation's fresh ones."""
        if self.mode == "ablation":
            return list(self.seeds)
        if self.confirm.seeds is not None:
            return list(self.confirm.seeds)
        count = self.confirm.looks[-1] if self.confirm.looks else 3
        return [self.trial.seed + i for i in range(1, count + 1)]

    def sequential(self) -> bool:
        """Whether the verdict's seeds come in looks (`confirm.looks`, or an ablation's `looks`)."""
        return bool(self.looks if self.mode == "ablation" else self.confirm.looks)

    def look_sizes(self) -> tuple[int, ...]:
        """Cumulative seeds per arm at each look (one look on every seed by default): an ablation's grid, or the
        confirmation."""
        given = self.looks if self.mode == "ablation" else self.confirm.looks
        return tuple(given) if given else (len(self.planned_seeds()),)

    def look_seeds(self, look: int) -> list[int]:
        """The seeds look `look` (0-based) adds to the arms it runs: the first look's are `confirm_seeds()` (or the
        ablation grid's first seeds)."""
        looks = self.look_sizes()
        return self.planned_seeds()[(looks[look - 1] if look else 0) : looks[look]]

    def confirm_seeds(self) -> list[int]:
        """The fresh seeds of the confirmation's first look (all of them without `confirm.looks`)."""
        return self.look_seeds(0)

    def confirm_overrides(self, ranked: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Optimize: the confirmation grid, (top configurations + references) × fresh seeds.

        `ranked` holds the search's finished trials, best first, each its sampled values and `trial_id`.
        A configuration that is a reference (the authors' initial point, say) is confirmed once, as the
        reference; labels: `search #k` (k its rank among distinct configurations), or the reference's name.
        """
        if self.mode != "optimize" or self.confirm.top == 0:
            return []
        refs = self.reference_arms()
        arms: list[tuple[dict[str, Any], dict[str, Any]]] = []  # (overrides, labels)
        for row in ranked:
            values = {k: row[k] for k in self.space if k in row}
            if any(self.same_arm(values, a) for a, _ in arms):
                continue
            label = {VARIANT: f"search #{len(arms) + 1}", SEARCH_TRIAL: row["trial_id"]}
            for name, fields in refs:
                if self.same_arm(values, fields):
                    label[REFERENCE] = name
            arms.append((values, label))
            if len(arms) == self.confirm.top:
                break
        for name, fields in refs:
            if not any(label.get(REFERENCE) == name for _, label in arms):
                arms.append((fields, {VARIANT: name, REFERENCE: name}))
        return [{**label, **values, "seed": seed} for values, label in arms for seed in self.confirm_seeds()]

    def total_trials(self, *, confirmation: bool = True) -> int:
        """Trials the sweep runs: the grid, or the search and (at most) its confirmation, the top
        configurations and the references on each fresh seed."""
        if self.mode == "ablation":
            return len(self.trial_overrides())
        arms = self.confirm.top + len(self.references()) if self.confirm.top and confirmation else 0
        return int(self.num_trials or 0) + arms * self.look_sizes()[-1]  # every look run: early stops run fewer

    def full_initial_points(self) -> list[dict[str, Any]]:
        """Initial points with every space dimension set (missing ones from the base trial)."""
        base = self.trial.model_dump()
        return [{k: point.get(k, base[k]) for k in self.space} for point in self.initial_points]

    def trial_config(self, overrides: dict[str, Any], *, confirmation: bool = False) -> TrialConfig:
        """The TrialConfig of one trial: the base trial (the confirmation's, if asked) with `overrides`
        applied (labels left out)."""
        return with_overrides(self.confirm_trial() if confirmation else self.trial, overrides)

    def confirm_trial(self) -> TrialConfig:
        """The base trial of the confirmation runs: AutoAttack on every evaluated sample, not a subset."""
        return self.trial.model_copy(update={"aa_limit": None})


SEARCH_TRIAL = "search_trial"  # key of a confirmation override: the search trial it re-trains
LABELS = (VARIANT, REFERENCE, SEARCH_TRIAL)  # keys of a trial override that label it, not TrialConfig fields


def with_overrides(base: TrialConfig, overrides: dict[str, Any]) -> TrialConfig:
    """`base` with a trial's `overrides` applied (its labels left out): the TrialConfig that trial trains."""
    return TrialConfig(**{**base.model_dump(), **{k: v for k, v in overrides.items() if k not in LABELS}})


def _without_seed(cfg: TrialConfig) -> dict[str, Any]:
    return {k: v for k, v in cfg.model_dump().items() if k != "seed"}


def _arm_name(fields: dict[str, Any]) -> str:
    return " ".join(f"{k}={v}" for k, v in fields.items())


def _as_grid(key: str, value: Any) -> list[Any]:
    # `milestones` is itself a list: a list of lists is its grid; a flat list is one value.
    if key == "milestones":
        return list(value) if value and isinstance(value[0], list) else [value]
    return list(value) if isinstance(value, list) else [value]


# --------------------------------------------------------------------------- cross-field checks


def _problems(cfg: SweepConfig) -> list[str]:
    """Everything wrong with a parsed sweep that one field alone cannot say, as `field = value: why`."""
    out: list[str] = []
    allowed_metrics = objective_metrics(cfg.trial)
    for i, obj in enumerate(cfg.objective):
        obj.metric = M.canonical_metric(obj.metric)
        if obj.metric not in allowed_metrics:
            out.append(
                f"objective[{i}].metric = {obj.metric!r}: not reported by this trial's attack suite; "
                f"allowed: {', '.join(allowed_metrics)}"
            )
        elif (why := unchecked_robust_metric(obj.metric, cfg.trial)) is not None:
            out.append(
                f"objective[{i}].metric = {obj.metric!r}: a sweep must not optimise a robustness number that "
                f"AutoAttack-grade attacks have not checked ({why}); add autoattack (or apgd_ce, apgd_t, …) to "
                "trial.attacks at that eps, or optimise robust_acc"
            )
    metrics = [o.metric for o in cfg.objective]
    if len(set(metrics)) != len(metrics):
        out.append(f"objective = {metrics}: a metric is listed twice")

    searchable = ", ".join(SEARCHABLE)
    if cfg.mode == "optimize":
        if not cfg.space:
            out.append(f"space = {{}}: mode optimize needs at least one parameter; searchable: {searchable}")
        if cfg.num_trials is None:
            out.append("num_trials is missing: mode optimize needs the number of trials Optuna runs")
        if cfg.variants:
            out.append("variants: only for mode ablation (mode optimize searches `space`)")
        for key in cfg.space:
            if key not in SEARCHABLE:
                out.append(f"space.{key}: not searchable (fixed for the whole sweep); searchable: {searchable}")
        for i, point in enumerate(cfg.initial_points):
            for key, value in point.items():
                if key not in cfg.space:
                    out.append(f"initial_points[{i}].{key}: not in `space`; allowed: {', '.join(cfg.space)}")
                elif not cfg.space[key].contains(value):
                    out.append(f"initial_points[{i}].{key} = {value!r}: outside the space, {cfg.space[key].describe()}")
        if not out and cfg.num_trials is not None and len(cfg.initial_points) > cfg.num_trials:
            out.append(f"initial_points: {len(cfg.initial_points)} points but num_trials = {cfg.num_trials}")
        base = cfg.trial.model_dump()
        for key, param in cfg.space.items():
            given = any(key in p for p in cfg.initial_points)
            if key in SEARCHABLE and not given and cfg.initial_points and not param.contains(base[key]):
                out.append(
                    f"initial_points: `{key}` is not given and the base trial's {key} = {base[key]!r} "
                    f"is outside the space ({param.describe()}); set it in each initial point"
                )
    else:
        if not cfg.variants:
            out.append(
                "variants = []: mode ablation needs at least one variant, e.g. {loss: pclc, margin: [0.99, 0.995]}"
            )
        if cfg.space or cfg.initial_points:
            out.append("space / initial_points: only for mode optimize (mode ablation runs `variants` × `seeds`)")
        if cfg.scheduler.type != "none":
            out.append(
                f"scheduler.type = {cfg.scheduler.type!r}: an ablation runs every grid point to the end; use none"
            )
        if not cfg.seeds or len(set(cfg.seeds)) != len(cfg.seeds):
            out.append(f"seeds = {cfg.seeds}: give one or more distinct integers")
        for i, variant in enumerate(cfg.variants):
            if "loss" not in variant:
                out.append(f"variants[{i}]: needs `loss`; one of ce, pc, pclc, lc")
            for key, value in variant.items():
                if key != "name" and key not in SEARCHABLE:
                    out.append(f"variants[{i}].{key}: not variable per trial; allowed: name, {searchable}")
                if key == "seed":
                    out.append(f"variants[{i}].seed: seeds are given once, in `seeds`")
                if isinstance(value, list) and not value:
                    out.append(f"variants[{i}].{key} = []: give at least one value")
        if not out and cfg.num_trials is not None and cfg.num_trials != cfg.total_trials():
            out.append(
                f"num_trials = {cfg.num_trials}: the ablation grid has {cfg.total_trials()} trials; drop num_trials"
            )

    out += _arm_problems(cfg)

    if cfg.scheduler.type == "asha":
        if cfg.scheduler.metric == M.EPOCH_ROBUST_ACC and cfg.trial.epoch_eval_samples == 0:
            out.append("scheduler.metric = 'epoch_robust_acc': needs trial.epoch_eval_samples > 0")
        at = cfg.trial.epoch_eval_at
        missing = sorted(set(cfg.rung_epochs()) - set(at or ()))
        if cfg.scheduler.metric == M.EPOCH_ROBUST_ACC and at is not None and missing:
            out.append(
                f"trial.epoch_eval_at = {at}: ASHA decides on epoch_robust_acc at epochs {list(cfg.rung_epochs())}, "
                f"and {missing} compute no signal; add them, or leave epoch_eval_at out (the rungs are added to the "
                f"default cadence)"
            )
        fewest = cfg.epoch_range()[0]
        if cfg.scheduler.grace_period >= fewest:
            out.append(
                f"scheduler.grace_period = {cfg.scheduler.grace_period}: must be below the fewest epochs a trial "
                f"trains ({fewest}) or ASHA never stops anything"
            )
    if cfg.resources.gpu > 0 and cfg.trial.device == "cpu":
        out.append(f"resources.gpu = {cfg.resources.gpu}: trial.device is cpu; set device: auto or cuda")
    if cfg.resources.gpu == 0 and cfg.trial.device == "cuda":
        out.append("trial.device = 'cuda' but resources.gpu = 0: Ray would give the trial no GPU")
    out += limit_problems(cfg)  # confirm.top the search cannot fill, GPUs no machine holds
    if not out:
        out += _corner_problems(cfg)
    return out


def _arm_problems(cfg: SweepConfig) -> list[str]:
    """What is wrong with the `reference` and `confirm` blocks."""
    out: list[str] = []
    searchable = ", ".join(SEARCHABLE)
    names: list[str] = []
    for i, ref in enumerate(cfg.reference or []):
        if not isinstance(ref, dict):
            out.append(f"reference[{i}] = {ref!r}: give a mapping, e.g. {{name: ce, loss: ce}}")
            continue
        for key, value in ref.items():
            if key == "seed":
                out.append(f"reference[{i}].seed: a reference runs on the sweep's own seeds")
            elif key != "name" and key not in SEARCHABLE:
                out.append(f"reference[{i}].{key}: not variable per trial; allowed: name, {searchable}")
            elif isinstance(value, list) and key != "milestones":
                out.append(f"reference[{i}].{key} = {value!r}: a reference is one configuration; give one value")
        names.append(str(ref.get("name") or _arm_name(ref)))
    if len(set(names)) != len(names):
        out.append(f"reference: names {names} must differ (each names a row of the verdict)")
    if cfg.mode == "ablation" and cfg.confirm != Confirm():
        out.append("confirm: only for mode optimize (an ablation runs every arm on `seeds` already)")
    out += _look_problems(cfg)
    if cfg.mode == "ablation":
        return out  # its seeds are checked with its variants
    seeds = cfg.planned_seeds()
    if len(set(seeds)) != len(seeds):
        out.append(f"confirm.seeds = {seeds}: give distinct integers")
    searched = {cfg.trial.seed} if "seed" not in cfg.space else set()
    if cfg.mode == "optimize" and cfg.confirm.top and (reused := sorted(searched & set(seeds))):
        out.append(
            f"confirm.seeds = {seeds}: seed {reused[0]} is the search's own (trial.seed); confirmation needs fresh seeds"
        )
    if cfg.mode == "optimize" and cfg.confirm.top and not seeds:
        out.append("confirm.seeds = []: give at least one fresh seed, or set confirm.top to 0")
    return out


def _look_problems(cfg: SweepConfig) -> list[str]:
    """What is wrong with a sequential design's looks (`confirm.looks`, or an ablation's `looks`)."""
    ablation = cfg.mode == "ablation"
    if cfg.looks is not None and not ablation:
        return ["looks: only for mode ablation (its `seeds`); an optimize sweep's confirmation takes confirm.looks"]
    looks, where = (cfg.looks, "looks") if ablation else (cfg.confirm.looks, "confirm.looks")
    seeds, seeds_at = (cfg.seeds, "seeds") if ablation else (cfg.confirm.seeds, "confirm.seeds")
    if looks is None:
        return []
    if not looks or looks[0] < 2 or any(b <= a for a, b in zip(looks, looks[1:])):
        return [
            f"{where} = {looks}: give increasing seed counts, the first at least 2 (a configuration-level "
            "verdict needs 2 seeds), e.g. [3, 6, 10]"
        ]
    if seeds is not None and seeds != sorted(seeds):
        return [f"{seeds_at} = {seeds}: with looks, give them in increasing order (each look takes the next)"]
    if seeds is not None and len(seeds) < looks[-1]:
        rest = "" if ablation else " (or leave seeds out: the ones after trial.seed)"
        return [f"{seeds_at} = {seeds}: the last look needs {looks[-1]} seeds per arm; give that many{rest}"]
    return []


def _corner_problems(cfg: SweepConfig) -> list[str]:
    """Build the TrialConfig of every reference and every corner of the space (or grid point) and report
    the first misfits (references first: the ablation grid is laid out around them)."""
    references = [(fields, f"reference ({name})") for name, fields in cfg.reference_arms()]
    out = _misfits(cfg, references)
    if out:
        return out
    if cfg.mode == "ablation":
        candidates = [(o, f"variants ({o['variant']})") for o in cfg.trial_overrides()]
    else:
        dims = {k: p.corners() for k, p in cfg.space.items()}
        n = math.prod(len(v) for v in dims.values())
        if n <= _MAX_CORNERS:
            combos = [dict(zip(dims, c)) for c in itertools.product(*dims.values())]
        else:  # too many: each dimension's ends with the others at the base trial's values
            combos = [{k: v} for k, vals in dims.items() for v in vals]
        candidates = [(c, "space") for c in combos]
        candidates += [(p, f"initial_points[{i}]") for i, p in enumerate(cfg.full_initial_points())]
    return _misfits(cfg, candidates)


def _misfits(cfg: SweepConfig, candidates: list[tuple[dict[str, Any], str]]) -> list[str]:
    """The first (at most 5) problems of building each candidate's TrialConfig, one line each."""
    out: list[str] = []
    seen: set[str] = set()
    for overrides, where in candidates:
        try:
            cfg.trial_config(overrides)
        except ValidationError as err:
            for e in err.errors():
                field = ".".join(str(p) for p in e["loc"]) or "(trial)"
                msg = e["msg"].removeprefix("Value error, ")
                line = f"{where}: the trial {_short(overrides)} is invalid: {field}: {msg}"
                if line not in seen:
                    seen.add(line)
                    out.append(line)
        if len(out) >= 5:
            break
    return out


def _short(values: dict[str, Any]) -> str:
    return "{" + ", ".join(f"{k}={v!r}" for k, v in values.items() if k not in LABELS) + "}"


# --------------------------------------------------------------------------- loading


def _expand_env(value: Any, where: str, problems: list[str]) -> Any:
    """`${VAR}` / `${VAR:-default}` in string values, so data paths can differ per machine."""
    if isinstance(value, dict):
        return {k: _expand_env(v, f"{where}.{k}" if where else str(k), problems) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand_env(v, f"{where}[{i}]", problems) for i, v in enumerate(value)]
    if not isinstance(value, str):
        return value

    def sub(m: re.Match[str]) -> str:
        got = os.environ.get(m["name"])
        if got is None:
            if m["default"] is None:
                problems.append(
                    f"{where} = {value!r}: environment variable {m['name']} is not set (or write ${{{m['name']}:-default}})"
                )
                return m[0]
            return m["default"]
        return got

    return _ENV_RE.sub(sub, value)


def _set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = data
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise SweepConfigError(f"--set {key}: {part} is not a mapping")
        node = child
    node[parts[-1]] = value


def _allowed_keys(loc: tuple[Any, ...]) -> list[str]:
    """The keys allowed at the mapping that holds `loc[-1]` (for 'unknown key' messages)."""
    model: Any = SweepConfig
    skip = 0  # path parts that are list indexes or mapping keys (e.g. the name under `space`)
    for part in loc[:-1]:
        if skip or isinstance(part, int):
            skip = max(0, skip - 1)
            continue
        field = model.model_fields.get(part) if model is not None else None
        if field is None:
            return []
        ann = field.annotation
        origin = getattr(ann, "__origin__", None)
        skip = 1 if origin in (dict, list) else 0
        model = next(
            (a for a in (ann, *getattr(ann, "__args__", ())) if isinstance(a, type) and issubclass(a, BaseModel)), None
        )
    return list(model.model_fields) if model is not None else []


def explain(err: ValidationError, source: str) -> str:
    """One line per bad field: `source: field = value: why; allowed: …`."""
    lines = [f"invalid sweep file {source}:"]
    for e in err.errors():
        loc = tuple(e["loc"])
        # pydantic reports a failing union/choice as e.g. ('space', 'margin', 'type'): keep the path.
        field = ".".join(str(p) for p in loc) or "(file)"
        if e["type"] == "extra_forbidden":
            allowed = _allowed_keys(loc)
            lines.append(f"  {field}: unknown key; allowed keys: {', '.join(allowed)}")
            continue
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "missing":
            lines.append(f"  {field}: required, missing")
        else:
            lines.append(f"  {field} = {e.get('input')!r}: {msg}")
    return mask("\n".join(lines))  # a refused URI is shown without its password


def parse_sweep(data: dict[str, Any], *, source: str = "sweep") -> SweepConfig:
    """Validate a mapping into a SweepConfig, or raise SweepConfigError naming every problem."""
    problems: list[str] = []
    data = _expand_env(data, "", problems)
    if problems:
        raise SweepConfigError(f"invalid sweep file {source}:\n  " + "\n  ".join(problems))
    try:
        cfg = SweepConfig(**data)
    except ValidationError as err:
        raise SweepConfigError(explain(err, source)) from None
    problems = _problems(cfg)
    if problems:
        raise SweepConfigError(f"invalid sweep file {source}:\n  " + "\n  ".join(problems))
    return cfg


def read_sweep_file(path: str | Path, overrides: list[str] | None = None, *, smoke: bool = False) -> SweepConfig:
    """The one loader: YAML file ← `--set key=value` (dotted keys, e.g. trial.epochs=2).

    `smoke` (`--smoke-test`) shrinks the sweep to check the plumbing; the user's `--set` still wins over
    its sizes, so `--smoke-test --set trial.epochs=6` runs 6 epochs."""
    overrides = list(overrides or [])
    if smoke:
        given = dict(parse_override(item) for item in overrides)
        epochs = int(given.get("trial.epochs", SMOKE_EPOCHS))  # a searched length follows the user's --set too
        overrides = overrides + smoke_overrides(read_sweep_file(path, overrides), epochs=epochs) + overrides
    data = read_yaml(path)
    for item in overrides:
        key, value = parse_override(item)
        _set_dotted(data, key, value)
    source = str(path) + (" (with --set)" if overrides else "")
    return parse_sweep(data, source=source)


load_sweep = read_sweep_file  # the old name (analysis.load.load_sweep reads MLflow): kept while branches merge


def resolved_yaml(cfg: SweepConfig) -> str:
    """The sweep as run (every default filled in): saved with the sweep for reproducibility, with any secret a
    `${VAR}` expanded into it masked (`pclc.redact.mask`)."""
    return mask(yaml.safe_dump(json.loads(cfg.model_dump_json()), sort_keys=False))


def shipped_configs() -> list[Path]:
    """The sweep files shipped in sweeps/configs."""
    return sorted((Path(__file__).parent / "configs").glob("*.yaml"))
