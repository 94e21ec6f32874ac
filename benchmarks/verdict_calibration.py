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
    python benchmarks/verdict_calibration.py --tables sequential,pooled,population --reps 1000

`--tables sequential`: fixed 3 and 10 seeds against looks at 3, 6, 10 seeds (O'Brien–Fleming and Pocock
spending) on the same sweeps, with the mean seeds each used; `pooled`: four arms of one mode, the pooled
two-way variance against each pair's own (also for arms that spread unalike); `population`: how often each
population's interval covers the test distribution's difference.
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

from analysis.compare import MARGIN, compare, evidence, judge  # noqa: E402
from analysis.sequential import Design, progress  # noqa: E402
from analysis.variance import pool, pooled_family  # noqa: E402

NODES, WEIGHTS = np.polynomial.hermite_e.hermegauss(24)  # ∫ f(u) φ(u) du ≈ Σ w f(node) / √(2π)
DESIGNS = ((1, 80), (3, 80), (5, 256), (10, 80), (10, 256))
RHOS = (0.5, 0.85)


def simulate(
    rng: np.random.Generator, *, seeds: int, samples: int, delta: float, rho: float, seed_sd: float = 0.04
) -> tuple[list[np.ndarray], list[np.ndarray], float]:
    """One sweep's two arms: per-seed per-sample outcomes of each, and the true difference on these samples
    (what a claim about the evaluated samples is about: the arms' expected accuracy over seeds, a − b)."""
    (a, b), on_samples, _ = simulate_arms(
        rng, means=(0.6 + delta / 2, 0.6 - delta / 2), seeds=seeds, samples=samples, rho=rho, seed_sd=seed_sd
    )
    return a, b, float(on_samples[0] - on_samples[1])


def simulate_arms(
    rng: np.random.Generator,
    *,
    means: tuple[float, ...],
    seeds: int,
    samples: int,
    rho: float,
    seed_sd: float | tuple[float, ...] = 0.04,
) -> tuple[list[list[np.ndarray]], np.ndarray, np.ndarray]:
    """Several arms of true accuracies `means` scored on the same samples: per arm its per-seed per-sample
    outcomes; each arm's expected accuracy over seeds on these samples (a claim about the evaluated samples);
    and over the test distribution too (a claim about it). Seed effects of sd `seed_sd` (one per arm, or one
    for all) correlated 0.5 between arms."""
    arms = len(means)
    sd = np.broadcast_to(np.asarray(seed_sd, dtype=float), (arms,))
    z = rng.standard_normal(samples)  # the test samples' difficulty: drawn once, scored by every run
    cov = np.outer(sd, sd) * (0.5 + 0.5 * np.eye(arms))
    u = rng.multivariate_normal(np.zeros(arms), cov, size=seeds)
    runs: list[list[np.ndarray]] = [[] for _ in range(arms)]
    for s in range(seeds):
        latent = math.sqrt(rho) * z + math.sqrt(1 - rho) * rng.standard_normal((arms, samples))
        thresholds = stats.norm.ppf(np.clip(np.asarray(means) + u[s], 1e-6, 1 - 1e-6))
        for arm in range(arms):
            runs[arm].append(latent[arm] < thresholds[arm])

    def expected(mean: float, sd: float, on: np.ndarray | None) -> float:  # E over seed effects of the accuracy
        acc = np.clip(mean + sd * NODES, 1e-6, 1 - 1e-6)
        if on is None:  # over the test distribution: E over difficulty of Φ(…) is the accuracy itself
            return float(WEIGHTS @ acc / WEIGHTS.sum())
        p = stats.norm.cdf((stats.norm.ppf(acc)[:, None] - math.sqrt(rho) * on[None]) / math.sqrt(1 - rho))
        return float((WEIGHTS @ p.mean(axis=1)) / WEIGHTS.sum())

    on_samples = np.array([expected(m, d, z) for m, d in zip(means, sd)])
    in_distribution = np.array([expected(m, d, None) for m, d in zip(means, sd)])
    return runs, on_samples, in_distribution


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


LOOKS = (3, 6, 10)
CASES = (("null", 0.0), ("d5", 0.05), ("d10", 0.10), ("margin", MARGIN))


def sequential_cell(samples: int, rho: float, reps: int, seed: int = 0) -> list[dict[str, float | str]]:
    """Fixed 3 seeds, fixed 10 seeds and the sequential looks 3, 6, 10 (O'Brien–Fleming and Pocock spending)
    on the same simulated sweeps: false *better*/*worse*, power, coverage of the printed interval, false
    *equivalent* at Δ = margin (seed sd 1 point there, where equivalence is within reach), and mean seeds."""
    designs = {
        "fixed 3": Design((3,)),
        "fixed 10": Design((10,)),
        "sequential 3, 6, 10 (O'Brien–Fleming)": Design(LOOKS),
        "sequential 3, 6, 10 (Pocock)": Design(LOOKS, spending="pocock"),
    }
    rng = np.random.default_rng([samples, int(rho * 100), seed, 27])
    tally = {name: {"design": name, "samples": samples, "rho": rho} for name in designs}
    for case, delta in CASES:
        counts = {name: [0, 0, 0, 0] for name in designs}  # hits, covered, seeds, counted
        for _ in range(reps):
            sd = 0.01 if case == "margin" else 0.04
            a, b, truth = simulate(rng, seeds=LOOKS[-1], samples=samples, delta=delta, rho=rho, seed_sd=sd)
            for name, design in designs.items():
                n = design.looks[-1]
                d = progress(design, [("a", "b")], [(a[:n], b[:n])]).decisions[0]
                c = counts[name]
                if case == "margin" and abs(truth) < MARGIN:
                    continue
                c[3] += 1
                outcome = d.result.outcome
                c[0] += (
                    outcome in ("better", "worse")
                    if case == "null"
                    else outcome == ("equivalent" if case == "margin" else "better")
                )
                c[1] += d.interval.low <= truth <= d.interval.high
                c[2] += d.seeds
        for name, (hits, covered, seeds, counted) in counts.items():
            tally[name][case] = hits / max(1, counted)
            tally[name][f"coverage_{case}"] = covered / max(1, counted)
            tally[name][f"seeds_{case}"] = seeds / max(1, counted)
    return list(tally.values())


def pooled_cell(seeds: int, samples: int, rho: float, reps: int, seed: int = 0) -> dict[str, float]:
    """Four arms of one training mode (a reference and three against it, Bonferroni over 3), each comparison
    on its own pair's seeds and on the pooled two-way variance: family-wise false *better*/*worse* (all equal),
    power of one arm at +5 and +10 points, coverage; and the same with arms that spread unalike (seed sd 2, 4, 8
    and 4 points), where Levene's pre-test must send the comparisons back to their own pairs."""
    rng = np.random.default_rng([seeds, samples, int(rho * 100), seed, 5])
    names = [("arm1", "ref"), ("arm2", "ref"), ("arm3", "ref")]
    out: dict[str, float] = {"seeds": seeds, "samples": samples, "rho": rho}
    cases = (("null", 0.0, 0.04), ("d5", 0.05, 0.04), ("d10", 0.10, 0.04), ("unalike", 0.0, (0.02, 0.04, 0.08, 0.04)))
    for case, delta, sd in cases:
        hits = {"own": 0, "pooled": 0}
        covered = {"own": 0, "pooled": 0}
        pooled_share = 0
        for _ in range(reps):
            runs, truth, _ = simulate_arms(
                rng, means=(0.6, 0.6 + delta, 0.6, 0.6), seeds=seeds, samples=samples, rho=rho, seed_sd=sd
            )
            ref, arms = runs[0], runs[1:]
            own = [evidence(a, ref) for a in arms]
            group = pool("standard", {n: [x.mean() for x in r] for n, r in zip(("ref", "arm1", "arm2", "arm3"), runs)})
            pooled_share += group.pooled
            design = Design.fixed(seeds, comparisons=3)
            for key, evs in (("own", own), ("pooled", pooled_family(names, own, [group]))):
                results = judge(evs, design)
                if case in ("null", "unalike"):
                    hits[key] += any(c.outcome in ("better", "worse") for c in results)
                else:
                    hits[key] += results[0].outcome == "better"
                covered[key] += results[0].difference.low <= truth[1] - truth[0] <= results[0].difference.high
        for key in hits:
            out[f"{case}_{key}"] = hits[key] / reps
            out[f"coverage_{case}_{key}"] = covered[key] / reps
        out[f"pooled_share_{case}"] = pooled_share / reps
    return out


def population_cell(seeds: int, samples: int, rho: float, reps: int, seed: int = 0) -> dict[str, float]:
    """At a true difference of 5 points: how often the interval about the evaluated samples, and the one about
    the test distribution, cover the test distribution's difference, and their median half-widths."""
    rng = np.random.default_rng([seeds, samples, int(rho * 100), seed, 6])
    out: dict[str, float] = {"seeds": seeds, "samples": samples, "rho": rho}
    for population in ("samples", "distribution"):
        out[f"coverage_{population}"] = 0.0
        out[f"halfwidth_{population}"] = []
    for _ in range(reps):
        (a, b), _, dist = simulate_arms(rng, means=(0.625, 0.575), seeds=seeds, samples=samples, rho=rho)
        for population in ("samples", "distribution"):
            (c,) = compare([(a, b)], population=population)
            out[f"coverage_{population}"] += (c.difference.low <= dist[0] - dist[1] <= c.difference.high) / reps
            out[f"halfwidth_{population}"].append((c.difference.high - c.difference.low) / 2)
    for population in ("samples", "distribution"):
        out[f"halfwidth_{population}"] = float(np.median(out[f"halfwidth_{population}"]))
    return out


def _pct(x: float) -> str:
    return f"{100 * x:.1f} %"


def print_sequential(rows: list[dict], reps: int) -> None:
    print(f"\n{reps} simulated sweeps per cell; one comparison; looks {list(LOOKS)} seeds")
    print(
        "| design | samples | ρ | false better/worse | power Δ 5 | power Δ 10 | coverage (Δ 0 / 5 / 10) | "
        "false equivalent at Δ = margin | mean seeds (Δ 0 / 5 / 10) |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(
            f"| {r['design']} | {r['samples']} | {r['rho']} | {_pct(r['null'])} | {100 * r['d5']:.0f} % | "
            f"{100 * r['d10']:.0f} % | {_pct(r['coverage_null'])} / {_pct(r['coverage_d5'])} / "
            f"{_pct(r['coverage_d10'])} | {_pct(r['margin'])} | {r['seeds_null']:.1f} / {r['seeds_d5']:.1f} / "
            f"{r['seeds_d10']:.1f} |"
        )


def print_pooled(rows: list[dict], reps: int) -> None:
    print(f"\n{reps} simulated sweeps per cell; 4 arms of one mode, 3 comparisons against the reference (Bonferroni)")
    print(
        "| seeds × samples | ρ | family-wise false (own / pooled) | power Δ 5 (own / pooled) | power Δ 10 "
        "(own / pooled) | coverage (own / pooled) | unalike arms: family-wise false (own / pooled), pooled share |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(
            f"| {r['seeds']} × {r['samples']} | {r['rho']} | {_pct(r['null_own'])} / {_pct(r['null_pooled'])} | "
            f"{100 * r['d5_own']:.0f} % / {100 * r['d5_pooled']:.0f} % | {100 * r['d10_own']:.0f} % / "
            f"{100 * r['d10_pooled']:.0f} % | {_pct(r['coverage_null_own'])} / {_pct(r['coverage_null_pooled'])} | "
            f"{_pct(r['unalike_own'])} / {_pct(r['unalike_pooled'])}, {_pct(r['pooled_share_unalike'])} |"
        )


def print_population(rows: list[dict], reps: int) -> None:
    print(f"\n{reps} simulated sweeps per cell; true Δ 5 points; coverage of the test distribution's difference")
    print("| seeds × samples | ρ | coverage: samples / distribution | median half-width: samples / distribution |")
    print("| --- | --- | --- | --- |")
    for r in rows:
        print(
            f"| {r['seeds']} × {r['samples']} | {r['rho']} | {_pct(r['coverage_samples'])} / "
            f"{_pct(r['coverage_distribution'])} | {100 * r['halfwidth_samples']:.1f} / "
            f"{100 * r['halfwidth_distribution']:.1f} |"
        )


def print_fixed(rows: list[dict], reps: int) -> None:
    print(f"{reps} simulated sweeps per cell; one comparison at 95 %; margin ±{100 * MARGIN:.0f} points")
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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=2000)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--tables", default="fixed", help="comma-separated: fixed, sequential, pooled, population")
    args = parser.parse_args(argv)
    tables = set(args.tables.split(","))
    out: dict[str, list] = {}
    if "sequential" in tables:
        out["sequential"] = [r for n in (80, 256) for rho in RHOS for r in sequential_cell(n, rho, args.reps)]
        print_sequential(out["sequential"], args.reps)
    if "pooled" in tables:
        out["pooled"] = [pooled_cell(s, n, rho, args.reps) for s, n in ((3, 80), (5, 256)) for rho in RHOS]
        print_pooled(out["pooled"], args.reps)
    if "population" in tables:
        out["population"] = [population_cell(s, n, rho, args.reps) for s, n in ((3, 80), (5, 256)) for rho in RHOS]
        print_population(out["population"], args.reps)
    if "fixed" in tables:
        out["fixed"] = [cell(s, n, rho, args.reps) for s, n in DESIGNS for rho in RHOS]
        print_fixed(out["fixed"], args.reps)
    if args.json:  # the fixed table alone is written as before: a list of its rows
        args.json.write_text(json.dumps(out["fixed"] if set(out) == {"fixed"} else out, indent=2))


if __name__ == "__main__":
    main()
