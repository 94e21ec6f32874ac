"""Numbers behind the plots and tables: means with t-intervals over seeds, Pareto fronts, best configurations."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import stats as sps

from analysis.compare import LEVEL
from analysis.load import TRAINING, Sweep, training_modes, training_sort_key, variant_sort_key


def t_halfwidth(std: float, n: int, confidence: float = LEVEL) -> float:
    """Half-width of the t-interval of a mean of n values; NaN for n < 2 (no interval from one seed)."""
    if n < 2 or not math.isfinite(std):
        return math.nan
    return float(sps.t.ppf(0.5 + confidence / 2, n - 1) * std / math.sqrt(n))


def mean_sd(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof 1; 0.0 for one value) of a few seeds' numbers, in plain Python.

    >>> mean_sd([1.0, 3.0])
    (2.0, 1.4142135623730951)
    """
    mean = sum(values) / len(values)
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / max(1, len(values) - 1))


def summarize(frame: pd.DataFrame, by: list[str], value: str) -> pd.DataFrame:
    """Per group of `by`: mean, std (ddof 1), n (finite values), ci (t half-width) of `value`; NaNs ignored."""
    data = frame[by + [value]].dropna(subset=[value])
    if data.empty:
        return pd.DataFrame(columns=by + ["mean", "std", "n", "ci"])
    grouped = data.groupby(by, sort=False, dropna=False)[value]
    out = grouped.agg(mean="mean", std="std", n="count").reset_index()
    out["ci"] = [t_halfwidth(s, int(n)) for s, n in zip(out["std"], out["n"])]
    return out


def pareto_mask(points: np.ndarray, maximize: list[bool]) -> np.ndarray:
    """True for the points no other point beats on every objective (ties kept), for any number of objectives."""
    signed = np.asarray(points, dtype=float) * np.where(maximize, 1.0, -1.0)
    keep = np.ones(len(signed), dtype=bool)
    for i, p in enumerate(signed):
        dominated = np.all(signed >= p, axis=1) & np.any(signed > p, axis=1)
        keep[i] = not dominated.any()
    return keep


def config_table(sweep: Sweep, metrics: list[str]) -> pd.DataFrame:
    """One row per configuration (variant × config, seeds pooled): its training mode, n, and mean/std/ci of each
    metric; ordered by training mode (standard first), then variant."""
    trials = sweep.trials.assign(**{TRAINING: training_modes(sweep.trials)})
    keys = ["variant", "config"]
    # a configuration has one mode: where modes differ, so do the labels (training=…)
    base = trials.groupby(keys, sort=False).agg(runs=("run_id", "size"), **{TRAINING: (TRAINING, "first")})
    base = base.reset_index()
    for metric in metrics:
        if metric not in trials:
            continue
        s = summarize(trials, keys, metric).rename(
            columns={"mean": f"{metric}:mean", "std": f"{metric}:std", "n": f"{metric}:n", "ci": f"{metric}:ci"}
        )
        base = base.merge(s, on=keys, how="left")
    return by_mode(base, "variant", "config").reset_index(drop=True)


def by_mode(table: pd.DataFrame, *then: str) -> pd.DataFrame:
    """Rows ordered by training mode (standard, pgd, trades, others), then by the columns `then` (a variant by
    `variant_sort_key`); a stable sort, so rows tied on all of them keep their order."""
    keys = {TRAINING: training_sort_key, "variant": variant_sort_key}
    order = [TRAINING, *then]
    return table.sort_values(order, key=lambda c: c.map(keys[c.name]) if c.name in keys else c, kind="stable")


def best_configs(sweep: Sweep, *, per_mode: bool = False) -> pd.DataFrame:
    """Per variant (with `per_mode`, per training mode and variant), the configuration with the best mean
    headline metric (its row of `config_table`)."""
    headline = sweep.headline
    table = config_table(sweep, [headline])
    ascending = sweep.direction(headline) == "min"
    ranked = table.sort_values(f"{headline}:mean", ascending=ascending, kind="stable")
    best = ranked.groupby([TRAINING, "variant"] if per_mode else "variant", sort=False).head(1)
    return by_mode(best, "variant")
