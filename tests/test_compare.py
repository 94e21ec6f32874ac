"""analysis.compare: the verdict's statistics, checked against scipy and statsmodels on fixed numbers, and
calibrated on simulated per-sample outcomes (false claims, equivalence, coverage)."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from analysis.compare import MARGIN, METHODS, compare, decide, evidence, paired_difference, run_interval, sign_flip_p

pytestmark = pytest.mark.timeout(120)


def _vectors(n_both: int, only_a: int, only_b: int, n_neither: int) -> tuple[np.ndarray, np.ndarray]:
    a = np.array([True] * n_both + [True] * only_a + [False] * only_b + [False] * n_neither)
    b = np.array([True] * n_both + [False] * only_a + [True] * only_b + [False] * n_neither)
    return a, b


def test_one_seed_is_an_exact_mcnemar_test_and_never_a_verdict_on_configurations() -> None:
    # 96 samples, the two runs disagree on 13: 10 only a gets right, 3 only b does.
    a, b = _vectors(40, 10, 3, 43)
    diff, p = paired_difference([a], [b])
    assert p == pytest.approx(stats.binomtest(3, 13, 0.5).pvalue, rel=1e-12)  # exact McNemar, as scipy says
    assert diff.value == pytest.approx(7 / 96) and diff.method == "one_seed" and diff.n == 96
    assert diff.low < diff.value < diff.high
    assert paired_difference([a], [b]) == (diff, p)  # the bootstrap is seeded: the same interval twice
    clear = _vectors(40, 30, 2, 24)  # 30 vs 2 discordant: p ≈ 1e-7, yet one seed judges no configuration
    (result,) = compare([([clear[0]], [clear[1]])])
    assert result.p_value < 1e-6 and result.outcome == "inconclusive"
    assert "a verdict needs at least 2 seeds" in result.why_inconclusive()


def test_no_disagreement_is_no_evidence() -> None:
    a, _ = _vectors(50, 0, 0, 46)
    diff, p = paired_difference([a], [a.copy()])
    assert (diff.value, diff.low, diff.high, p) == (0.0, 0.0, 0.0, 1.0)


def test_several_seeds_are_a_paired_t_test_over_seeds() -> None:
    rng = np.random.default_rng(1)
    a = [rng.random(256) < q for q in (0.55, 0.60, 0.50, 0.58, 0.52)]
    b = [rng.random(256) < q for q in (0.50, 0.57, 0.49, 0.50, 0.51)]
    diff, p = paired_difference(a, b)
    per_seed_a, per_seed_b = [x.mean() for x in a], [y.mean() for y in b]
    expected = stats.ttest_rel(per_seed_a, per_seed_b)
    assert p == pytest.approx(expected.pvalue, rel=1e-12)
    ci = expected.confidence_interval(0.95)
    assert (diff.low, diff.high) == pytest.approx((ci.low, ci.high), rel=1e-12)
    assert diff.value == pytest.approx(np.mean(per_seed_a) - np.mean(per_seed_b)) and diff.n == 5


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_identical_differences_get_an_exact_sign_flip_p_never_0(dtype: type) -> None:
    """+1 of 80 samples on each of 3 seeds: not '+1.3 points [+1.3, +1.3], better' (p = 0), but the exact
    sign-flip p (2 of 8 patterns), an unbounded interval and how many seeds the exact test needs."""
    ref = np.array([0.5, 0.6125, 0.55], dtype=dtype)
    arm = (ref + dtype(1 / 80)).astype(dtype)  # float32: "identical" differences that differ by ~1e-8
    (result,) = compare([(list(arm), list(ref))])
    assert result.p_value == pytest.approx(0.25) and result.outcome == "inconclusive"
    assert math.isinf(result.difference.low) and math.isinf(result.difference.high)
    assert result.difference.text(points=True) == "+1.2 points [−∞, +∞]"
    assert result.seeds_needed == 6 and "needs 6 seeds" in result.why_inconclusive()
    # with enough seeds the exact test decides: 2 of 2^6 patterns is p = 1/32 < 0.05
    (six,) = compare([([0.6] * 6, [0.55] * 6)])
    assert (
        six.p_value == pytest.approx(1 / 32) and six.outcome == "better" and six.difference.low == six.difference.high
    )
    assert sign_flip_p(np.array([0.1, -0.1, 0.1, 0.1])) == pytest.approx(10 / 16)  # |sum of signs| ≥ 2: 10 of 16


def test_a_nan_is_inconclusive_never_worse() -> None:
    (result,) = compare([([0.5, math.nan, 0.6], [0.4, 0.5, 0.5])])
    assert result.outcome == "inconclusive" and math.isnan(result.p_value)


def test_a_metric_to_minimise_is_better_when_lower() -> None:
    lower = ([0.10, 0.12, 0.11, 0.09], [0.20, 0.21, 0.23, 0.20])
    (as_max,) = compare([lower])
    (as_min,) = compare([lower], higher_is_better=False)
    assert as_max.outcome == "worse" and as_min.outcome == "better"
    assert as_max.difference == as_min.difference  # the numbers are the same; only the words follow the direction


def test_words_are_read_off_the_printed_simultaneous_interval() -> None:
    """Bonferroni over the family: each interval at 1 − α/k; better/worse exactly where it excludes 0 (and the
    corrected p is below α), equivalent exactly where it lies inside ±margin, inconclusive otherwise."""
    rng = np.random.default_rng(7)
    pairs = []
    for shift, spread in [(0.08, 0.01), (-0.08, 0.01), (0.002, 0.004), (0.0, 0.05), (0.02, 0.03), (0.01, 0.002)]:
        b = rng.uniform(0.4, 0.7, 5)
        pairs.append((list(b + shift + rng.normal(0, spread, 5)), list(b)))
    out = compare(pairs)
    assert {c.level for c in out} == {1 - 0.05 / 6}
    for c in out:
        d = c.difference
        assert (c.outcome == "better") == (d.low > 0) and (c.outcome == "worse") == (d.high < 0)
        assert (d.low > 0 or d.high < 0) == (c.p_corrected < 0.05)
        if c.outcome == "equivalent":
            assert d.low > -MARGIN and d.high < MARGIN
        if c.outcome == "inconclusive":
            assert d.low <= 0 <= d.high and not (d.low > -MARGIN and d.high < MARGIN) and c.detectable > 0
    assert [c.outcome for c in out][:3] == ["better", "worse", "equivalent"]
    assert out[3].outcome == "inconclusive"
    alone = decide(evidence(*pairs[4]), level=0.95, margin=MARGIN)
    assert alone.difference.high - alone.difference.low < out[4].difference.high - out[4].difference.low


def test_the_detectable_difference_is_the_t_power_formula() -> None:
    a, b = [0.60, 0.52, 0.57], [0.55, 0.54, 0.50]
    (c,) = compare([(a, b)])
    se = np.std(np.subtract(a, b), ddof=1) / math.sqrt(3)
    assert c.detectable == pytest.approx((stats.t.ppf(0.975, 2) + stats.t.ppf(0.8, 2)) * se)
    assert "detects a difference of" in c.why_inconclusive()


def test_bad_pairs_are_refused_by_name() -> None:
    a, b = _vectors(10, 1, 1, 10)
    with pytest.raises(ValueError, match="same seeds"):
        paired_difference([a, a], [b])
    with pytest.raises(ValueError, match="same samples"):
        paired_difference([a], [b[:-1]])
    with pytest.raises(ValueError, match="margin must be > 0"):
        compare([([0.5, 0.6], [0.5, 0.5])], margin=0)
    assert compare([]) == []


def test_run_interval_is_wilson() -> None:
    from statsmodels.stats.proportion import proportion_confint

    correct = np.array([True] * 50 + [False] * 46)
    est = run_interval(correct)
    assert (est.low, est.high) == pytest.approx(proportion_confint(50, 96, alpha=0.05, method="wilson"))
    assert est.text() == "52.1 % [42.2, 61.8]"
    assert est.method in METHODS
    with pytest.raises(ValueError, match="no scored samples"):
        run_interval(np.array([], dtype=bool))


def test_one_run_accuracies_in_the_report_carry_their_wilson_interval() -> None:
    from statsmodels.stats.proportion import proportion_confint

    from analysis.report import mean_std

    low, high = proportion_confint(26, 48, alpha=0.05, method="wilson")
    assert mean_std(26 / 48, float("nan"), 1, percent=True, samples=48) == (
        f"{100 * 26 / 48:.1f} [{100 * low:.1f}, {100 * high:.1f}] (n=1)"
    )
    assert mean_std(0.5, float("nan"), 1, percent=True) == "50.0 (n=1)"  # sample count unknown: no interval
    assert mean_std(0.5, 0.1, 3, percent=False) == "0.500 [0.252, 0.748]"  # over seeds: Student t


# --------------------------------------------------------------------------- calibration on simulated outcomes
# the audit's model of two arms' per-sample outcomes, one definition: benchmarks/verdict_calibration.py
_spec = importlib.util.spec_from_file_location(
    "verdict_calibration", Path(__file__).resolve().parents[1] / "benchmarks" / "verdict_calibration.py"
)
calibration = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(calibration)
simulate = calibration.simulate


@pytest.mark.parametrize(("seeds", "samples"), [(3, 80), (5, 256)])
@pytest.mark.parametrize("rho", [0.5, 0.85])
def test_false_claims_stay_below_alpha_and_intervals_cover(seeds: int, samples: int, rho: float) -> None:
    """No true difference: *better* or *worse* at most 5 % of the time (within Monte-Carlo error), and the 95 %
    interval covers the true difference on the evaluated samples at least 93 % of the time."""
    rng = np.random.default_rng(20261207)
    reps, false, covered = 1500, 0, 0
    for _ in range(reps):
        a, b, truth = simulate(rng, seeds=seeds, samples=samples, delta=0.0, rho=rho)
        (c,) = compare([(a, b)])
        false += c.outcome in ("better", "worse")
        covered += c.difference.low <= truth <= c.difference.high
    mc = 2 * math.sqrt(0.05 * 0.95 / reps)  # two Monte-Carlo standard errors
    assert false / reps <= 0.05 + mc, false / reps
    assert covered / reps >= 0.93, covered / reps


@pytest.mark.parametrize("rho", [0.5, 0.85])
def test_false_equivalence_stays_below_alpha_at_the_margin(rho: float) -> None:
    """A true difference of one margin (3 points): *equivalent within ±3* at most 5 % of the time, counted where
    the true difference on the evaluated samples is at least the margin."""
    rng = np.random.default_rng(7)
    reps, at_margin, false = 1500, 0, 0
    for _ in range(reps):
        a, b, truth = simulate(rng, seeds=5, samples=256, delta=MARGIN, rho=rho, seed_sd=0.01)
        if abs(truth) < MARGIN:
            continue
        at_margin += 1
        (c,) = compare([(a, b)])
        false += c.outcome == "equivalent"
    assert at_margin > 300
    mc = 2 * math.sqrt(0.05 * 0.95 / at_margin)
    assert false / at_margin <= 0.05 + mc, false / at_margin


def test_a_family_of_null_comparisons_makes_a_false_claim_at_most_alpha_of_the_time() -> None:
    """Six comparisons, none with a true difference: any false *better*, *worse* (or *equivalent*, impossible here:
    the truth is 0) over the family at most 5 %."""
    rng = np.random.default_rng(3)
    reps, any_false = 600, 0
    for _ in range(reps):
        pairs = [simulate(rng, seeds=3, samples=80, delta=0.0, rho=0.5)[:2] for _ in range(6)]
        any_false += any(c.outcome in ("better", "worse") for c in compare(pairs))
    assert any_false / reps <= 0.05 + 2 * math.sqrt(0.05 * 0.95 / reps), any_false / reps
