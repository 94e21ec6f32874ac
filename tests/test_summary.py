"""sweeps.summary: the end-of-sweep ranking and tables, on fixed rows (no Ray, no store)."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from sweep_util import tiny_ablation, tiny_optimize

from sweeps.result import SweepResult
from sweeps.summary import ablation_table, best_rows, print_summary


@pytest.mark.timeout(60)
def test_one_objective_ranks_and_several_keep_the_pareto_front(tmp_path: Path) -> None:
    rows = [
        {"trial_id": str(i), "robust_acc": r, "clean_acc": c}
        for i, (r, c) in enumerate([(0.2, 0.9), (0.5, 0.8), (0.4, 0.7), (float("nan"), 1.0)])
    ]
    single = tiny_optimize("one", tmp_path)
    assert [r["trial_id"] for r in best_rows(single, rows, top=3)] == ["1", "2", "0"]  # NaN ranks last
    both = tiny_optimize(
        "two", tmp_path, objective=[{"metric": "robust_acc", "mode": "max"}, {"metric": "clean_acc", "mode": "max"}]
    )
    assert sorted(r["trial_id"] for r in best_rows(both, rows)) == ["0", "1", "3"]  # 2 is beaten by 1 on both


@pytest.mark.timeout(60)
def test_a_metric_to_minimise_ranks_lowest_first_and_nan_last(tmp_path: Path) -> None:
    rows = [
        {"trial_id": str(i), "seed": 0, "loss": "pclc", "margin": m, "robust_acc": r}
        for i, (m, r) in enumerate([(0.9, 0.3), (0.95, float("nan")), (0.99, 0.1), (0.995, 0.2)])
    ]
    low = tiny_optimize("low", tmp_path, objective=[{"metric": "robust_acc", "mode": "min"}])
    assert [r["trial_id"] for r in best_rows(low, rows, top=4)] == ["2", "3", "0", "1"]  # NaN last, not first
    grid = tiny_ablation("grid", tmp_path, variants=[{"loss": "pclc", "margin": [0.9, 0.95, 0.99, 0.995]}], seeds=[0])
    table = ablation_table(grid.model_copy(update={"objective": low.objective}), rows)
    assert [e["margin"] for e in table] == [0.99, 0.995, 0.9, 0.95]  # ascending under min; the NaN point last


@pytest.mark.timeout(60)
def test_the_ablation_table_averages_over_seeds_and_the_summary_prints_it(tmp_path: Path) -> None:
    cfg = tiny_ablation("abl", tmp_path, variants=[{"name": "pclc", "loss": "pclc"}], seeds=[0, 1])
    rows = [
        {"trial_id": "a", "seed": 0, "loss": "pclc", "robust_acc": 0.4, "clean_acc": 0.9},
        {"trial_id": "b", "seed": 1, "loss": "pclc", "robust_acc": 0.6, "clean_acc": 0.8},
    ]
    (entry,) = ablation_table(cfg, rows)
    assert (
        entry["seeds"] == 2 and entry["robust_acc"] == pytest.approx(0.5) and entry["clean_acc"] == pytest.approx(0.85)
    )
    result = SweepResult("abl", "/x", "sqlite:///x.db", "1", "p", False, {}, finished=rows, best=best_rows(cfg, rows))
    out = io.StringIO()
    print_summary(cfg, result, out)
    assert "robust_acc=0.5000±0.1414" in out.getvalue() and "(2 seeds)" in out.getvalue()
