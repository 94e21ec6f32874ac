"""analysis.variance: the pooled two-way layout (arm + seed) against statsmodels' OLS, Levene's pre-test and its
fallback, the crossed seed × sample term against statsmodels' ANOVA, and both calibrated on simulated per-sample
outcomes (false claims, coverage)."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import statsmodels.formula.api as smf
from statsmodels.stats.anova import anova_lm

from analysis.compare import compare, evidence, judge
from analysis.spending import Design
from analysis.variance import HOMOGENEOUS, pool, pooled_family, sample_terms

pytestmark = pytest.mark.timeout(120)

_spec = importlib.util.spec_from_file_location(
    "verdict_calibration", Path(__file__).resolve().parents[1] / "benchmarks" / "verdict_calibration.py"
)
calibration = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(calibration)
NAMES = ("ref", "arm1", "arm2", "arm3")
COMPARISONS = [("arm1", "ref"), ("arm2", "ref"), ("arm3", "ref")]


def _long(table: dict[str, list[float]]) -> pd.DataFrame:
    return pd.DataFrame(
        [(arm, s, y) for arm, ys in table.items() for s, y in enumerate(ys)], columns=["arm", "seed", "y"]
    )


def test_the_pooled_variance_is_the_two_way_layouts_residual_mean_square() -> None:
    rng = np.random.default_rng(4)
    table = {arm: list(0.6 + 0.02 * i + rng.normal(0, 0.04, 5)) for i, arm in enumerate(NAMES)}
    fit = smf.ols("y ~ C(arm) + C(seed)", data=_long(table)).fit()
    group = pool("standard", table)
    assert group.variance == pytest.approx(fit.mse_resid, rel=1e-10) and group.df == fit.df_resid == 12
    # with two arms the layout is the paired t: 2σ̂²/s is the variance of the mean per-seed difference
    two = pool("two", {"a": table["arm1"], "b": table["ref"]})
    d = np.subtract(table["arm1"], table["ref"])
    assert 2 * two.variance / 5 == pytest.approx(np.var(d, ddof=1) / 5) and not two.pooled
    assert "at least 3 arms" in two.sentence()


def test_arms_that_spread_alike_are_pooled_and_say_so_others_fall_back() -> None:
    rng = np.random.default_rng(5)
    alike = {arm: list(0.6 + rng.normal(0, 0.04, 10)) for arm in NAMES}
    unalike = {**alike, "arm3": list(0.6 + rng.normal(0, 0.40, 10))}
    good, bad = pool("standard", alike), pool("standard", unalike)
    assert good.pooled and good.p_levene >= HOMOGENEOUS and "spread alike" in good.sentence()
    assert "27 degrees of freedom" in good.sentence() and "two-way layout (arm + seed)" in good.sentence()
    assert not bad.pooled and bad.p_levene < HOMOGENEOUS and "do not spread alike" in bad.sentence()
    # within a pooled group the comparison says pooled, on (a − 1)(s − 1) df; across groups it keeps its pair
    evs = [evidence(alike[a], alike[r]) for a, r in COMPARISONS] + [evidence(alike["arm1"], alike["arm2"])]
    names = [*COMPARISONS, ("arm1", "other")]
    out = judge(pooled_family(names, evs, [good]), Design.fixed(10, comparisons=4))
    assert [c.difference.method for c in out] == ["pooled", "pooled", "pooled", "seeds"]
    assert out[0].difference.df == 27 and out[3].difference.df == 9
    se = math.sqrt(2 * good.variance / 10)
    assert out[0].detectable == pytest.approx(
        (calibration.stats.t.ppf(1 - 0.05 / 8, 27) + calibration.stats.t.ppf(0.8, 27)) * se
    )
    assert judge(pooled_family(names, evs, [bad]), Design.fixed(10, comparisons=4)) == compare(
        [(alike[a], alike[r]) for a, r in COMPARISONS] + [(alike["arm1"], alike["arm2"])]
    )


def test_the_seed_by_sample_term_is_the_crossed_anovas() -> None:
    """Var of the mean difference over the test distribution = (MS_seed + MS_sample − MS_res) / (S·J), the mean
    squares as statsmodels' two-way ANOVA gives them; it is added to the seeds' term, never below it."""
    rng = np.random.default_rng(6)
    difficulty = rng.normal(0, 1, 40)
    a = [difficulty + rng.normal(0, 1, 40) < 0.4 + 0.1 * s for s in range(4)]
    b = [difficulty + rng.normal(0, 1, 40) < 0.1 * s for s in range(4)]
    d = np.array([x.astype(float) - y for x, y in zip(a, b)])
    frame = pd.DataFrame([(s, j, d[s, j]) for s in range(4) for j in range(40)], columns=["seed", "sample", "d"])
    table = anova_lm(smf.ols("d ~ C(seed) + C(sample)", data=frame).fit())
    ms = table["mean_sq"]
    terms = sample_terms(d)
    assert sum(v for v, _ in terms) == pytest.approx((ms["C(sample)"] - ms["Residual"]) / 160)
    (here,) = compare([(a, b)])
    (there,) = compare([(a, b)], population="distribution")
    assert here.population == "samples" and there.population == "distribution"
    assert there.difference.value == here.difference.value
    assert there.difference.low <= here.difference.low and there.difference.high >= here.difference.high
    total = ms["C(seed)"] + max(ms["C(sample)"], ms["Residual"]) - ms["Residual"]
    half = (there.difference.high - there.difference.low) / 2
    assert half == pytest.approx(calibration.stats.t.ppf(0.975, there.difference.df) * math.sqrt(total / 160))
    with pytest.raises(ValueError, match="per-sample outcomes"):
        compare([([0.5, 0.6], [0.4, 0.5])], population="distribution")
    with pytest.raises(ValueError, match="unknown population"):
        compare([(a, b)], population="world")


@pytest.mark.parametrize(("seeds", "samples"), [(3, 80), (5, 256)])
@pytest.mark.parametrize("rho", [0.5, 0.85])
def test_pooled_false_claims_stay_below_alpha_and_intervals_cover(seeds: int, samples: int, rho: float) -> None:
    """Four arms of one mode, all alike: any false *better*/*worse* among the three pooled comparisons at most 5 %
    (within Monte-Carlo error), and the pooled interval covers the true difference at least 93 % of the time."""
    rng = np.random.default_rng([seeds, samples, int(100 * rho), 5])
    design = Design.fixed(seeds, comparisons=3)
    reps, false, covered, pooled = 400, 0, 0, 0
    for _ in range(reps):
        runs, truth, _ = calibration.simulate_arms(rng, means=(0.6,) * 4, seeds=seeds, samples=samples, rho=rho)
        group = pool("standard", {n: [x.mean() for x in r] for n, r in zip(NAMES, runs)})
        pooled += group.pooled
        out = judge(pooled_family(COMPARISONS, [evidence(r, runs[0]) for r in runs[1:]], [group]), design)
        false += any(c.outcome in ("better", "worse") for c in out)
        covered += out[0].difference.low <= truth[1] - truth[0] <= out[0].difference.high
    assert pooled / reps > 0.8  # alike arms are pooled most of the time
    assert false / reps <= 0.05 + 2 * math.sqrt(0.05 * 0.95 / reps), false / reps
    assert covered / reps >= 0.93, covered / reps


@pytest.mark.parametrize(("seeds", "samples"), [(3, 80), (5, 256)])
def test_a_claim_about_the_test_distribution_covers_its_difference(seeds: int, samples: int) -> None:
    """A true 5-point difference: the interval about the test distribution covers the distribution's difference
    at least 93 % of the time."""
    rng = np.random.default_rng([seeds, samples, 9])
    reps, covered = 400, 0
    for _ in range(reps):
        (a, b), _, dist = calibration.simulate_arms(rng, means=(0.625, 0.575), seeds=seeds, samples=samples, rho=0.5)
        (c,) = compare([(a, b)], population="distribution")
        covered += c.difference.low <= dist[0] - dist[1] <= c.difference.high
    assert covered / reps >= 0.93, covered / reps
