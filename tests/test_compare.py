"""analysis.compare: the verdict's statistics, checked against scipy and statsmodels on fixed numbers."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from analysis.compare import METHODS, compare, paired_difference, run_interval


def _vectors(n_both: int, only_a: int, only_b: int, n_neither: int) -> tuple[np.ndarray, np.ndarray]:
    a = np.array([True] * n_both + [True] * only_a + [False] * only_b + [False] * n_neither)
    b = np.array([True] * n_both + [False] * only_a + [True] * only_b + [False] * n_neither)
    return a, b


def test_one_seed_is_an_exact_mcnemar_test() -> None:
    # 96 samples, the two runs disagree on 13: 10 only a gets right, 3 only b does.
    a, b = _vectors(40, 10, 3, 43)
    diff, p = paired_difference([a], [b])
    assert p == pytest.approx(stats.binomtest(3, 13, 0.5).pvalue, rel=1e-12)  # exact McNemar, as scipy says
    assert diff.value == pytest.approx(7 / 96) and diff.method == "paired_run" and diff.n == 96
    assert diff.low < diff.value < diff.high
    assert paired_difference([a], [b]) == (diff, p)  # the bootstrap is seeded: the same interval twice


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


def test_bad_pairs_are_refused_by_name() -> None:
    a, b = _vectors(10, 1, 1, 10)
    with pytest.raises(ValueError, match="same seeds"):
        paired_difference([a, a], [b])
    with pytest.raises(ValueError, match="same samples"):
        paired_difference([a], [b[:-1]])


def test_outcomes_after_holm_correction() -> None:
    clear = _vectors(40, 30, 2, 24)  # 30 vs 2 discordant: p ≈ 1e-7
    noise = _vectors(40, 6, 4, 46)  # 6 vs 4: could be anything
    worse = _vectors(40, 2, 30, 24)
    out = compare([([clear[0]], [clear[1]]), ([noise[0]], [noise[1]]), ([worse[0]], [worse[1]])])
    assert [c.outcome for c in out] == ["better", "tied", "worse"]
    raw = [c.p_value for c in out]
    from statsmodels.stats.multitest import multipletests

    assert [c.p_corrected for c in out] == pytest.approx(list(multipletests(raw, method="holm")[1]))
    assert out[1].p_corrected >= out[1].p_value  # corrected p-values never shrink
    assert compare([]) == []


def test_a_borderline_difference_is_tied_once_corrected() -> None:
    # alone, 15 vs 5 discordant is significant (p ≈ 0.04); among five comparisons it is not
    lone = _vectors(40, 15, 5, 36)
    (alone,) = compare([([lone[0]], [lone[1]])])
    assert alone.p_value < 0.05 and alone.outcome == "better"
    null = _vectors(40, 5, 5, 46)
    many = compare([([lone[0]], [lone[1]])] + [([null[0]], [null[1]])] * 4)
    assert many[0].outcome == "tied" and many[0].p_corrected > 0.05


def test_run_interval_is_wilson() -> None:
    from statsmodels.stats.proportion import proportion_confint

    correct = np.array([True] * 50 + [False] * 46)
    est = run_interval(correct)
    assert (est.low, est.high) == pytest.approx(proportion_confint(50, 96, alpha=0.05, method="wilson"))
    assert est.text() == "52.1 % [42.2, 61.8]"
    assert est.method in METHODS
    with pytest.raises(ValueError, match="no scored samples"):
        run_interval(np.array([], dtype=bool))


def test_difference_text_names_points_with_signs() -> None:
    a, b = _vectors(40, 2, 10, 44)
    diff, _ = paired_difference([a], [b])
    assert diff.text(points=True).startswith("−8.3 points [−")


def test_one_run_accuracies_in_the_report_carry_their_wilson_interval() -> None:
    from statsmodels.stats.proportion import proportion_confint

    from analysis.report import mean_std

    low, high = proportion_confint(26, 48, alpha=0.05, method="wilson")
    assert mean_std(26 / 48, float("nan"), 1, percent=True, samples=48) == (
        f"{100 * 26 / 48:.1f} [{100 * low:.1f}, {100 * high:.1f}] (n=1)"
    )
    assert mean_std(0.5, float("nan"), 1, percent=True) == "50.0 (n=1)"  # sample count unknown: no interval
    assert mean_std(0.5, 0.1, 3, percent=False) == "0.500 [0.252, 0.748]"  # over seeds: Student t
