"""The statistics behind a sweep's verdict: paired comparisons against a reference, the correction for
making several of them, and one run's interval (means over seeds are `analysis.stats`). Every number is a library call (scipy,
statsmodels), named in `METHODS` so the report can say which; nothing here is re-derived by hand.

Why paired: two configurations scored on the same samples share each sample's difficulty, so their
difference is far less noisy than two independent accuracies. Why over seeds: on digits the same
configuration spreads 2–9 points from seed to seed, more than one run's sample noise, so with several
seeds the unit of replication is the seed (the per-seed paired difference), not the sample.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy import stats
from statsmodels.stats.contingency_tables import mcnemar
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.proportion import proportion_confint

LEVEL = 0.95  # every interval's confidence level
ALPHA = 1 - LEVEL  # a comparison is *better* or *worse* when its corrected p-value is below this
CORRECTION = "holm"  # statsmodels' multipletests method: family-wise error over a sweep's comparisons

Outcome = Literal["better", "tied", "worse"]

METHODS = {
    "run": "Wilson score interval over the run's samples (statsmodels proportion_confint)",
    "paired_seeds": "paired t-test over seeds of the per-seed difference on the same samples (scipy.stats.ttest_1samp)",
    "paired_run": "exact McNemar test on the discordant samples (statsmodels mcnemar), "
    "percentile bootstrap interval of the paired difference (scipy.stats.bootstrap, paired)",
    "correction": f"{CORRECTION.capitalize()} correction over the sweep's comparisons (statsmodels multipletests)",
}


@dataclass(frozen=True)
class Estimate:
    """An accuracy (or a difference of two) with its 95 % interval and what the interval is over."""

    value: float
    low: float
    high: float
    method: str  # a key of METHODS
    n: int  # seeds, or samples for a single run

    def text(self, *, points: bool = False) -> str:
        """'52.1 % [47.0, 57.2]' or, for a difference, '−3.4 points [−7.9, +1.1]'."""
        if points:
            return f"{_signed(100 * self.value)} points [{_signed(100 * self.low)}, {_signed(100 * self.high)}]"
        return f"{100 * self.value:.1f} % [{100 * self.low:.1f}, {100 * self.high:.1f}]"


@dataclass(frozen=True)
class Comparison:
    """One configuration against one reference, on the same samples: the difference (a − b) in accuracy,
    its interval, the raw and corrected p-values and the outcome."""

    difference: Estimate
    p_value: float
    p_corrected: float
    outcome: Outcome


def _signed(x: float) -> str:
    return f"{x:+.1f}".replace("-", "−")


def run_interval(correct: np.ndarray) -> Estimate:
    """The accuracy of one run over its scored samples (bools), with a Wilson interval."""
    correct = np.asarray(correct, dtype=bool)
    if correct.size == 0:
        raise ValueError("no scored samples: an accuracy needs at least one")
    k, n = int(correct.sum()), int(correct.size)
    low, high = proportion_confint(k, n, alpha=ALPHA, method="wilson")
    return Estimate(k / n, float(low), float(high), "run", n)


def paired_difference(
    a: Sequence[np.ndarray | float], b: Sequence[np.ndarray | float], *, seed: int = 0
) -> tuple[Estimate, float]:
    """Accuracy of `a` minus accuracy of `b`, seed by seed on the same samples: (difference, p-value).

    `a[i]` and `b[i]` are one seed's per-sample correctness (bools) on the same samples, or, with several
    seeds, that seed's accuracy. With several seeds the test is a paired t-test over the per-seed
    differences; with one, an exact McNemar test on the samples the two runs disagree on, with a
    bootstrap interval of the paired difference. `seed` fixes the bootstrap's resampling.
    """
    if len(a) != len(b) or not a:
        raise ValueError(f"need the same seeds on both sides, at least one: got {len(a)} and {len(b)}")
    for x, y in zip(a, b):
        if np.ndim(x) != np.ndim(y) or np.shape(x) != np.shape(y) or np.size(x) == 0:
            raise ValueError(
                f"a paired comparison needs the same samples on both sides: got {np.shape(x)} and {np.shape(y)}"
            )
    if len(a) >= 2:
        diffs = np.array([_accuracy(x) - _accuracy(y) for x, y in zip(a, b)])
        if np.all(diffs == diffs[0]):  # no spread over seeds: the t-test is undefined
            p = 1.0 if diffs[0] == 0 else 0.0
            return Estimate(float(diffs[0]), float(diffs[0]), float(diffs[0]), "paired_seeds", len(diffs)), p
        test = stats.ttest_1samp(diffs, 0.0)
        ci = test.confidence_interval(LEVEL)
        estimate = Estimate(float(diffs.mean()), float(ci.low), float(ci.high), "paired_seeds", len(diffs))
        return estimate, float(test.pvalue)
    if np.ndim(a[0]) != 1:
        raise ValueError("one seed: a paired comparison needs its per-sample outcomes, not only its accuracy")
    x, y = np.asarray(a[0], dtype=bool), np.asarray(b[0], dtype=bool)
    only_a, only_b = int((x & ~y).sum()), int((~x & y).sum())
    table = [[int((x & y).sum()), only_a], [only_b, int((~x & ~y).sum())]]
    p = float(mcnemar(table, exact=True).pvalue)
    d = x.astype(float) - y.astype(float)
    if np.all(d == d[0]):  # identical per-sample differences: the bootstrap has nothing to resample
        return Estimate(float(d.mean()), float(d.mean()), float(d.mean()), "paired_run", d.size), p
    ci = stats.bootstrap(
        (d,), np.mean, confidence_level=LEVEL, method="percentile", rng=np.random.default_rng(seed)
    ).confidence_interval
    return Estimate(float(d.mean()), float(ci.low), float(ci.high), "paired_run", int(d.size)), p


def _accuracy(x: np.ndarray | float) -> float:
    return float(np.mean(np.asarray(x, dtype=float))) if np.ndim(x) else float(x)


def compare(
    pairs: Sequence[tuple[Sequence[np.ndarray | float], Sequence[np.ndarray | float]]], *, alpha: float = ALPHA
) -> list[Comparison]:
    """Each (configuration, reference) pair compared, the p-values corrected together (Holm).

    The outcome is *better* or *worse* only when the corrected p-value is below `alpha`; a difference
    that could be noise is *tied*, whatever its sign.
    """
    if not pairs:
        return []
    raw = [paired_difference(a, b) for a, b in pairs]
    corrected = multipletests([p for _, p in raw], alpha=alpha, method=CORRECTION)[1]
    out = []
    for (difference, p), q in zip(raw, corrected):
        outcome: Outcome = "tied" if q >= alpha else ("better" if difference.value > 0 else "worse")
        out.append(Comparison(difference=difference, p_value=p, p_corrected=float(q), outcome=outcome))
    return out
