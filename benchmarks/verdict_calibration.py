"""How often the verdict is wrong, and what it can detect: `analysis.compare` on simulated per-sample outcomes.

The model is the audit's (issue 27): two arms of true robust accuracy 0.6 ± Δ/2, seed effects of sd 4 points
correlated 0.5 between the arms, each test sample's difficulty shared by every run with correlation ρ (0.5 or
0.85). Per design (seeds × samples): the rate of false *better*/*worse* at Δ = 0, the power (a correct *better*)
at Δ = 5 and 10 points, the coverage of the true difference on the evaluated samples by the printed interval, its
median half-width, and the rate of a false *equivalent within ±3* at Δ = 3 points (counted where the true
difference on the samples is at least 3). One comparison (k = 1): a family of k widens each interval to
1 − α/k (`tests/test_compare.py` checks a family of six).

    python benchmarks/verdict_calibration.py              # 2000 simulated sweeps per cell (about 3 min)
    python benchmarks/verdict_calibration.py --reps 200   # a quick look
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
from scipy import stats

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from analysis.compare import MARGIN, compare  # noqa: E402

NODES, WEIGHTS = np.polynomial.hermite_e.hermegauss(24)  # ∫ f(u) φ(u) du ≈ Σ w f(node) / √(2π)
DESIGNS = ((1, 80), (3, 80), (5, 256), (10, 80), (10, 256))
RHOS = (0.5, 0.85)


def simulate(
    rng: np.random.Generator, *, seeds: int, samples: int, delta: float, rho: float, seed_sd: float = 0.04
) -> tuple[list[np.ndarray], list[np.ndarray], float]:
    """One sweep's two arms: per-seed per-sample outcomes of each, and the true difference on these samples
    (what a claim about the evaluated samples is about: the arms' expected accuracy over seeds, a − b)."""
    z = rng.standard_normal(samples)  # the test samples' difficulty: drawn once, scored by every run
    cov = seed_sd**2 * np.array([[1.0, 0.5], [0.5, 1.0]])
    u = rng.multivariate_normal([0.0, 0.0], cov, size=seeds)
    means = np.array([0.6 + delta / 2, 0.6 - delta / 2])
    a, b = [], []
    for s in range(seeds):
        latent = math.sqrt(rho) * z + math.sqrt(1 - rho) * rng.standard_normal((2, samples))
        thresholds = stats.norm.ppf(np.clip(means + u[s], 1e-6, 1 - 1e-6))
        a.append(latent[0] < thresholds[0])
        b.append(latent[1] < thresholds[1])

    def expected(mean: float) -> float:  # E over seed effects of the accuracy on these samples
        acc = np.clip(mean + seed_sd * NODES, 1e-6, 1 - 1e-6)
        p = stats.norm.cdf((stats.norm.ppf(acc)[:, None] - math.sqrt(rho) * z[None]) / math.sqrt(1 - rho))
        return float((WEIGHTS @ p.mean(axis=1)) / WEIGHTS.sum())

    return a, b, expected(means[0]) - expected(means[1])


def cell(seeds: int, samples: int, rho: float, reps: int, seed: int = 0) -> dict[str, float]:
    """The rates of one design at one ρ."""
    rng = np.random.default_rng([seeds, samples, int(rho * 100), seed])
    out: dict[str, float] = {"seeds": seeds, "samples": samples, "rho": rho}
    for name, delta in (("null", 0.0), ("d5", 0.05), ("d10", 0.10), ("margin", MARGIN)):
        hits = covered = counted = 0
        halves = []
        for _ in range(reps):
            a, b, truth = simulate(rng, seeds=seeds, samples=samples, delta=delta, rho=rho)
            (c,) = compare([(a, b)])
            if name == "null":
                hits += c.outcome in ("better", "worse")
            elif name == "margin":
                if abs(truth) >= MARGIN:
                    counted += 1
                    hits += c.outcome == "equivalent"
            else:
                hits += c.outcome == "better"
            covered += c.difference.low <= truth <= c.difference.high
            halves.append((c.difference.high - c.difference.low) / 2)
        out[name] = hits / (counted if name == "margin" else reps)
        out[f"coverage_{name}"] = covered / reps
        out[f"halfwidth_{name}"] = float(np.median(halves))
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=2000)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    rows = [cell(s, n, rho, args.reps) for s, n in DESIGNS for rho in RHOS]
    print(f"{args.reps} simulated sweeps per cell; one comparison at 95 %; margin ±{100 * MARGIN:.0f} points")
    print(
        "| seeds × samples | ρ | false better/worse | power Δ 5 | power Δ 10 | coverage | median half-width "
        "(points) | false equivalent at Δ = margin |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(
            f"| {r['seeds']} × {r['samples']} | {r['rho']} | {100 * r['null']:.1f} % | {100 * r['d5']:.0f} % | "
            f"{100 * r['d10']:.0f} % | {100 * r['coverage_null']:.1f} % | {100 * r['halfwidth_null']:.1f} | "
            f"{100 * r['margin']:.1f} % |"
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
