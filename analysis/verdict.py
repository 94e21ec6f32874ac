"""The sweep's conclusion: each configuration against each reference arm of its training mode (and an
adversarially trained one against plain CE too), on the same samples and seeds, each ending as *better*,
*worse*, *equivalent within ±m* or *inconclusive* on a simultaneous interval (`analysis.compare`), said in
one sentence each.

Which runs speak: in an optimize sweep, the confirmation runs (the search's top configurations and the
references re-trained on fresh seeds, AutoAttack on every evaluated sample); a one-seed search on a
subset ranks noise, and its winner is biased upward, so its own scores are shown beside, never used. In
an ablation, the grid itself (every arm already runs on the same seeds).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from mlflow.tracking import MlflowClient

from analysis.compare import ALPHA, CORRECTION_NAME, MARGIN, OUTCOMES, Comparison, Estimate, compare, run_interval
from analysis.load import (
    SEED,
    STANDARD,
    TRAINING,
    AnalysisError,
    Sweep,
    fetch_outcomes,
    load_sweep,
    training_modes,
)
from analysis.sequential import Design, Progress, progress
from analysis.stats import t_halfwidth
from analysis.variance import Pool, pool
from pclc import metrics as M

# run id → (scored sample indices, per-sample correctness under the headline) of that run, or None when not stored
# (the reader of pclc.outcomes.Outcomes the verdict needs, named apart from that class)
OutcomeReader = Callable[[str], "tuple[np.ndarray, np.ndarray] | None"]


@dataclass(frozen=True)
class Arm:
    """One configuration of the verdict: its runs (one per seed), its mean headline with an interval."""

    name: str  # `search #1`, a reference's name, or an ablation variant
    config: str  # the configuration's label (ξ=…, λ=…)
    reference: str | None  # the reference's name, when this arm is one
    runs: pd.DataFrame  # its analysed runs, one per seed
    estimate: Estimate  # mean headline over seeds (Student t), or one run's (Wilson)
    clean: float  # mean clean accuracy
    search_score: float | None = None  # confirmation: the headline its search trial scored (one seed, a subset)
    search_samples: int | None = None
    curve: pd.DataFrame | None = None  # epoch, mean, low, high of the per-epoch signal over its seeds
    training: str = STANDARD  # its training mode (standard, pgd, trades): arms are judged within their mode

    @property
    def best_epoch(self) -> tuple[int, int] | None:
        """(the epoch its mean per-epoch signal peaked, its last epoch), or None without a signal."""
        if self.curve is None or self.curve.empty:
            return None
        best = self.curve.loc[self.curve["mean"].idxmax()]
        return int(best["epoch"]), int(self.curve["epoch"].max())

    @property
    def label(self) -> str:
        """'pclc-authors = search #1 (ξ=0.995, λ=0.05)': the reference's name first, numbers to 3 significant digits;
        a training mode other than standard that neither the name nor the configuration says is added: '… [pgd]'."""
        name = self.name if self.reference in (None, self.name) else f"{self.reference} = {self.name}"
        config = _NUMBER.sub(lambda m: f"{float(m[0]):.3g}", self.config)
        label = name if self.config in ("default", self.name) else f"{name} ({config})"
        said = f"{TRAINING}=" in self.config or re.search(rf"\b{re.escape(self.training)}\b", name)
        return label if self.training == STANDARD or said else f"{label} [{self.training}]"

    @property
    def seeds(self) -> list[int]:
        return sorted(int(s) for s in self.runs[SEED]) if SEED in self.runs else []


@dataclass(frozen=True)
class Line:
    """One comparison of the verdict: `arm` minus `reference` on the headline."""

    arm: Arm
    reference: Arm
    result: Comparison
    seeds: int
    samples: int | None
    on_samples: bool = True  # paired on per-sample outcomes checked to be the same samples; else logged accuracies
    family: int = 1  # comparisons in the verdict (the correction's k)
    stopped: str | None = None  # a sequential design: where it was decided ('decided at look 2 of 3 (6 seeds)')

    def sentence(self, metric: str) -> str:
        r = self.result
        samples = f" × {self.samples} samples" if self.samples else ""
        paired = (
            "paired on the same samples"
            if self.on_samples
            else "paired by seed on logged accuracies (no per-sample outcomes: the samples are not checked)"
        )
        checked = ", AutoAttack-checked" if is_checked(metric) else ""
        words = r.words if r.outcome != "inconclusive" else f"inconclusive: {r.why_inconclusive()}"
        name = interval_name(r.level, self.family)
        if self.stopped is not None:  # the repeated interval of the look it stopped at, the one the words read
            name = f"{100 * r.level:.3g} % repeated interval, {self.stopped}"
        return (
            f"{self.arm.label} vs {self.reference.label}: {r.difference.text(points=True)} "
            f"({name}), {words} ({self.seeds} seed{'s' if self.seeds != 1 else ''}"
            f"{samples}, {paired}; {metric}{checked}; p = {r.p_corrected:.3g} after {CORRECTION_NAME} over "
            f"{self.family})"
        )


def is_checked(metric: str) -> bool:
    """Whether `metric` is the AutoAttack-checked headline (or a finalist's full AutoAttack re-score of it)."""
    return metric in (M.ROBUST_ACC, M.finalist_key(M.ROBUST_ACC))


def interval_name(level: float, family: int) -> str:
    """'98.3 % simultaneous interval' (Bonferroni over 3) or '95 % interval' for a single comparison."""
    return f"{100 * level:.3g} % {'simultaneous ' if family > 1 else ''}interval"


SHOWN = 10  # comparisons a terminal shows of a large verdict, best first (the report's CSV holds them all)
_NUMBER = re.compile(r"(?<![\w.])\d+\.\d+(?:e[+-]?\d+)?")  # a decimal in a configuration label


@dataclass
class Verdict:
    """The arms, the comparisons and what the reader must know about them."""

    metric: str
    source: str  # "confirmation" or "grid"
    signal: str | None = None  # the per-epoch metric the arms' curves are of (epoch_robust_acc)
    arms: list[Arm] = field(default_factory=list)
    lines: list[Line] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    margin: float = MARGIN  # the equivalence margin, in the metric's units (the sweep file's verdict.margin)
    higher_is_better: bool = True  # the headline's direction (its objective's mode)
    progress: Progress | None = None  # a sequential confirmation: where each comparison stands, the next look
    pools: list[Pool] = field(default_factory=list)  # each training mode's two-way layout (pooled or not, and why)

    def sentences(self) -> list[str]:
        """The verdict, one sentence per comparison, then what did not confirm or could not be compared, then
        at which epoch each arm's per-epoch signal was best."""
        return [line.sentence(self.metric) for line in self.lines] + self.notes + self.epochs()

    def ranked(self) -> list[Line]:
        """The comparisons, best difference first (what a reader of a large sweep looks at first)."""
        sign = -1.0 if self.higher_is_better else 1.0
        return sorted(self.lines, key=lambda line: sign * line.result.difference.value)

    def tally(self) -> str:
        """'100 comparisons (Bonferroni over 100): 3 better, 7 worse, 10 equivalent within ±3.0 points, 80
        inconclusive'."""
        counts = {o: sum(line.result.outcome == o for line in self.lines) for o in OUTCOMES}
        margin = f" within ±{100 * self.margin:.1f} points"
        said = ", ".join(f"{n} {o}{margin if o == 'equivalent' else ''}" for o, n in counts.items())
        return f"{len(self.lines)} comparisons ({CORRECTION_NAME} over {len(self.lines)}): {said}"

    def summary(self, limit: int = SHOWN) -> list[str]:
        """What a terminal shows: every sentence of a small verdict; for a large one the tally, the `limit` best
        comparisons and the notes cut to `limit` (the report and its verdict.csv hold them all)."""
        if len(self.lines) <= limit and len(self.notes) <= limit:
            return self.sentences()
        shown = [line.sentence(self.metric) for line in self.ranked()[:limit]]
        rest = len(self.lines) - len(shown)
        more = [f"… and {rest} more comparisons (worse differences): all in the report's verdict.csv"] if rest else []
        return [self.tally() + "; the best first:"] + shown + more + self.notes_cut(limit) + self.epochs()

    def notes_cut(self, limit: int) -> list[str]:
        """The first `limit` notes, and how many more there are (the terminal and the report cut them alike)."""
        rest = len(self.notes) - limit
        return self.notes[:limit] + ([f"… and {rest} more notes"] if rest > 0 else [])

    def epochs(self) -> list[str]:
        peaks = [(a, a.best_epoch) for a in self.arms if a.best_epoch is not None]
        if not peaks:
            return []
        late = [a.name for a, (best, last) in peaks if best < last]
        if len(peaks) > SHOWN:  # a large grid: how many peaked early, not every arm by name
            named = ", ".join(late[:SHOWN]) + (f" and {len(late) - SHOWN} more" if len(late) > SHOWN else "")
            return [
                f"Per-epoch `{self.signal}` (mean over seeds): {len(late)} of {len(peaks)} arms peaked before their "
                f"last epoch{f' ({named})' if late else ''}; the rest were best at their last epoch."
            ]
        parts = [f"{a.name} at epoch {best} of {last}" for a, (best, last) in peaks]
        points = sorted({len(a.curve) for a, _ in peaks if a.curve is not None})
        span = f"{points[0]}" if points[0] == points[-1] else f"{points[0]}–{points[-1]}"
        counted = f" (of the {span} epochs that computed it)"
        tail = (
            f"; {', '.join(late)} peaked before the end: shorter training may serve them better"
            if late
            else "; every arm was still best at its last epoch"
        )
        return [f"Per-epoch `{self.signal}` (mean over seeds) was best{counted}: {', '.join(parts)}{tail}."]


def _over_seeds(values: np.ndarray) -> tuple[float, float, float]:
    """(mean, low, high): the Student-t interval of a mean over seeds (zero width for identical values)."""
    mean = float(np.mean(values))
    half = t_halfwidth(float(np.std(values, ddof=1)), len(values)) if len(values) >= 2 else math.nan
    half = 0.0 if not math.isfinite(half) else half
    return mean, mean - half, mean + half


def _estimate(runs: pd.DataFrame, metric: str, correct: np.ndarray | None) -> Estimate:
    values = runs[metric].astype(float).to_numpy()
    if len(values) >= 2:
        return Estimate(*_over_seeds(values), "seeds", len(values))
    if correct is not None:
        return run_interval(correct)
    return Estimate(float(values[0]), math.nan, math.nan, "run", 1)


def verdict(sweep: Sweep, *, outcomes: OutcomeReader | None = None, looks_run: int | None = None) -> Verdict:
    """The verdict of a loaded sweep. `outcomes(run_id)` gives a run's per-sample headline outcomes
    (needed only for one-seed comparisons: several seeds are compared seed by seed on their accuracies).
    A sweep with `confirm.looks` is judged look by look (`analysis.sequential.progress`); `looks_run` is how
    many looks' trials have finished (None: inferred from the seeds there are)."""
    metric = sweep.headline
    confirmed = sweep.confirmed
    frame, source = (confirmed, "confirmation") if len(confirmed) else (sweep.trials, "grid")
    out = Verdict(
        metric=metric,
        source=source,
        margin=sweep.verdict_margin if sweep.verdict_margin is not None else MARGIN,
        higher_is_better=sweep.direction(metric) == "max",
    )
    if sweep.mode == "optimize" and source == "grid":
        out.notes.append(
            "No confirmation runs: the search's ranking is one seed per configuration on a subset, with no "
            "reference beside it; it ranks, it does not judge (set confirm.top > 0 in the sweep file)."
        )
        return out
    if frame.empty:
        out.notes.append("No finished run to judge.")
        return out
    cache: dict[str, tuple[np.ndarray, np.ndarray] | None] = {}

    unread: list[str] = []

    def outcome(run_id: str) -> tuple[np.ndarray, np.ndarray] | None:
        if outcomes is None:
            return None
        if run_id not in cache:
            try:
                cache[run_id] = outcomes(run_id)
            except AnalysisError as exc:  # e.g. a store copied off its server: the artifacts stayed behind
                cache[run_id] = None
                unread.append(str(exc).splitlines()[0])
        return cache[run_id]

    signal = M.EPOCH_ROBUST_ACC if M.EPOCH_ROBUST_ACC in sweep.metrics else None
    out.signal = signal
    history = sweep.epoch_history(signal, list(frame["run_id"])) if signal else None
    for (variant, config), runs in frame.groupby(["variant", "config"], sort=False):
        if SEED in runs and runs[SEED].duplicated().any():  # e.g. a configuration run again: its latest run speaks
            twice = sorted({int(s) for s in runs.loc[runs[SEED].duplicated(), SEED]})
            runs = runs.sort_values("start_time").drop_duplicates(SEED, keep="last")
            out.notes.append(
                f"{variant} ({config}) ran seed(s) {twice} more than once: the latest run of each seed is compared."
            )
        runs = runs.sort_values(SEED) if SEED in runs else runs
        references = runs["reference"].dropna().unique()
        one = outcome(runs["run_id"].iloc[0]) if len(runs) == 1 else None
        search_score = search_samples = None
        if source == "confirmation" and runs["search_trial"].notna().any():
            found = sweep.trials[sweep.trials["trial_id"] == runs["search_trial"].dropna().iloc[0]]
            if len(found):
                search_score = float(found[metric].iloc[0])
                search_samples = _scored(found.iloc[0])
        out.arms.append(
            Arm(
                name=str(variant),
                config=str(config),
                reference=str(references[0]) if len(references) else None,
                runs=runs,
                estimate=_estimate(runs, metric, None if one is None else one[1]),
                clean=float(runs[M.CLEAN_ACC].mean()) if M.CLEAN_ACC in runs else math.nan,
                search_score=search_score,
                search_samples=search_samples,
                curve=None if history is None else _curve(history[history["run_id"].isin(set(runs["run_id"]))]),
                training=str(training_modes(runs).iloc[0]),
            )
        )
    order = {name: i for i, name in enumerate(sweep.references)}  # the sweep file's order: CE first by default
    refs = sorted((a for a in out.arms if a.reference is not None), key=lambda a: order.get(a.reference, len(order)))
    if not refs:
        out.notes.append("No reference arm in this sweep (reference: []): nothing to judge against.")
        return out
    pairs, meta = [], []
    for arm in out.arms:
        for ref in _against(arm, refs):
            paired = _paired(arm, ref, metric, outcome)
            if isinstance(paired, str):
                out.notes.append(f"{arm.label} vs {ref.label}: not compared ({paired}).")
                continue
            alone = sorted(set(arm.seeds) ^ set(ref.seeds))
            if alone:  # the arm tables average every seed; the comparison can pair only the common ones
                out.notes.append(
                    f"{arm.label} vs {ref.label}: seed(s) {alone} ran in one arm only and are left out of the "
                    f"comparison (the arms' own means include them)."
                )
            pairs.append(paired[:2])
            meta.append((arm, ref, *paired[2:]))
    names = [(arm.name, ref.name) for arm, ref, *_ in meta]
    groups = _groups(out.arms, metric)
    judged = dict(margin=out.margin, higher_is_better=out.higher_is_better, population=sweep.verdict_population)
    stopped: list[str | None] = [None] * len(pairs)
    if sweep.verdict_looks and pairs:
        design = Design(looks=sweep.verdict_looks, alpha=ALPHA, comparisons=len(pairs))
        out.progress = progress(design, names, pairs, ran=looks_run, groups=groups, **judged)
        out.pools = list(out.progress.pools)
        fixed = compare(pairs, **judged)  # a comparison that never reached its first look: said so, not judged
        results = [d.result if d is not None else f for d, f in zip(out.progress.decisions, fixed)]
        stopped = [out.progress.sentence(i) for i in range(len(pairs))]
    else:
        out.pools = [pool(mode, arms) for mode, arms in groups.items() if len(arms) >= 3]
        results = compare(pairs, names=names, pools=out.pools, **judged)
    for result, (arm, ref, seeds, samples, on_samples), where in zip(results, meta, stopped):
        out.lines.append(
            Line(
                arm=arm,
                reference=ref,
                result=result,
                seeds=seeds,
                samples=samples,
                on_samples=on_samples,
                family=len(results),
                stopped=where,
            )
        )
    out.notes.extend(p.sentence() for p in out.pools if len(p.arms) >= 3)
    if out.progress is not None:
        out.notes.append(out.progress.summary())
    if out.lines and all(line.seeds < 2 for line in out.lines):
        out.notes.append(
            "One seed per arm: the comparisons rank two trained networks each, and say nothing about the "
            "configurations (seed-to-seed spread on digits is 2–9 points); give the arms at least 2 seeds."
        )
    out.notes.extend(_winner_notes(out, metric))
    if unread:
        out.notes.append(
            f"Per-sample outcomes of {len(unread)} run(s) could not be read ({unread[0]}); several seeds are "
            "compared on their logged accuracies instead, and a one-seed comparison is left out."
        )
    return out


def _groups(arms: list[Arm], metric: str) -> dict[str, dict[str, list[float]]]:
    """Training mode → arm → its headline per seed, on the seeds every arm of that mode ran, in seed order: the
    two-way layouts the verdict pools a mode's seed × arm variance from (`analysis.variance.pool`)."""
    out: dict[str, dict[str, list[float]]] = {}
    for mode in dict.fromkeys(a.training for a in arms):
        members = [a for a in arms if a.training == mode and SEED in a.runs]
        common = sorted(set.intersection(*(set(a.seeds) for a in members))) if members else []
        if len(common) >= 2:
            out[mode] = {a.name: [float(a.runs.set_index(SEED).loc[s, metric]) for s in common] for a in members}
    return out


def _against(arm: Arm, refs: list[Arm]) -> list[Arm]:
    """The references `arm` is judged against: every one of its training mode (a reference: the earlier ones,
    e.g. the authors' vs CE), and outside standard training the first standard one too (plain CE by default),
    which says what the adversarial training itself bought. Two adversarial modes are never compared."""
    own = [r for r in refs if r.training == arm.training]
    if arm.reference is not None:
        own = own[: own.index(arm)]
    base = next((r for r in refs if r.training == STANDARD), None)
    return own if arm.training == STANDARD or base is None else [*own, base]


def _curve(history: pd.DataFrame) -> pd.DataFrame:
    """epoch, mean, low, high: an arm's per-epoch signal over its seeds (the t-interval where there are several)."""
    rows = []
    for epoch, values in history.groupby("epoch")["value"]:
        mean, low, high = _over_seeds(values.to_numpy(dtype=float))
        rows.append({"epoch": int(epoch), "mean": mean, "low": low, "high": high, "n": len(values)})
    return pd.DataFrame(rows, columns=["epoch", "mean", "low", "high", "n"])


def _scored(run: pd.Series) -> int | None:
    """How many samples the headline of a run was taken on (the AutoAttack subset, or every evaluated one)."""
    limit, evaluated = run.get("aa_limit"), run.get("eval_limit")
    values = [int(v) for v in (limit, evaluated) if v is not None and not pd.isna(v)]
    return min(values) if values else None


def _paired(
    arm: Arm, ref: Arm, metric: str, outcome: Callable[[str], tuple[np.ndarray, np.ndarray] | None]
) -> tuple[list, list, int, int | None, bool] | str:
    """(a's per-sample vectors or accuracies per seed, b's, seeds, samples, whether the samples were checked the
    same) on the seeds both ran, or why not."""
    if SEED not in arm.runs or SEED not in ref.runs:
        return "no seed recorded"
    a = arm.runs.set_index(SEED)
    b = ref.runs.set_index(SEED)
    seeds = sorted(set(a.index) & set(b.index))
    if not seeds:
        return f"no common seed: {arm.seeds} against {ref.seeds}"
    vectors_a, vectors_b, samples = [], [], None
    for seed in seeds:
        oa, ob = outcome(a.loc[seed, "run_id"]), outcome(b.loc[seed, "run_id"])
        if oa is None or ob is None:
            break
        if not np.array_equal(oa[0], ob[0]):
            return f"seed {seed} was scored on different samples"
        vectors_a.append(oa[1])
        vectors_b.append(ob[1])
        samples = len(oa[0])
    else:
        return vectors_a, vectors_b, len(seeds), samples, True
    if len(seeds) < 2:
        return "one seed and no stored per-sample outcomes: a paired test needs one or the other"
    # several seeds: the paired test is over the per-seed accuracies, which the metrics hold
    accuracies = [float(a.loc[s, metric]) for s in seeds], [float(b.loc[s, metric]) for s in seeds]
    return *accuracies, len(seeds), _scored(arm.runs.iloc[0]), False


def _winner_notes(v: Verdict, metric: str) -> list[str]:
    """Where the search's ranking and the confirmation disagree (the winner's curse, made visible)."""
    notes = []
    searched = [a for a in v.arms if a.search_score is not None]
    for arm in searched:
        est = arm.estimate
        beyond = arm.search_score > est.high if v.higher_is_better else arm.search_score < est.low
        if math.isfinite(est.high) and math.isfinite(est.low) and beyond:
            notes.append(
                f"{arm.label} scored {100 * arm.search_score:.1f} % in the search (one seed"
                f"{f', {arm.search_samples} samples' if arm.search_samples else ''}) but {est.text()} over "
                f"{est.n} fresh seeds: its search score did not confirm (the top of a one-seed ranking is "
                "biased upward)."
            )
    return notes


def headline_outcomes(client: MlflowClient, metric: str) -> OutcomeReader:
    """`outcomes(run_id)`: the samples a run's `metric` was taken on and whether each stayed correct, read
    from its per-sample outcomes artifact (None where a run has none, e.g. one logged before they existed)."""

    def read(run_id: str) -> tuple[np.ndarray, np.ndarray] | None:
        stored = fetch_outcomes(client, run_id)
        if stored is None:
            return None
        key = stored.headlines.get(metric, metric)
        if key not in stored.correct:
            return None
        scored = stored.scored[key]
        return stored.indices[scored], stored.correct[key][scored]

    return read


def verdict_for_parent(
    client: MlflowClient, experiment_id: str, parent_run_id: str, *, tracking_uri: str, looks_run: int | None = None
) -> Verdict:
    """The verdict of the sweep under `parent_run_id`, read from MLflow (what `pclc sweep` prints last, and what
    a sequential confirmation's next look is planned from: `looks_run` looks' trials have finished)."""
    sweep = load_sweep(parent_run_id=parent_run_id, client=client, tracking_uri=tracking_uri)
    return verdict(sweep, outcomes=headline_outcomes(client, sweep.headline), looks_run=looks_run)
