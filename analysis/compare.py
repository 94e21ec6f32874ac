"""The statistics behind a sweep's verdict: paired comparisons against a reference, decided on one interval
each, and one run's interval (means over seeds are `analysis.stats`). Every number is a library call (scipy,
statsmodels), named in `METHODS` so the report can say which.

Why paired: two configurations scored on the same samples share each sample's difficulty, so their
difference is far less noisy than two independent accuracies. Why over seeds: on digits the same
configuration spreads 2–9 points from seed to seed, more than one run's sample noise, so the unit of
replication is the seed (the per-seed paired difference), and a verdict about configurations needs at least
two of them; one seed compares two trained networks, and it ranks, it does not judge.

Words and numbers agree because the words are read off the printed interval. The family of k comparisons
gets simultaneous intervals (Bonferroni: each at level 1 − α/k), and a comparison is *better* where its
interval lies on the good side of 0, *worse* on the other, *equivalent within ±m* where it lies inside
(−m, +m) (two one-sided tests, each at α/2k), and *inconclusive* otherwise, with the smallest difference
the design could have detected with 80 % power. A claim is wrong only where an interval misses its true
difference, so the chance of any false *better*, *worse* or *equivalent* in the family is at most α.

`judge` is the one code path: the fixed design (`compare`) is one look of `analysis.spending.Design`, and a
sequential design (`analysis.sequential`) judges each look with the same code at the look's spent level.
Where the variance comes from (each pair's seeds, the pooled arms of a mode, a seed × sample term for a claim
about the test distribution) is `analysis.variance`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy import stats
from statsmodels.stats.contingency_tables import mcnemar
from statsmodels.stats.proportion import proportion_confint

from analysis.spending import Design
from analysis.variance import (
    DEFAULT_POPULATION,
    POPULATIONS,
    SAME,
    Pool,
    Population,
    Spread,
    pooled_family,
    sample_terms,
    seed_spread,
)
from pclc.contract import DEFAULT_MARGIN

ALPHA = 0.05  # the family-wise error rate of the verdict's claims
LEVEL = 1 - ALPHA  # the family's confidence level (0.95): every interval's, before the correction for several
POWER = 0.80  # an *inconclusive* comparison says what difference it had this chance of detecting
MARGIN = DEFAULT_MARGIN  # the equivalence margin where a sweep names none: 3 points of accuracy
CORRECTION_NAME = "Bonferroni"

Outcome = Literal["better", "worse", "equivalent", "inconclusive"]
OUTCOMES: tuple[Outcome, ...] = ("better", "worse", "equivalent", "inconclusive")

METHODS = {
    "run": "Wilson score interval over the run's samples (statsmodels proportion_confint)",
    "seeds": "paired t over seeds of the per-seed difference on the same samples (scipy.stats.t); where every "
    "seed's difference is the same, the exact sign-flip test over seeds (2 of its 2^seeds sign patterns)",
    "one_seed": "one seed: exact McNemar test on the discordant samples (statsmodels mcnemar) and a paired percentile "
    "bootstrap interval (scipy.stats.bootstrap): about two trained networks, never a verdict on configurations",
    "pooled": "t over seeds on the seed × arm variance pooled over the arms of one training mode in a two-way "
    "layout (arm + seed, (a − 1)(s − 1) df), where Levene's test finds them spreading alike (analysis.variance)",
    "distribution": "about the test distribution: a crossed seed × sample variance term from the per-sample "
    "differences added to the seeds' (method of moments, Satterthwaite df; analysis.variance)",
    "correction": f"{CORRECTION_NAME} over the verdict's k comparisons: each interval at level 1 − α/k, "
    "the words read off it (equivalence: two one-sided tests against ±margin on the same interval)",
    "sequential": "a group-sequential design over seeds: α/k spent over the looks by the Lan–DeMets "
    "O'Brien–Fleming-type function, each look's interval the repeated confidence interval (analysis.spending)",
}


@dataclass(frozen=True)
class Estimate:
    """An accuracy (or a difference of two) with its interval and what the interval is over."""

    value: float
    low: float
    high: float
    method: str  # a key of METHODS (or "seeds" for a mean over seeds)
    n: int  # seeds, or samples for a single run
    df: float = math.nan  # the t interval's degrees of freedom (NaN: not a t interval)

    def text(self, *, points: bool = False) -> str:
        """'52.1 % [47.0, 57.2]' or, for a difference, '−3.4 points [−7.9, +1.1]' (an unbounded end: ∞)."""
        if points:
            return f"{_signed(100 * self.value)} points [{_signed(100 * self.low)}, {_signed(100 * self.high)}]"
        return f"{100 * self.value:.1f} % [{100 * self.low:.1f}, {100 * self.high:.1f}]"


@dataclass(frozen=True)
class Comparison:
    """One configuration against one reference on the same samples: the difference (a − b) with the interval
    its outcome was read from, the raw and corrected p-values of "no difference", and what it could detect."""

    difference: Estimate
    p_value: float
    p_corrected: float  # × k (Bonferroni), at most 1: below α exactly where the interval excludes 0
    outcome: Outcome
    level: float  # the interval's confidence level (1 − α/k)
    margin: float  # the equivalence margin, in the metric's units
    detectable: float  # the smallest |difference| this design detects with POWER (NaN: one seed, or no spread)
    seeds_needed: int | None = None  # seeds an exact sign-flip test needs to decide at `level` (no spread)
    population: Population = DEFAULT_POPULATION  # what the claim is about (analysis.variance.POPULATIONS)

    @property
    def words(self) -> str:
        """'better', 'worse', 'equivalent within ±3.0 points' or 'inconclusive'."""
        return f"equivalent within ±{100 * self.margin:.1f} points" if self.outcome == "equivalent" else self.outcome

    def why_inconclusive(self) -> str:
        """What an *inconclusive* design could have told: its detectable difference, or why it has none."""
        if self.difference.method == "one_seed":
            return "one seed compares two trained networks, not configurations: a verdict needs at least 2 seeds"
        if self.seeds_needed is not None:
            return (
                f"every seed gave the same difference: only an exact sign-flip test applies, which needs "
                f"{self.seeds_needed} seeds to decide at this level"
            )
        if math.isfinite(self.detectable):
            return (
                f"this design detects a difference of {100 * self.detectable:.1f} points with {100 * POWER:.0f} % power"
            )
        return "no interval could be formed"


def _signed(x: float) -> str:
    if math.isinf(x):
        return "+∞" if x > 0 else "−∞"
    return f"{x:+.1f}".replace("-", "−")


def run_interval(correct: np.ndarray) -> Estimate:
    """The accuracy of one run over its scored samples (bools), with a Wilson interval."""
    correct = np.asarray(correct, dtype=bool)
    if correct.size == 0:
        raise ValueError("no scored samples: an accuracy needs at least one")
    k, n = int(correct.sum()), int(correct.size)
    low, high = proportion_confint(k, n, alpha=ALPHA, method="wilson")
    return Estimate(k / n, float(low), float(high), "run", n)


@dataclass(frozen=True)
class Evidence:
    """One comparison's data before the family's correction: the per-seed differences a − b (several seeds),
    or one seed's per-sample differences."""

    diffs: np.ndarray
    method: Literal["seeds", "one_seed"]
    table: tuple[tuple[int, int], tuple[int, int]] | None = None  # one seed: McNemar's 2×2 table
    spread: Spread | None = None  # several seeds: the variance of the mean difference (None: the seeds' own)
    per_sample: np.ndarray | None = None  # several seeds on per-sample outcomes: seeds × samples differences

    @property
    def value(self) -> float:
        return float(np.mean(self.diffs))

    @property
    def n(self) -> int:
        return len(self.diffs)


def evidence(
    a: Sequence[np.ndarray | float], b: Sequence[np.ndarray | float], *, population: Population = DEFAULT_POPULATION
) -> Evidence:
    """The paired evidence of `a` against `b`: `a[i]` and `b[i]` are one seed's per-sample correctness (bools)
    on the same samples, or that seed's accuracy. A claim about the test `population` "distribution" adds the
    crossed seed × sample term (needs per-sample outcomes of the same samples on every seed)."""
    if population not in POPULATIONS:
        raise ValueError(f"unknown population {population!r}: use one of {sorted(POPULATIONS)}")
    if len(a) != len(b) or not a:
        raise ValueError(f"need the same seeds on both sides, at least one: got {len(a)} and {len(b)}")
    for x, y in zip(a, b):
        if np.ndim(x) != np.ndim(y) or np.shape(x) != np.shape(y) or np.size(x) == 0:
            raise ValueError(
                f"a paired comparison needs the same samples on both sides: got {np.shape(x)} and {np.shape(y)}"
            )
    if len(a) >= 2:
        diffs = np.array([_accuracy(x) - _accuracy(y) for x, y in zip(a, b)])
        same = len({np.shape(x) for x in a}) == 1 and np.ndim(a[0]) == 1
        per_sample = np.array([np.asarray(x, dtype=float) - np.asarray(y, dtype=float) for x, y in zip(a, b)])
        per_sample = per_sample if same else None
        spread = seed_spread(diffs)
        if population == "distribution":
            if per_sample is None:
                raise ValueError("a claim about the test distribution needs per-sample outcomes of the same samples")
            spread = Spread(spread.terms + sample_terms(per_sample), population="distribution")
        return Evidence(diffs, "seeds", spread=spread, per_sample=per_sample)
    if np.ndim(a[0]) != 1:
        raise ValueError("one seed: a paired comparison needs its per-sample outcomes, not only its accuracy")
    x, y = np.asarray(a[0], dtype=bool), np.asarray(b[0], dtype=bool)
    table = ((int((x & y).sum()), int((x & ~y).sum())), (int((~x & y).sum()), int((~x & ~y).sum())))
    return Evidence(x.astype(float) - y.astype(float), "one_seed", table)


def _accuracy(x: np.ndarray | float) -> float:
    return float(np.mean(np.asarray(x, dtype=float))) if np.ndim(x) else float(x)


def sign_flip_p(diffs: np.ndarray) -> float:
    """Two-sided exact sign-flip p of "mean 0" over seeds (every one of the 2^n sign patterns; n ≤ 16)."""
    n = len(diffs)
    if n > 16:
        raise ValueError(f"{n} seeds: the exact sign-flip test enumerates 2^n patterns; use the t-test")
    signs = 1 - 2 * ((np.arange(2**n)[:, None] >> np.arange(n)) & 1)
    means = np.abs((signs * diffs).mean(axis=1))
    return float(np.mean(means >= abs(np.mean(diffs)) - SAME / 2))


def decide(
    ev: Evidence, *, level: float, margin: float, higher_is_better: bool = True, alpha: float | None = None
) -> Comparison:
    """One comparison's interval at `level`, its p-values and its outcome (module docstring). `alpha` is the
    family's error rate: the corrected p is p × alpha / (1 − level), below alpha exactly where the interval
    excludes 0 (× k for Bonferroni's fixed design; None: the comparison alone, p itself)."""
    tail = (1 - level) / 2
    value, seeds_needed, df = ev.value, None, math.nan
    spread = ev.spread if ev.spread is not None else (seed_spread(ev.diffs) if ev.method == "seeds" else None)
    if ev.method == "one_seed":
        p = float(mcnemar(ev.table, exact=True).pvalue)
        if np.ptp(ev.diffs) == 0:  # every sample the same: the bootstrap has nothing to resample
            low = high = value
        else:
            ci = stats.bootstrap(
                (ev.diffs,), np.mean, confidence_level=level, method="percentile", rng=np.random.default_rng(0)
            ).confidence_interval
            low, high = float(ci.low), float(ci.high)
        detectable = math.nan
    elif spread.variance == 0:  # no spread over seeds: the t-test is undefined, the sign-flip test is exact
        p = 1.0 if abs(value) < SAME else sign_flip_p(ev.diffs)
        decided = p <= 1 - level
        low, high = (value, value) if decided else (-math.inf, math.inf)
        # 2 / 2^n ≤ 1 − level (a look that spends nothing can never decide)
        seeds_needed = None if decided or level >= 1 else math.ceil(math.log2(2 / (1 - level)))
        detectable = math.nan
    else:  # Student t on the spread's degrees of freedom: the pair's seeds, pooled arms, or with a sample term
        df = spread.df
        se = math.sqrt(spread.variance) if spread.variance >= 0 else math.nan
        t = value / se
        p = float(2 * stats.t.sf(abs(t), df))
        half = float(stats.t.ppf(1 - tail, df)) * se
        low, high = value - half, value + half
        detectable = (float(stats.t.ppf(1 - tail, df)) + float(stats.t.ppf(POWER, df))) * se
    outcome: Outcome = "inconclusive"
    if ev.method == "seeds" and math.isfinite(value) and not (math.isnan(low) or math.isnan(high)):
        good, bad = (low > 0, high < 0) if higher_is_better else (high < 0, low > 0)
        if good:
            outcome = "better"
        elif bad:
            outcome = "worse"
        elif -margin < low and high < margin:
            outcome = "equivalent"
    method = ev.method if spread is None or spread.method == "seeds" else spread.method
    return Comparison(
        difference=Estimate(value, low, high, method, ev.n, df),
        p_value=p,
        p_corrected=_corrected(p, level, alpha),
        outcome=outcome,
        level=level,
        margin=margin,
        detectable=detectable,
        seeds_needed=seeds_needed,
        population=spread.population if spread is not None else DEFAULT_POPULATION,
    )


def judge(
    evidences: Sequence[Evidence],
    design: Design,
    *,
    look: int = 0,
    margin: float = MARGIN,
    higher_is_better: bool = True,
) -> list[Comparison]:
    """Comparisons of one family judged at look `look` of `design`: each on the look's interval (the fixed
    design's one look: Bonferroni at 1 − α/k; a sequential design's: the repeated confidence interval), the
    words read off it. One code path for both (analysis.sequential calls it look by look)."""
    if not margin > 0:
        raise ValueError(f"the equivalence margin must be > 0, got {margin}")
    level = design.level(look)
    return [
        decide(ev, level=level, margin=margin, higher_is_better=higher_is_better, alpha=design.alpha)
        for ev in evidences
    ]


def _corrected(p: float, level: float, alpha: float | None) -> float:
    """p on the family's scale: p × alpha / (1 − level), at most 1 (below alpha where the interval excludes 0)."""
    if alpha is None or not math.isfinite(p):
        return p
    return 1.0 if level >= 1 else min(1.0, p * alpha / (1 - level))


def compare(
    pairs: Sequence[tuple[Sequence[np.ndarray | float], Sequence[np.ndarray | float]]],
    *,
    alpha: float = ALPHA,
    margin: float = MARGIN,
    higher_is_better: bool = True,
    population: Population = DEFAULT_POPULATION,
    names: Sequence[tuple[str, str]] | None = None,
    pools: Sequence[Pool] = (),
) -> list[Comparison]:
    """Each (configuration, reference) pair compared on a simultaneous interval: the fixed design (one look),
    Bonferroni over the pairs, each at level 1 − alpha/k, the outcome read off it (module docstring). With
    `names` ((arm, reference) per pair) and `pools` (`analysis.variance.pool`), a pair of arms of one pooled group
    uses the group's seed × arm variance."""
    if not pairs:
        return []
    if not margin > 0:
        raise ValueError(f"the equivalence margin must be > 0, got {margin}")
    evidences = [evidence(a, b, population=population) for a, b in pairs]
    if pools and names is not None:
        evidences = pooled_family(names, evidences, pools)
    design = Design.fixed(max(ev.n for ev in evidences), alpha=alpha, comparisons=len(pairs))
    return judge(evidences, design, margin=margin, higher_is_better=higher_is_better)


def paired_difference(
    a: Sequence[np.ndarray | float], b: Sequence[np.ndarray | float], *, level: float = LEVEL
) -> tuple[Estimate, float]:
    """One comparison alone (no family): (difference with its interval at `level`, two-sided p-value)."""
    result = decide(evidence(a, b), level=level, margin=MARGIN)
    return result.difference, result.p_value
