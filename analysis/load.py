"""A sweep's MLflow runs as one tidy pandas table: one row per trial run, one column per param and metric.

Metric names are read back through `pclc.metrics.canonical_metric`, the inverse of the function that wrote
them, and params through `pclc.contract.parse_param`, the inverse of the writer's `param_value`. Failed, stopped and unfinished runs stay in the table with
their outcome, so they are counted and reported, never silently dropped.
"""

from __future__ import annotations

import json
import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from mlflow.entities import Run, ViewType
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from pclc import contract as C
from pclc import metrics as M
from pclc.config import TrialConfig
from pclc.contract import (
    FAILURE,
    HEADLINE,
    MODE,
    OBJECTIVE,
    PARENT,
    PHASE,
    PHASE_CONFIRM,
    PHASE_SEARCH,
    REFERENCE,
    ROLE,
    SEARCH_TRIAL,
    STOPPED_EARLY,
    TRIAL_ID,
    VARIANT,
    parse_param,
)
from pclc.losses import IGNORED_BY_LOSS  # the knobs each loss ignores
from pclc.metrics import canonical_metric
from pclc.outcomes import Outcomes, OutcomesError
from pclc.training import IGNORED_BY_TRAINING, TRAINING_MODES  # ... and those each training mode ignores

# Params that change between trials without defining a configuration: seeds, per-trial paths, resources.
NOT_CONFIG = frozenset(
    {
        "seed",
        "substitute_seed",
        "out_dir",
        "data_root",
        "download",
        "save_weights",
        "threads",
        "device",
        "bf16",
        "eval_batch_size",
    }
)
SEED = "seed"

# masking/* flags that pclc.evaluate sets to 1.0 when a check fires (the other masking/* metrics are the gaps).
MASKING_FLAGS = M.MASKING_FLAGS

# Run outcomes, from MLflow's status: FINISHED, FAILED, KILLED (stopped early by ASHA or the user), RUNNING/SCHEDULED.
FINISHED, FAILED, STOPPED, RUNNING = "finished", "failed", "stopped", "running"
_OUTCOME = {"FINISHED": FINISHED, "FAILED": FAILED, "KILLED": STOPPED, "RUNNING": RUNNING, "SCHEDULED": RUNNING}

# Short names for the knobs in labels and titles: the paper's, label smoothing's, adversarial training's.
SYMBOL = {"margin": "ξ", "lc_weight": "λ", "smoothing": "α", "trades_beta": "β", "adv_eps": "ε_train"}
VARIANT_ORDER = ("ce", "pc", "lc", "pclc", "label_smoothing")

# A trial's training mode (param `training`); runs logged before there was a choice have none: standard.
TRAINING, STANDARD = "training", "standard"
TRAINING_ORDER = tuple(TRAINING_MODES.select())  # the registry's order: standard, pgd, trades


class AnalysisError(Exception):
    """Something the user can fix (wrong name, no runs, unreachable store): the CLI prints it and exits 2."""


# --------------------------------------------------------------------------- the tracking store


def resolve_tracking_uri(uri: str | None, *, cwd: str | Path | None = None) -> str:
    """The URI to read, checked without side effects: a missing SQLite file is an error, never a new DB.

    None means the house default `sqlite:///<abs cwd>/mlflow.db`; an existing `*.db` path is read as SQLite.
    """
    base = Path(cwd or Path.cwd()).resolve()
    if uri is None:
        uri = C.default_tracking_uri(base)
    elif "://" not in uri and uri.endswith(".db"):
        uri = f"sqlite:///{(base / Path(uri).expanduser()).resolve()}"
    if uri.startswith("sqlite:"):
        if not uri.startswith("sqlite:///") or uri.endswith(":memory:"):
            raise AnalysisError(f"tracking URI {uri!r}: expected sqlite:///<path to mlflow.db>")
        path = (base / Path(uri.removeprefix("sqlite:///")).expanduser()).resolve()
        if not path.is_file():
            raise AnalysisError(
                f"no MLflow database at {path} (tracking URI {uri}). Run a sweep first (pclc sweep CONFIG.yaml) "
                "or pass --tracking-uri sqlite:////abs/path/mlflow.db"
            )
        if path.stat().st_size == 0:
            raise AnalysisError(f"{path} is an empty file, not an MLflow database")
        return f"sqlite:///{path}"
    try:
        return C.normalize_tracking_uri(uri)  # also takes a password out of the URI (pclc.redact)
    except ValueError as err:
        raise AnalysisError(f"tracking URI {err}") from None


def connect(uri: str | None) -> tuple[MlflowClient, str]:
    """A client for the (checked) URI, after one cheap call that proves the store answers."""
    resolved = resolve_tracking_uri(uri)
    client = MlflowClient(resolved)
    try:
        client.search_experiments(max_results=1)
    except MlflowException as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise AnalysisError(f"cannot read the MLflow tracking store at {resolved}: {first[:300]}") from None
    return client, resolved


def experiment_names(client: MlflowClient) -> list[str]:
    return sorted(e.name for e in client.search_experiments(view_type=ViewType.ACTIVE_ONLY))


# --------------------------------------------------------------------------- parsing


def _column(values: list[Any]) -> pd.Series:
    """Numbers as a numeric column (int when every value is an int), anything else as objects."""
    present = [v for v in values if v is not None]
    numeric = present and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in present)
    if numeric:
        if len(present) == len(values) and all(isinstance(v, int) for v in present):
            return pd.Series(values, dtype="int64")
        return pd.Series([math.nan if v is None else float(v) for v in values], dtype="float64")
    return pd.Series(values, dtype="object")


def fmt_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, tuple):
        return "[" + ", ".join(fmt_value(v) for v in value) + "]"
    return str(value)


def variant_sort_key(name: str) -> tuple[int, str]:
    """ce, pc, lc, pclc first (the paper's order), then any other label alphabetically."""
    return (VARIANT_ORDER.index(name) if name in VARIANT_ORDER else len(VARIANT_ORDER), name)


def training_sort_key(mode: str) -> tuple[int, str]:
    """standard, pgd, trades first, then any other training mode alphabetically."""
    return (TRAINING_ORDER.index(mode) if mode in TRAINING_ORDER else len(TRAINING_ORDER), mode)


def training_mode(value: Any) -> str:
    """A run's training mode from its `training` param; standard where it has none (None, NaN: an older run)."""
    return value if isinstance(value, str) and value else STANDARD


def training_modes(runs: pd.DataFrame) -> pd.Series:
    """Each run's training mode (`training_mode`), standard throughout for runs without a `training` column."""
    if TRAINING not in runs:
        return pd.Series(STANDARD, index=runs.index, dtype="object")
    return runs[TRAINING].map(training_mode).astype("object")


def is_finalist(metric: str) -> bool:
    """True for `pclc evaluate`'s re-score of chosen trials, never a trial's own metric."""
    return metric.startswith(M.FINALIST_PREFIX)


def variant_label(variant: str, config: str) -> str:
    """'pclc (ξ=0.995, λ=0.5)', or just the variant for its only ('default') configuration."""
    return variant if config == "default" else f"{variant} ({config})"


# --------------------------------------------------------------------------- the sweep


@dataclass
class Sweep:
    """One sweep's trial runs and what the report needs to say about them.

    `runs` holds every trial run (any outcome); `trials` the analysed ones of the search (or the ablation
    grid): finished, with a finite headline; `confirmed` the same of its confirmation on fresh seeds.
    Columns: run_id, trial_id, variant, config (label of the configuration, seeds pooled), status, outcome,
    failure_reason, start_time, phase, reference (a reference arm's name), search_trial (the search trial a
    confirmation run re-trains), then one per param (plain TrialConfig names) and per metric (schema names).
    """

    experiment: str
    experiment_id: str
    tracking_uri: str
    parent_run_id: str | None
    mode: str
    headline: str
    objectives: list[tuple[str, str]]  # (metric, "max" | "min"), the headline first
    runs: pd.DataFrame
    params: list[str]
    metrics: list[str]
    config_params: list[str]  # params that vary between analysed runs and define a configuration
    other_parents: list[str] = field(default_factory=list)  # other sweeps in the experiment, newest first
    references: list[str] = field(default_factory=list)  # the reference arms' names, in the sweep file's order
    verdict_margin: float | None = None  # the sweep file's equivalence margin (verdict.margin); None: the default
    notes: list[str] = field(default_factory=list)  # plain-English remarks for the report
    _histories: dict[str, dict[str, list[dict[str, Any]]]] = field(default_factory=dict, repr=False)

    def analysed(self, phase: str) -> pd.DataFrame:
        """The finished runs of `phase` with a finite headline."""
        if self.headline not in self.runs:
            return self.runs.iloc[0:0]
        runs = self.runs
        return runs[(runs["outcome"] == FINISHED) & runs[self.headline].notna() & (runs["phase"] == phase)]

    @property
    def trials(self) -> pd.DataFrame:
        return self.analysed(PHASE_SEARCH)

    @property
    def confirmed(self) -> pd.DataFrame:
        return self.analysed(PHASE_CONFIRM)

    def counts(self) -> dict[str, int]:
        out = {k: int((self.runs["outcome"] == k).sum()) for k in (FINISHED, FAILED, STOPPED, RUNNING)}
        out["other"] = len(self.runs) - sum(out.values())
        out["total"] = len(self.runs)
        out["analysed"] = len(self.trials)
        return out

    @property
    def variants(self) -> list[str]:
        return sorted(self.trials["variant"].unique(), key=variant_sort_key)

    def direction(self, metric: str) -> str:
        """'max' or 'min' for a metric: its objective's mode, else max (every schema metric is an accuracy/gap)."""
        return dict(self.objectives).get(metric, "min" if metric == M.TRAIN_LOSS else "max")

    @property
    def headline_eps(self) -> float | None:
        values = self.trials["headline_eps"].dropna().unique() if "headline_eps" in self.trials else []
        return float(values[0]) if len(values) == 1 else None

    def seeds_per_config(self) -> pd.Series:
        return self.trials.groupby(["variant", "config"], sort=False).size()

    def robust_long(self) -> pd.DataFrame:
        """Robust accuracies in long form: run_id, variant, config, seed, attack, eps, value (NaNs dropped)."""
        keys = [(m, M.parse_robust_key(m)) for m in self.metrics]
        keys = [(m, p) for m, p in keys if p is not None]
        ids = ["run_id", "variant", "config"] + ([SEED] if SEED in self.trials else [])
        frames = []
        for metric, (attack, eps) in keys:
            part = self.trials[ids + [metric]].rename(columns={metric: "value"})
            frames.append(part.assign(attack=attack, eps=eps))
        if not frames:
            return pd.DataFrame(columns=ids + ["attack", "eps", "value"])
        return pd.concat(frames, ignore_index=True).dropna(subset=["value"])

    def masking_flags(self) -> list[str]:
        return [M.masking_key(f) for f in MASKING_FLAGS if M.masking_key(f) in self.metrics]

    def epoch_history(self, metric: str, run_ids: list[str] | None = None) -> pd.DataFrame:
        """The per-epoch `metric` (MLflow history, step = epoch) of every trial run, or of `run_ids`:
        run_id, epoch, value.

        Read from the store on first use, run by run, and kept: the learning curves and the verdict's best
        epochs are all that need it.
        """
        wanted = list(self.runs["run_id"]) if run_ids is None else list(run_ids)
        cache = self._histories.setdefault(metric, {})
        missing = [r for r in wanted if r not in cache]
        if missing:
            client = MlflowClient(self.tracking_uri)
            for run_id in missing:
                cache[run_id] = [
                    {"run_id": run_id, "epoch": int(m.step), "value": float(m.value)}
                    for m in client.get_metric_history(run_id, M.to_mlflow(metric))
                ]
        frame = pd.DataFrame([row for r in wanted for row in cache[r]], columns=["run_id", "epoch", "value"])
        # one point per epoch: the value an epoch reported (a final re-log at the last step is the same)
        return frame.drop_duplicates(["run_id", "epoch"], keep="first").sort_values(["run_id", "epoch"])

    def finalist_metrics(self) -> list[str]:
        """The `finalist/*` re-scores some analysed runs carry (`pclc evaluate`), in metric order."""
        return [m for m in self.metrics if is_finalist(m) and self.trials[m].notna().any()]


def _run_row(run: Run) -> tuple[dict[str, Any], dict[str, str], dict[str, float]]:
    tags, data = run.data.tags, run.data
    info = {
        "run_id": run.info.run_id,
        "trial_id": tags.get(TRIAL_ID, run.info.run_name or run.info.run_id[:8]),
        "status": run.info.status,
        "outcome": _OUTCOME.get(run.info.status, run.info.status.lower()),
        "failure_reason": tags.get(FAILURE),
        "start_time": pd.Timestamp(run.info.start_time, unit="ms", tz="UTC") if run.info.start_time else pd.NaT,
        "_variant_tag": tags.get(VARIANT),
        "stopped_early": tags.get(STOPPED_EARLY) == "true",
        "phase": tags.get(PHASE, PHASE_SEARCH),  # an older sweep's runs, untagged, were all its search
        "reference": tags.get(REFERENCE),
        "search_trial": tags.get(SEARCH_TRIAL),
        "left_out": tags.get(C.LEFT_OUT),  # attacks the data set's class count could not run
        "samples": tags.get(C.SAMPLES),  # how its test samples were drawn; None: the head of the split (older runs)
        # per subset, its size and the classes it covers: "evaluated: 80 samples, 10/10 classes; autoattack: …"
        "coverage": "; ".join(f"{k.removeprefix(C.SAMPLES_SUBSET)}: {v}" for k, v in _subset_tags(tags)) or None,
    }
    metrics = {canonical_metric(k): float(v) for k, v in data.metrics.items()}
    return info, dict(data.params), metrics


def _verdict_margin(text: str | None) -> float | None:
    """The equivalence margin a sweep's parent run records (tag pclc.verdict), or None (an older sweep)."""
    try:
        value = float(json.loads(text)["margin"]) if text else None
    except (ValueError, TypeError, KeyError):
        return None
    return value if value is not None and math.isfinite(value) and value > 0 else None


def _subset_tags(tags: dict[str, str]) -> list[tuple[str, str]]:
    order = {name: i for i, name in enumerate(("evaluated", "autoattack", "epoch"))}
    found = [(k, v) for k, v in tags.items() if k.startswith(C.SAMPLES_SUBSET)]
    return sorted(found, key=lambda kv: order.get(kv[0].removeprefix(C.SAMPLES_SUBSET), len(order)))


def _search(client: MlflowClient, experiment_id: str, filter_string: str, order: str = "ASC") -> list[Run]:
    runs: list[Run] = []
    token = None
    while True:
        page = client.search_runs(
            [experiment_id],
            filter_string=filter_string,
            run_view_type=ViewType.ACTIVE_ONLY,
            max_results=1000,
            order_by=[f"attributes.start_time {order}"],
            page_token=token,
        )
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def _objectives(tags: dict[str, str]) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    try:
        for item in json.loads(tags.get(OBJECTIVE, "[]")):
            metric = item["metric"] if isinstance(item, dict) else str(item)
            mode = item.get("mode", "max") if isinstance(item, dict) else "max"
            out.append((canonical_metric(metric), mode))
    except (ValueError, TypeError, KeyError):
        out = []
    headline = canonical_metric(tags.get(HEADLINE) or (out[0][0] if out else M.ROBUST_ACC))
    if not out or out[0][0] != headline:
        out = [(headline, dict(out).get(headline, "max"))] + [o for o in out if o[0] != headline]
    return out


def _json_list(text: str | None) -> list[str]:
    try:
        value = json.loads(text or "[]")
    except ValueError:
        return []
    return [str(v) for v in value] if isinstance(value, list) else []


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _short_ids(ids: list[str], limit: int = 5) -> str:
    shown = ", ".join(i[:8] for i in ids[:limit])
    return shown + (f" and {len(ids) - limit} more" if len(ids) > limit else "")


def load_sweep(
    experiment: str | None = None,
    *,
    tracking_uri: str | None = None,
    parent_run_id: str | None = None,
    client: MlflowClient | None = None,
) -> Sweep:
    """The trial runs of one sweep: by default the experiment's latest parent run, or `parent_run_id`.

    Example (an illustration: it needs a trained model or a store):
        >>> sweep = load_sweep("ablation_digits", tracking_uri="sqlite:////work/mlflow.db")  # doctest: +SKIP
        >>> sweep.trials[["variant", "margin", "lc_weight", "robust_acc"]], sweep.counts()  # doctest: +SKIP
    """
    if client is None:
        client, tracking_uri = connect(tracking_uri)
    else:
        tracking_uri = tracking_uri or client.tracking_uri
    if experiment is None and parent_run_id is None:
        raise AnalysisError("name an experiment (--experiment NAME) or a sweep's parent run (--parent-run ID)")

    parent: Run | None = None
    if parent_run_id is not None:
        try:
            parent = client.get_run(parent_run_id)
        except MlflowException:
            parent = None
    exp = None
    if experiment is not None:
        exp = client.get_experiment_by_name(experiment)
        if exp is None or exp.lifecycle_stage != "active":
            names = experiment_names(client)
            known = ", ".join(names) if names else "none"
            state = "is deleted" if exp is not None else "does not exist"
            raise AnalysisError(f"experiment {experiment!r} {state} in {tracking_uri}; experiments there: {known}")
    elif parent is not None:
        exp = client.get_experiment(parent.info.experiment_id)
    if exp is None:
        raise AnalysisError(f"no run {parent_run_id!r} in {tracking_uri}")

    parents = _search(client, exp.experiment_id, f"tags.`{ROLE}` = '{C.ROLE_SWEEP}'", order="DESC")
    notes: list[str] = []
    if parent_run_id is not None:
        if parent is None or parent.info.experiment_id != exp.experiment_id:
            listed = ", ".join(p.info.run_id for p in parents) or "none"
            raise AnalysisError(f"no run {parent_run_id!r} in experiment {exp.name!r}; its sweep runs: {listed}")
    elif parents:
        parent = parents[0]
    others = [
        f"{p.info.run_id} (started {pd.Timestamp(p.info.start_time, unit='ms'):%Y-%m-%d %H:%M})"
        for p in parents
        if parent is None or p.info.run_id != parent.info.run_id
    ]
    if others and parent_run_id is None:
        notes.append(
            f"The experiment holds {_plural(len(parents), 'sweep')}; this report covers the latest "
            f"({parent.info.run_id if parent else '?'}). Pick another with --parent-run ID."
        )

    if parent is not None:
        child_runs = _search(client, exp.experiment_id, f"tags.`{PARENT}` = '{parent.info.run_id}'")
        parent_tags = parent.data.tags
    else:  # runs logged without a sweep parent: analyse them all, but there is nowhere to log artifacts
        child_runs = [r for r in _search(client, exp.experiment_id, "") if r.data.tags.get(ROLE) != C.ROLE_SWEEP]
        parent_tags = {}
        notes.append("No sweep parent run (tag pclc.role=sweep) in the experiment: every run is analysed as a trial.")

    objectives = _objectives(parent_tags)
    headline = objectives[0][0]
    runs, params, metrics, config_params = _table(child_runs)
    mode = parent_tags.get(MODE) or ("ablation" if runs["_variant_tag"].notna().any() else "optimize")
    runs = runs.drop(columns=["_variant_tag"])
    sweep = Sweep(
        experiment=exp.name,
        experiment_id=exp.experiment_id,
        tracking_uri=tracking_uri,
        parent_run_id=parent.info.run_id if parent else None,
        mode=mode,
        headline=headline,
        objectives=objectives,
        runs=runs,
        params=params,
        metrics=metrics,
        config_params=config_params,
        other_parents=others,
        notes=notes,
        references=_json_list(parent_tags.get(C.REFERENCES)),
        verdict_margin=_verdict_margin(parent_tags.get(C.VERDICT)),
    )
    sweep.notes.extend(_data_notes(sweep, child_runs))
    return sweep


def _table(child_runs: list[Run]) -> tuple[pd.DataFrame, list[str], list[str], list[str]]:
    """(runs table, param columns, metric columns, configuration params)."""
    infos, raw_params, raw_metrics = zip(*(_run_row(r) for r in child_runs)) if child_runs else ((), (), ())
    fields = list(TrialConfig.model_fields)  # the config's own order: ξ before λ
    param_names = sorted(
        {k for p in raw_params for k in p}, key=lambda k: (fields.index(k) if k in fields else len(fields), k)
    )
    metric_names = sorted({k for m in raw_metrics for k in m})
    info_cols = ["run_id", "trial_id", "variant", "config", "status", "outcome", "failure_reason", "start_time"]
    extra = ["_variant_tag", "stopped_early", "phase", "reference", "search_trial", "left_out", "samples", "coverage"]
    frame = pd.DataFrame(list(infos), columns=info_cols[:2] + info_cols[4:] + extra)
    columns: dict[str, pd.Series] = {}
    for name in param_names:
        if name in info_cols or name in metric_names:  # a param never hides a column; it keeps a prefix
            columns[f"param.{name}"] = _column([parse_param(p.get(name)) for p in raw_params])
        else:
            columns[name] = _column([parse_param(p.get(name)) for p in raw_params])
    for name in metric_names:
        values = [m.get(name, math.nan) for m in raw_metrics]
        columns[name] = pd.Series([v if math.isfinite(v) else math.nan for v in values], dtype="float64")
    frame = pd.concat([frame, pd.DataFrame(columns, index=frame.index)], axis=1)
    loss = frame["loss"] if "loss" in frame else pd.Series(["all"] * len(frame), dtype="object")
    frame.insert(2, "variant", frame["_variant_tag"].where(frame["_variant_tag"].notna(), loss).astype(str))

    finished = frame[frame["outcome"] == FINISHED]
    if (finished["phase"] == PHASE_SEARCH).any():  # the confirmation's own settings (aa_limit) label nothing
        finished = finished[finished["phase"] == PHASE_SEARCH]
    params = [c for c in columns if c not in metric_names]
    config_params = [
        p
        for p in params
        if p not in NOT_CONFIG and p != "loss" and finished[p].map(_hashable).nunique(dropna=False) > 1
    ]
    if "loss" in frame and finished["loss"].nunique() > finished["variant"].nunique():
        config_params.insert(0, "loss")  # variants that mix losses (unusual): keep the loss visible
    # per variant and training mode: runs that differ in their mode are told apart by it already
    varying = {
        key: {p for p in config_params if g[p].map(_hashable).nunique(dropna=False) > 1}
        for key, g in finished.groupby(["variant", training_modes(finished)])
    }
    labels = []
    for _, row in frame.iterrows():
        # a knob the loss or the training mode ignores is left out of the label where the variant does not vary
        # it in that mode (ce → "default"; a standard run has no ε_train)
        mode = training_mode(row.get(TRAINING))
        ignored = IGNORED_BY_LOSS.get(row.get("loss"), frozenset()) | IGNORED_BY_TRAINING.get(mode, frozenset())
        ignored -= varying.get((row["variant"], mode), set())
        labels.append(config_label(row, [p for p in config_params if p not in ignored]))
    frame.insert(3, "config", labels)
    return frame, params, metric_names, config_params


def _hashable(v: Any) -> Any:
    return json.dumps(v) if isinstance(v, (list, dict)) else v


def config_label(row: pd.Series | dict[str, Any], config_params: list[str]) -> str:
    """'ξ=0.995, λ=0.05' — the configuration of a run without its variant and seed ('default' if none varies)."""
    parts = [f"{SYMBOL.get(p, p)}={fmt_value(row[p])}" for p in config_params if row[p] is not None]
    return ", ".join(parts) if parts else "default"


def _data_notes(sweep: Sweep, child_runs: list[Run]) -> list[str]:
    """What the report must say about the data: missing and NaN metrics, seeds, runs left out."""
    notes: list[str] = []
    runs, headline = sweep.runs, sweep.headline
    finished = runs[runs["outcome"] == FINISHED]
    present = {r.info.run_id: {canonical_metric(k): v for k, v in r.data.metrics.items()} for r in child_runs}

    lacking = [rid for rid in finished["run_id"] if headline not in present[rid]]
    if lacking:
        notes.append(
            f"{_plural(len(lacking), 'finished run')} lack the headline metric {headline} and are left out "
            f"(no final evaluation logged): {_short_ids(lacking)}."
        )
    nan_head = [
        rid for rid in finished["run_id"] if headline in present[rid] and not math.isfinite(present[rid][headline])
    ]
    if nan_head:
        notes.append(
            f"{_plural(len(nan_head), 'finished run')} have a NaN/inf headline metric {headline} and are left out: "
            f"{_short_ids(nan_head)}."
        )

    trials = sweep.trials
    ids = list(trials["run_id"])
    head = list(finished.loc[finished["samples"].isna(), "run_id"])
    if head:  # scored before the stratified draw (pclc.samples): said once, for every such run
        notes.append(
            f"{_plural(len(head), 'finished run')} scored the head of the test split, the first `eval_limit` samples as "
            "stored (runs from before the stratified sample draw; no `pclc.samples` tag): files and official test sets "
            "are often stored in class or difficulty order, so their numbers may be about a few classes or the easier "
            f"samples, and pair with no newer run. Run them again to compare: {_short_ids(head)}."
        )
    missing: dict[tuple[str, ...], list[str]] = {}
    nans: dict[tuple[str, ...], list[str]] = {}
    for metric in sweep.metrics:
        # finalist/* re-scores belong to the few trials `pclc evaluate` chose: their absence elsewhere is normal
        gone = () if is_finalist(metric) else tuple(r for r in ids if metric not in present[r])
        bad = tuple(r for r in ids if metric in present[r] and not math.isfinite(present[r][metric]))
        if gone and len(gone) < len(ids):
            missing.setdefault(gone, []).append(metric)
        if bad:
            nans.setdefault(bad, []).append(metric)
    for where, names in missing.items():
        notes.append(
            f"{_metric_list(names)} missing from {len(where)} of {len(ids)} analysed runs ({_short_ids(list(where))}): "
            "those runs are left out of whatever uses it."
        )
    for where, names in nans.items():
        notes.append(
            f"{_metric_list(names)} NaN/inf in {len(where)} of {len(ids)} analysed runs ({_short_ids(list(where))}): "
            "treated as missing (means and intervals use the finite values only)."
        )

    rescored = [r for r in ids if any(is_finalist(m) for m in present[r])]
    if rescored:
        notes.append(
            f"{len(rescored)} of {len(ids)} analysed runs carry a full AutoAttack re-score (`finalist/*`, from "
            f"`pclc evaluate`: {_short_ids(rescored)}); it is shown beside the trials' own numbers, never mixed in."
        )
    if len(trials):
        sizes = sweep.seeds_per_config()
        if sizes.max() == 1:
            notes.append("One seed per configuration: no confidence intervals; every mean is a single run.")
        elif (sizes == 1).any():
            notes.append(
                f"{_plural(int((sizes == 1).sum()), 'configuration')} of {len(sizes)} have a single seed: "
                "no interval for those."
            )
    return notes


def _metric_list(names: list[str], limit: int = 4) -> str:
    shown = ", ".join(f"`{n}`" for n in names[:limit])
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return f"Metric {shown} is" if len(names) == 1 else f"Metrics {shown}{more} are"


def fetch_warnings(client: MlflowClient, run_ids: list[str], *, limit: int = 20) -> dict[str, list[str]]:
    """The plain-English warnings in evaluation.json of (at most `limit` of) these runs; runs without one are skipped."""
    out: dict[str, list[str]] = {}
    with tempfile.TemporaryDirectory(prefix="pclc-analysis-") as tmp:
        for rid in run_ids[:limit]:
            try:
                path = client.download_artifacts(rid, C.EVALUATION_ARTIFACT, tmp)
                data = json.loads(Path(path).read_text())
            except (MlflowException, OSError, ValueError):
                continue
            warnings = data.get("warnings") if isinstance(data, dict) else None
            if warnings:
                out[rid] = [str(w) for w in warnings]
    return out


def fetch_outcomes(client: MlflowClient, run_id: str, *, finalist: bool = False) -> Outcomes | None:
    """The per-sample outcomes a trial run logged (`outcomes.json`), or with `finalist` those of its
    `pclc evaluate` re-score (`finalist/outcomes.json`, keys without the `finalist/` prefix); None for a run
    without them (logged before they existed, or never finished). For paired tests between runs on the
    same samples: `Outcomes.accuracy(key)` equals the run's logged metric `key` exactly.

    Example (an illustration: it needs a store):
        >>> o = fetch_outcomes(client, run_id)  # doctest: +SKIP
        >>> o.correct["robust_acc/worst/eps=0.1"][o.scored["robust_acc/worst/eps=0.1"]].mean()  # doctest: +SKIP
    """
    artifact = C.FINALIST_OUTCOMES_ARTIFACT if finalist else C.OUTCOMES_ARTIFACT
    folder = artifact.rpartition("/")[0] or None
    try:
        listed = {a.path for a in client.list_artifacts(run_id, folder)}
        if artifact not in listed:
            return None
        with tempfile.TemporaryDirectory(prefix="pclc-analysis-") as tmp:
            text = Path(client.download_artifacts(run_id, artifact, tmp)).read_text()
    except (MlflowException, OSError) as exc:
        raise AnalysisError(f"run {run_id}: cannot read {artifact}: {exc}") from None
    try:
        return Outcomes.from_json(text)
    except OutcomesError as exc:
        raise AnalysisError(f"run {run_id}: {artifact}: {exc}") from None
