"""The end of a sweep on the terminal: the best rows (or the Pareto front), the ablation's table, the summary.

Printing only: the stages (`sweeps.stages`) collect the trials into a `SweepResult`; this module ranks its rows
and says what happened, where the results are and how to look at them.
"""

from __future__ import annotations

import json
import math
from typing import Any, TextIO

import numpy as np

from analysis.stats import mean_sd, pareto_mask
from pclc import contract as C
from pclc import metrics as M
from pclc.redact import mask_uri
from sweeps.config import SweepConfig
from sweeps.result import SweepResult


def best_rows(cfg: SweepConfig, rows: list[dict[str, Any]], top: int = 5) -> list[dict[str, Any]]:
    """One objective: the `top` best trials. Several: the Pareto front (no trial better on all)."""
    sign = {o.metric: (1.0 if o.mode == "max" else -1.0) for o in cfg.objective}

    def score(row: dict[str, Any]) -> tuple[float, ...]:
        return tuple(_signed(row.get(m), sign[m]) for m in sign)  # higher is better; a missing number ranks last

    ranked = sorted(rows, key=score, reverse=True)
    if not cfg.multi_objective:
        return ranked[:top]
    if not ranked:
        return []
    keep = pareto_mask(np.array([score(r) for r in ranked]), [True] * len(sign))  # scores are signed: all max
    return [row for row, kept in zip(ranked, keep) if kept]


def ablation_table(cfg: SweepConfig, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Ablation: one row per grid point (variant and its values), objective metrics averaged over seeds."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        point = {k: v for k, v in row.items() if k not in ("trial_id", "seed") and k not in _metric_names(cfg)}
        groups.setdefault(json.dumps(point, sort_keys=True, default=str), []).append(row)
    table = []
    for key, members in groups.items():
        entry: dict[str, Any] = {**json.loads(key), "seeds": len(members)}
        for m in _metric_names(cfg):
            values = [v for r in members if m in r and math.isfinite(v := _num(r[m]))]  # a NaN run says nothing
            if values:
                entry[m], entry[f"{m} sd"] = mean_sd(values)
        table.append(entry)
    sign = 1.0 if cfg.objective[0].mode == "max" else -1.0  # the headline's direction: best first, NaN last
    return sorted(table, key=lambda e: _signed(e.get(cfg.headline_metric), sign), reverse=True)


def _metric_names(cfg: SweepConfig) -> list[str]:
    names = [o.metric for o in cfg.objective]
    return names + [m for m in (M.CLEAN_ACC, M.ROBUST_ACC) if m not in names]


def _num(v: Any) -> float:
    """A metric as a float; NaN where it is missing or not a number."""
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def _signed(v: Any, sign: float) -> float:
    """`sign` × the metric, so that higher ranks first in either direction; −inf (last) where it is not finite.
    The sign goes on before the missing value's −inf: under `mode: min` a NaN must not become +inf and rank first."""
    f = _num(v)
    return sign * f if math.isfinite(f) else -math.inf


def fmt(v: Any) -> str:
    """A metric or parameter as printed: floats to 4 significant digits."""
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def print_summary(cfg: SweepConfig, result: SweepResult, out: TextIO) -> None:
    """The end of a sweep: counts, best configurations, where results are, the MLflow UI command."""
    n, failed = len(result.trials), len(result.failed)
    print(
        f"\nsweep {cfg.name}: {n} trials: {len(result.finished) + len(result.confirmed)} finished, {failed} failed, "
        f"{result.stopped_early} stopped early",
        file=out,
    )
    objective = ", ".join(f"{o.metric} ({o.mode})" for o in cfg.objective)
    shown_metrics = _metric_names(cfg)
    if cfg.mode == "ablation":
        print(f"ablation: mean ± sd over seeds, best {cfg.headline_metric} first:", file=out)
        for entry in ablation_table(cfg, result.finished):
            metrics = "  ".join(f"{m}={entry[m]:.4f}±{entry[m + ' sd']:.4f}" for m in shown_metrics if m in entry)
            point = " ".join(
                f"{k}={fmt(v)}"
                for k, v in entry.items()
                if k not in shown_metrics and not k.endswith(" sd") and k != "seeds"
            )
            print(f"  {point:<40} {metrics}   ({entry['seeds']} seeds)", file=out)
    verdict = result.verdict
    if verdict is not None and verdict.source == "confirmation":
        print(
            f"confirmed on fresh seeds, best {verdict.metric} first (mean [95 % interval]; the search's score beside):",
            file=out,
        )
        for i, arm in enumerate(sorted(verdict.arms, key=lambda a: -a.estimate.value), 1):
            searched = "" if arm.search_score is None else f"   search: {100 * arm.search_score:.1f} % (1 seed)"
            role = "   [reference]" if arm.reference else ""
            print(
                f"  {i}. {verdict.metric}={arm.estimate.text()}  clean_acc={100 * arm.clean:.1f} %  "
                f"{arm.label}  ({len(arm.runs)} seeds){searched}{role}",
                file=out,
            )
    else:
        title = "Pareto front" if cfg.multi_objective else "best configurations"
        unconfirmed = " (one seed each, not confirmed)" if cfg.mode == "optimize" else ""
        print(f"{title} by {objective}{unconfirmed}:", file=out)
        if not result.best:
            print("  (no trial finished its evaluation)", file=out)
        for i, row in enumerate(result.best, 1):
            metrics = "  ".join(f"{m}={fmt(row[m])}" for m in shown_metrics if m in row)
            params = " ".join(f"{k}={fmt(v)}" for k, v in row.items() if k not in shown_metrics and k != "trial_id")
            print(f"  {i}. {metrics}   {params}   [trial {row['trial_id']}]", file=out)
    for tid in result.failed[:10]:
        print(f"  failed: trial {tid}: {result.trials[tid].error}", file=out)
    print(f"Ray results: {result.experiment_path}", file=out)
    print(
        f"MLflow: experiment '{cfg.name}' (parent run {result.parent_run_id}) in {mask_uri(result.tracking_uri)}",
        file=out,
    )
    print(
        f"MLflow UI: {result.ui_command}   (then open http://127.0.0.1:5000{C.experiment_ui_path(result.experiment_id)})",
        file=out,
    )
    if verdict is not None:
        print(
            f"verdict ({verdict.metric}, each arm against each reference, paired on the same samples and seeds):",
            file=out,
        )
        for sentence in verdict.summary() or ["(nothing to compare)"]:
            print(f"  {sentence}", file=out)
