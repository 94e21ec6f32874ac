"""analysis.spending and analysis.sequential: the group-sequential design's boundaries against the joint normal
(scipy), the fixed design as its one-look case, the replay that resumes at the right look, and its calibration
on simulated per-sample outcomes (looks 3, 6, 10)."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from analysis.compare import ALPHA, MARGIN, compare, evidence, judge
from analysis.sequential import Design, decide_look, progress
from analysis.spending import spent

pytestmark = pytest.mark.timeout(120)

_spec = importlib.util.spec_from_file_location(
    "verdict_calibration", Path(__file__).resolve().parents[1] / "benchmarks" / "verdict_calibration.py"
)
calibration = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(calibration)
simulate = calibration.simulate
LOOKS = (3, 6, 10)


@pytest.mark.parametrize("spending", ["obrien-fleming", "pocock"])
def test_boundaries_spend_alpha_as_the_joint_normal_of_the_looks_says(spending: str) -> None:
    """P(|Z_j| ≥ c_j at some look j ≤ i) under the joint normal of the cumulative Z statistics (corr √(t_i/t_j),
    scipy's multivariate normal, not the recursion the boundaries came from) is the α spent by look i."""
    design = Design(LOOKS, alpha=0.05, comparisons=2, spending=spending)
    t = np.array(LOOKS) / LOOKS[-1]
    corr = np.sqrt(np.minimum.outer(t, t) / np.maximum.outer(t, t))
    z = np.array([design.bounds(i).z for i in range(3)])
    for i in range(3):
        inside = stats.multivariate_normal(np.zeros(i + 1), corr[: i + 1, : i + 1]).cdf(
            z[: i + 1], lower_limit=-z[: i + 1], rng=np.random.default_rng(0)
        )
        assert 1 - inside == pytest.approx(spent(t[i], 0.025, spending), abs=2e-5)
    assert sum(design.bounds(i).spent for i in range(3)) == pytest.approx(0.025)
    if spending == "obrien-fleming":  # almost nothing early, the last look close to the fixed design's 2.5 %
        assert design.bounds(0).nominal < 1e-4 and design.bounds(2).nominal > 0.02
        assert z[0] > z[1] > z[2]


def test_the_fixed_design_is_the_one_look_case() -> None:
    """Bonferroni at 1 − α/k is one look spending all of α/k; compare() and a one-look decide_look agree exactly."""
    assert Design.fixed(comparisons=4).level(0) == pytest.approx(1 - 0.05 / 4, abs=1e-12)
    rng = np.random.default_rng(2)
    pairs = [([rng.random(80) < 0.6 for _ in range(5)], [rng.random(80) < q for _ in range(5)]) for q in (0.5, 0.6)]
    fixed = compare(pairs)
    one_look = Design((5,), alpha=ALPHA, comparisons=2)
    assert judge([evidence(a, b) for a, b in pairs], one_look) == fixed
    looked = decide_look(pairs[0], 0, one_look)
    assert looked.result == fixed[0] and looked.final and looked.interval == fixed[0].difference


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"looks": (3, 3)}, "increasing"),
        ({"looks": ()}, "increasing"),
        ({"looks": (3,), "alpha": 1.5}, "alpha"),
        ({"looks": (3,), "comparisons": 0}, "at least one comparison"),
        ({"looks": (3,), "spending": "haybittle"}, "unknown spending"),
    ],
)
def test_bad_designs_are_refused_by_name(kwargs: dict, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        Design(**kwargs)


def _seeds(mean: float, sd: float, n: int, seed: int) -> list[float]:
    return list(0.6 + mean + np.random.default_rng(seed).normal(0, sd, n))


def test_progress_stops_decided_comparisons_and_resumes_at_the_right_look() -> None:
    """armA is 10 points above the reference on every seed (spread 2 points): too few seeds at look 1 (OBF spends
    0.03 % there), decided at look 2; armB is noise: it runs to the last look. Replaying the recorded seeds gives
    the same decisions whatever was killed, and waits where a look's seeds are missing."""
    ref = _seeds(0.0, 0.0, 10, 0)
    arm_a = [r + 0.1 + e for r, e in zip(ref, np.random.default_rng(1).normal(0, 0.02, 10))]
    arm_b = [r + e for r, e in zip(ref, np.random.default_rng(2).normal(0, 0.05, 10))]
    design = Design(LOOKS, comparisons=2)
    names = [("armA", "ref"), ("armB", "ref")]

    def state(n_a: int, n_b: int, n_ref: int = 10):  # the seeds each arm has recorded so far
        return progress(design, names, [(arm_a[: min(n_a, n_ref)], ref[: min(n_a, n_ref)]), (arm_b[:n_b], ref[:n_b])])

    first = state(3, 3, 3)
    assert first.next_look == 1 and [d.look for d in first.decisions] == [0, 0]
    assert not any(d.final for d in first.decisions) and first.arms_next() == {"armA": 6, "armB": 6, "ref": 6}
    killed = state(6, 4, 6)  # a kill inside look 2: armB has 4 of its 6 seeds
    assert killed.next_look == 1 and [d.look for d in killed.decisions] == [0, 0]
    second = state(6, 6, 6)
    a, b = second.decisions
    assert (a.result.outcome, a.look, a.seeds, a.decided, a.final) == ("better", 1, 6, True, True)
    assert not b.final and second.next_look == 2 and second.arms_next() == {"armB": 10, "ref": 10}
    assert a.result.level == pytest.approx(design.level(1)) and a.interval.low > 0
    done = state(6, 10)
    assert done.next_look is None and done.decisions[0] == a  # a decided comparison is not judged again
    assert done.decisions[1].final and done.decisions[1].look == 2
    assert done.trials(["ref", "armA", "armB"]) == (10 + 6 + 10, 30 - 26)
    assert done.sentence(0) == "decided at look 2 of 3 (6 seeds)"
    assert done.sentence(1).startswith("inconclusive after the last look, look 3 of 3 (10 seeds)")
    assert "1 of 2 comparisons decided (1 at look 2)" in done.summary() and "4 saved" in done.summary()
    # armA given more seeds anyway (it shares the reference with armB) changes nothing already decided
    assert state(10, 10).decisions[0] == a
    # the driver says look 3 ran but a trial failed for good: judged on the seeds there are
    assert progress(design, names, [(arm_a[:6], ref[:6]), (arm_b[:9], ref[:9])], ran=3).decisions[1].seeds == 9


@pytest.mark.parametrize("samples", [80, 256])
@pytest.mark.parametrize("rho", [0.5, 0.85])
def test_sequential_false_claims_stay_below_alpha_and_its_intervals_cover(samples: int, rho: float) -> None:
    """Looks 3, 6, 10, no true difference: *better*/*worse* at most 5 % over all looks (within Monte-Carlo error),
    and the interval printed where the comparison stopped covers the true difference at least 93 % of the time."""
    rng = np.random.default_rng([samples, int(100 * rho), 27])
    design = Design(LOOKS)
    reps, false, covered = 400, 0, 0
    for _ in range(reps):
        a, b, truth = simulate(rng, seeds=10, samples=samples, delta=0.0, rho=rho)
        d = progress(design, [("a", "b")], [(a, b)]).decisions[0]
        false += d.result.outcome in ("better", "worse")
        covered += d.interval.low <= truth <= d.interval.high
    assert false / reps <= 0.05 + 2 * math.sqrt(0.05 * 0.95 / reps), false / reps
    assert covered / reps >= 0.93, covered / reps


def test_sequential_false_equivalence_stays_below_alpha_at_the_margin() -> None:
    """A true difference of one margin: *equivalent within ±3* at some look at most 5 % of the time."""
    rng = np.random.default_rng(8)
    design = Design(LOOKS)
    counted = false = 0
    for _ in range(500):
        a, b, truth = simulate(rng, seeds=10, samples=256, delta=MARGIN, rho=0.85, seed_sd=0.01)
        if abs(truth) < MARGIN:
            continue
        counted += 1
        false += progress(design, [("a", "b")], [(a, b)]).decisions[0].result.outcome == "equivalent"
    assert counted > 150
    assert false / counted <= 0.05 + 2 * math.sqrt(0.05 * 0.95 / counted), false / counted


def test_sequential_stops_early_on_a_real_difference_and_a_family_stays_below_alpha() -> None:
    """A true 10-point difference (80 samples): found at least 80 % of the time on fewer than 10 seeds on average
    (the fixed 3 seeds find it about 27 % of the time); three null comparisons: any false claim at most 5 %."""
    rng = np.random.default_rng(10)
    design = Design(LOOKS)
    found = seeds = 0
    for _ in range(150):
        a, b, _ = simulate(rng, seeds=10, samples=80, delta=0.10, rho=0.5)
        d = progress(design, [("a", "b")], [(a, b)]).decisions[0]
        found += d.result.outcome == "better"
        seeds += d.seeds
    assert found / 150 >= 0.8 and seeds / 150 < 9.5, (found, seeds / 150)
    family, rng = Design(LOOKS, comparisons=3), np.random.default_rng(11)
    reps, any_false = 400, 0  # 4000 such families: 5.2 % (Monte-Carlo sd 0.35; the fixed 10-seed t-test: 5.1 %)
    for _ in range(reps):
        pairs = [simulate(rng, seeds=10, samples=80, delta=0.0, rho=0.5)[:2] for _ in range(3)]
        state = progress(family, ["ab", "cd", "ef"], pairs)
        any_false += any(d.result.outcome in ("better", "worse") for d in state.decisions)
    assert any_false / reps <= 0.05 + 2 * math.sqrt(0.05 * 0.95 / reps), any_false / reps


def test_pooled_looks_keep_false_claims_below_alpha() -> None:
    """Four arms of one mode, all alike, three comparisons against the reference, looks 3, 6, 10 with the
    seed × arm variance pooled at each look: any false *better*/*worse* at most 5 % (within Monte-Carlo error)."""
    rng = np.random.default_rng(12)
    design = Design(LOOKS, comparisons=3)
    names = [("arm1", "ref"), ("arm2", "ref"), ("arm3", "ref")]
    reps, any_false, pooled = 300, 0, 0
    for _ in range(reps):
        runs, _, _ = calibration.simulate_arms(rng, means=(0.6,) * 4, seeds=10, samples=80, rho=0.5)
        ref, arms = runs[0], runs[1:]
        per_seed = {n: [x.mean() for x in r] for n, r in zip(("ref", "arm1", "arm2", "arm3"), runs)}
        state = progress(design, names, [(a, ref) for a in arms], groups={"standard": per_seed})
        pooled += state.pools[0].pooled and state.decisions[0].interval.method == "pooled"
        any_false += any(d.result.outcome in ("better", "worse") for d in state.decisions)
    assert pooled / reps > 0.8
    assert any_false / reps <= 0.05 + 2 * math.sqrt(0.05 * 0.95 / reps), any_false / reps
