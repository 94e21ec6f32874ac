"""Where a comparison's variance comes from: the seeds of the pair alone (the default), the seeds of every arm of
one training mode pooled in a two-way layout where they spread alike, and, for a claim about the test
distribution rather than the evaluated samples, a crossed seed × sample term.

Pooling (item 5 of issue 27): the per-seed accuracies y[arm, seed] of the arms of one training mode, all on the
same seeds, fit the additive two-way layout arm + seed; its residual mean square σ̂² (df (a − 1)(s − 1)) estimates
the seed × arm variance every paired difference shares, Var(ȳⱼ − ȳᵣ) = 2σ̂²/s, where the arms spread alike. Whether
they do is checked first, by the Brown–Forsythe form of Levene's test on each arm's residuals (Levene 1960; Brown
& Forsythe 1974, JASA 69:364; `scipy.stats.levene(center="median")`); below `HOMOGENEOUS` the comparisons fall
back to their own pairs. With two arms the layout is the paired t itself, so pooling needs three or more.

Population: a paired difference over seeds is about *these evaluated test samples*: the samples are fixed, the
seeds vary. A claim about *the test distribution* treats the samples as drawn too: the per-sample differences
d[seed, sample] are a crossed two-way random layout (seed, sample, residual), and the variance of their mean is
(MS_seed + MS_sample − MS_res) / (S·J) (method of moments, the sample component cut at 0), its degrees of freedom
by Satterthwaite (1946, Biometrics Bulletin 2:110), capped at the seed term's own so that the wider claim never
gets the narrower interval.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Literal

import numpy as np
from scipy import stats

if TYPE_CHECKING:  # analysis.compare imports this module: the type only, no import at run time
    from analysis.compare import Evidence

Population = Literal["samples", "distribution"]
POPULATIONS: dict[str, str] = {
    "samples": "these evaluated test samples (seeds vary, the samples are fixed)",
    "distribution": "the test distribution (seeds and samples both vary: a crossed seed × sample variance term)",
}
DEFAULT_POPULATION: Population = "samples"
HOMOGENEOUS = 0.10  # Levene's p at or above which the arms of a mode count as spreading alike (a lenient pre-test)
SAME = 1e-6  # per-seed differences closer than this are equal (float32 accuracies differ by ~1e-8 when equal)


@dataclass(frozen=True)
class Spread:
    """The variance of one comparison's mean difference as a sum of terms, each (value, degrees of freedom):
    the seed term first, then any sample terms (a term may be negative: a method-of-moments difference)."""

    terms: tuple[tuple[float, float], ...]
    method: Literal["seeds", "pooled"] = "seeds"
    population: Population = "samples"

    @property
    def variance(self) -> float:
        return float(sum(v for v, _ in self.terms))

    @property
    def df(self) -> float:
        """Satterthwaite's degrees of freedom of the sum, at most the seed term's: a claim about a wider
        population never gets a narrower interval from the sample term's many degrees of freedom."""
        if len(self.terms) == 1:
            return self.terms[0][1]
        den = sum(v * v / d for v, d in self.terms if d > 0)
        return min(float(self.variance**2 / den), self.terms[0][1]) if den > 0 else math.nan


def seed_spread(diffs: np.ndarray) -> Spread:
    """The paired default: the variance of the mean of the per-seed differences, n − 1 df (exactly 0 where
    every seed gave the same difference: then only an exact test applies)."""
    n = len(diffs)
    variance = 0.0 if np.ptp(diffs) < SAME else float(np.var(diffs, ddof=1)) / n
    return Spread(((variance, n - 1),))


def sample_terms(per_sample: np.ndarray) -> tuple[tuple[float, float], ...]:
    """The terms a claim about the test distribution adds to the seed term, from the per-sample differences
    (seeds × samples): (MS_sample − MS_res) / (S·J), as two Satterthwaite terms; none where MS_sample ≤ MS_res
    (no sample component is visible)."""
    d = np.asarray(per_sample, dtype=float)
    s, j = d.shape
    if s < 2 or j < 2:
        raise ValueError(f"a seed × sample term needs at least 2 seeds and 2 samples, got {s} × {j}")
    grand = d.mean()
    by_seed, by_sample = d.mean(axis=1), d.mean(axis=0)
    ms_sample = s * float(np.sum((by_sample - grand) ** 2)) / (j - 1)
    residual = d - by_seed[:, None] - by_sample[None, :] + grand
    ms_res = float(np.sum(residual**2)) / ((s - 1) * (j - 1))
    if not ms_sample > ms_res:
        return ()
    return ((ms_sample / (s * j), j - 1), (-ms_res / (s * j), (s - 1) * (j - 1)))


@dataclass(frozen=True)
class Pool:
    """The arms of one training mode in a two-way layout (arm + seed): their residual variance, whether they
    spread alike enough to pool it, and the sentence that says which."""

    group: str  # the training mode (or any name of the group)
    arms: tuple[str, ...]
    seeds: int
    variance: float  # residual mean square σ̂² of y[arm, seed]
    df: int  # (a − 1)(s − 1)
    p_levene: float  # Brown–Forsythe–Levene p on the arms' residuals (NaN: not tested)
    sds: tuple[float, ...]  # each arm's sd over seeds, for the sentence
    pooled: bool

    def term(self, seeds: int) -> tuple[float, float]:
        """The seed term of one comparison of two of these arms on `seeds` common seeds: (2σ̂²/seeds, df)."""
        return 2 * self.variance / seeds, float(self.df)

    def sentence(self) -> str:
        """What the verdict says about it."""
        spread = f"sd over seeds {100 * min(self.sds):.1f}–{100 * max(self.sds):.1f} points"
        if self.pooled:
            return (
                f"The {len(self.arms)} {self.group} arms spread alike over their {self.seeds} seeds ({spread}; "
                f"Levene p = {self.p_levene:.2g}): their comparisons use the seed × arm variance pooled in a two-way "
                f"layout (arm + seed), {self.df} degrees of freedom."
            )
        why = (
            f"they do not spread alike ({spread}; Levene p = {self.p_levene:.2g} < {HOMOGENEOUS})"
            if math.isfinite(self.p_levene)
            else "pooling needs at least 3 arms on at least 2 common seeds"
        )
        return f"The {self.group} arms' comparisons use each pair's own seeds: {why}."


def pool(group: str, per_seed: Mapping[str, Sequence[float]]) -> Pool:
    """The two-way layout of `per_seed` (arm → its accuracies on the same seeds, in the same order)."""
    arms = tuple(per_seed)
    y = np.array([np.asarray(per_seed[a], dtype=float) for a in arms]) if arms else np.zeros((0, 0))
    a, s = y.shape
    sds = tuple(float(np.std(row, ddof=1)) if s >= 2 else math.nan for row in y)
    if a < 2 or s < 2 or not np.all(np.isfinite(y)):
        return Pool(group, arms, s, math.nan, 0, math.nan, sds, False)
    residual = y - y.mean(axis=1, keepdims=True) - y.mean(axis=0, keepdims=True) + y.mean()
    df = (a - 1) * (s - 1)
    variance = float(np.sum(residual**2)) / df
    if a < 3 or variance < SAME**2:  # two arms: the paired t already; no spread: each pair's exact test decides
        return Pool(group, arms, s, variance, df, math.nan, sds, False)
    p = float(stats.levene(*residual, center="median").pvalue)
    p = 1.0 if math.isnan(p) else p  # every arm's residuals alike to rounding: nothing says they differ
    return Pool(group, arms, s, variance, df, p, sds, p >= HOMOGENEOUS)


def pooled_evidence(ev: Evidence, group: Pool) -> Evidence:
    """The same comparison with its seed term replaced by the pool's 2σ̂²/n on (a − 1)(s − 1) df (a sample term,
    for a claim about the test distribution, kept); unchanged where the group is not pooled or `ev` is one seed."""
    if not group.pooled or ev.method != "seeds" or ev.spread is None:
        return ev
    terms = (group.term(ev.n), *ev.spread.terms[1:])
    return replace(ev, spread=Spread(terms, method="pooled", population=ev.spread.population))


def pooled_family(
    comparisons: Sequence[tuple[str, str]], evidences: Sequence[Evidence], pools: Sequence[Pool]
) -> list[Evidence]:
    """Each comparison's evidence, pooled where both its arms belong to one pooled group (the arms of one
    training mode); a comparison across groups (an adversarially trained arm against plain CE) keeps its own."""
    member = {arm: p for p in pools if p.pooled for arm in p.arms}
    out = []
    for (arm, ref), ev in zip(comparisons, evidences, strict=True):
        shared = member.get(arm)
        out.append(pooled_evidence(ev, shared) if shared is not None and member.get(ref) is shared else ev)
    return out
