"""The boundaries of a pre-planned group-sequential design over seeds: at which level each look judges, so that
the family's chance of any false claim over every look and every comparison stays at most α.

How: α is split over the k comparisons (Bonferroni, α/k each) and each comparison's α/k is spent over the looks
(cumulative seed counts n₁ < … < n_K, information fractions tᵢ = nᵢ/n_K) by a Lan–DeMets alpha-spending
function (Lan & DeMets 1983, Biometrika 70:659): by default the O'Brien–Fleming type
α(t) = 2 − 2Φ(z₁₋α/2k / √t) (O'Brien & Fleming 1979, Biometrics 35:549), which spends almost nothing early
and keeps the last look close to the fixed design; or the Pocock type α·ln(1 + (e − 1)t) (Pocock 1977).
The two-sided boundary cᵢ on the cumulative Z statistic solves
P(|Z₁| < c₁, …, |Zᵢ₋₁| < cᵢ₋₁, |Zᵢ| ≥ cᵢ) = α(tᵢ) − α(tᵢ₋₁) under the joint normal of the Zᵢ
(corr(Zᵢ, Zⱼ) = √(tᵢ/tⱼ)), by the recursive numerical integration of Armitage, McPherson & Rowe (1969)
(Jennison & Turnbull 2000, ch. 19). Each look's nominal level 2(1 − Φ(cᵢ)) is then turned into a Student t
critical value on the look's degrees of freedom (`analysis.compare.decide`): the small-df correction Jennison &
Turnbull (2000, §3.8) recommend, checked by simulation in tests/test_sequential.py. The interval at a look is
the repeated confidence interval (Jennison & Turnbull 1989, JRSS B 51:305): all of a comparison's intervals,
over every look, cover its true difference together with probability ≥ 1 − α/k, so reading *better*, *worse*
and *equivalent* off them (and stopping there) keeps every claim's error within α/k.

A fixed design is the one-look case: t = 1 spends all of α/k, c = z₁₋α/2k, the Bonferroni interval.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from scipy import optimize, stats

Spending = Literal["obrien-fleming", "pocock"]
SPENDING: dict[str, str] = {
    "obrien-fleming": "Lan–DeMets O'Brien–Fleming-type spending α(t) = 2 − 2Φ(z₁₋α/2 / √t)",
    "pocock": "Lan–DeMets Pocock-type spending α(t) = α ln(1 + (e − 1) t)",
}
_GRID = 801  # integration points per look (Simpson): the boundaries' crossing probabilities to ~1e-9
_WIDTH = 8.0  # the first look's density is integrated over ±8 sd; later looks are cut at their boundary


def spent(t: float, alpha: float, spending: Spending = "obrien-fleming") -> float:
    """Two-sided α spent by information fraction `t` (0 < t ≤ 1): α(1) = α for both spending functions."""
    if not 0 < t <= 1:
        raise ValueError(f"an information fraction is in (0, 1], got {t}")
    if spending == "obrien-fleming":
        return float(2 - 2 * stats.norm.cdf(stats.norm.isf(alpha / 2) / math.sqrt(t)))
    if spending == "pocock":
        return float(alpha * math.log(1 + (math.e - 1) * t))
    raise ValueError(f"unknown spending function {spending!r}: use one of {sorted(SPENDING)}")


@dataclass(frozen=True)
class Bound:
    """One look's boundary for one comparison: the normal critical value, its two-sided nominal level, and the α
    the design spends there."""

    z: float  # reject "no difference" where |Z| ≥ z (∞: this look cannot decide)
    nominal: float  # 2(1 − Φ(z)): the two-sided level the look's t-test and interval use
    spent: float  # α spent at this look (cumulative spending minus the earlier looks')

    @property
    def level(self) -> float:
        """The look's interval level: 1 − nominal (the repeated confidence interval)."""
        return 1 - self.nominal


@dataclass(frozen=True)
class Design:
    """A pre-planned design: `looks` (cumulative seeds per comparison, e.g. (3, 6, 10)), the family-wise `alpha`
    over `comparisons` comparisons (Bonferroni) and over the looks (the spending function)."""

    looks: tuple[int, ...]
    alpha: float = 0.05
    comparisons: int = 1
    spending: Spending = "obrien-fleming"
    _bounds: tuple[Bound, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        looks = tuple(int(n) for n in self.looks)
        if not looks or any(n < 1 for n in looks) or any(b <= a for a, b in zip(looks, looks[1:])):
            raise ValueError(f"looks must be increasing seed counts ≥ 1, got {list(self.looks)}")
        if not 0 < self.alpha < 1:
            raise ValueError(f"alpha must be in (0, 1), got {self.alpha}")
        if self.comparisons < 1:
            raise ValueError(f"a design needs at least one comparison, got {self.comparisons}")
        if self.spending not in SPENDING:
            raise ValueError(f"unknown spending function {self.spending!r}: use one of {sorted(SPENDING)}")
        object.__setattr__(self, "looks", looks)
        object.__setattr__(self, "_bounds", boundaries(looks, self.alpha / self.comparisons, self.spending))

    @classmethod
    def fixed(cls, seeds: int = 1, *, alpha: float = 0.05, comparisons: int = 1) -> Design:
        """The fixed design: one look, all of α/k spent there (the Bonferroni interval)."""
        return cls((max(1, seeds),), alpha, comparisons)

    def bounds(self, look: int) -> Bound:
        """The boundary of look `look` (0-based) for each comparison of the family."""
        if not 0 <= look < len(self.looks):
            raise ValueError(f"look {look} is not one of this design's {len(self.looks)} looks")
        return self._bounds[look]

    def level(self, look: int) -> float:
        """The level of look `look`'s repeated confidence interval."""
        return self.bounds(look).level

    @property
    def last(self) -> int:
        return len(self.looks) - 1

    @property
    def method(self) -> str:
        """One phrase for the report: how α is split and spent."""
        if len(self.looks) == 1:
            return f"Bonferroni over {self.comparisons}"
        return (
            f"Bonferroni over {self.comparisons}, spent over looks at {list(self.looks)} seeds by "
            f"{SPENDING[self.spending]} (Lan & DeMets 1983)"
        )


def boundaries(looks: Sequence[int], alpha: float, spending: Spending = "obrien-fleming") -> tuple[Bound, ...]:
    """Two-sided boundaries of one comparison over `looks` spending `alpha` (module docstring)."""
    fractions = [n / looks[-1] for n in looks]
    out: list[Bound] = []
    carried: _Density | None = None  # B(t) = Z√t on the previous look's continuation region
    previous_t, previous_spent = 0.0, 0.0
    for t in fractions:
        cumulative = spent(t, alpha, spending)
        step, sd = cumulative - previous_spent, math.sqrt(t - previous_t)
        if step <= 1e-15:  # nothing to spend here: this look cannot decide
            z = math.inf
        else:
            z = float(optimize.brentq(_excess, 1e-6, 40.0, args=(t, sd, carried, step), xtol=1e-12))
        out.append(Bound(z=z, nominal=float(2 * stats.norm.sf(z)), spent=step))
        carried = _carry(z, t, sd, carried)
        previous_t, previous_spent = t, cumulative
    return tuple(out)


_Density = tuple[np.ndarray, np.ndarray, np.ndarray]  # grid, Simpson weights, density of B(t) on it


def _excess(c: float, t: float, sd: float, carried: _Density | None, step: float) -> float:
    """P(not stopped before, |Z(t)| ≥ c) − the α to spend at t: B(t) is the previous B plus an independent
    N(0, sd²) step."""
    if carried is None:
        return float(2 * stats.norm.sf(c)) - step
    grid, weights, density = carried
    edge = c * math.sqrt(t)
    exit_ = stats.norm.sf((edge - grid) / sd) + stats.norm.cdf((-edge - grid) / sd)
    return float(np.sum(weights * density * exit_)) - step


def _carry(z: float, t: float, sd: float, carried: _Density | None) -> _Density:
    """The density of B(t) on the look's continuation region |B| < z√t (cut at ±8 sd), for the next look."""
    edge = min(z, _WIDTH) * math.sqrt(t)
    grid = np.linspace(-edge, edge, _GRID)
    if carried is None:
        density = stats.norm.pdf(grid / sd) / sd
    else:
        before, weights, previous = carried
        density = (stats.norm.pdf((grid[:, None] - before[None, :]) / sd) / sd) @ (weights * previous)
    return grid, _simpson(grid), density


def _simpson(grid: np.ndarray) -> np.ndarray:
    """Composite Simpson weights on an evenly spaced grid of an odd number of points."""
    h = grid[1] - grid[0]
    w = np.ones(len(grid))
    w[1:-1:2], w[2:-1:2] = 4.0, 2.0
    return w * h / 3
