"""The sweep's verdict: reference arms, confirmation on fresh seeds, paired comparisons (issue 18).

The config tests need no Ray; the sweeps run on a real local Ray and a real MLflow store, with a
stand-in trial whose robust accuracy is noise (the search's winner is luck by construction)."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import sweep_util
from ray import cloudpickle
from sweep_util import local_ray, runs, tiny_ablation, tiny_optimize  # noqa: F401  (local_ray is a fixture)

from pclc import contract as C
from sweeps.config import REFERENCE, SweepConfigError
from sweeps.driver import run_sweep

cloudpickle.register_pickle_by_value(sweep_util)  # Ray workers cannot import the tests folder


# ------------------------------------------------------------------ the sweep file: references and confirm
def test_references_default_to_ce_and_the_authors_pclc(tmp_path: Path) -> None:
    cfg = tiny_optimize("refs", tmp_path, reference=None, confirm={"top": 2})
    assert [r["name"] for r in cfg.references()] == ["ce", "pclc-authors"]
    ce_only = tiny_optimize(
        "refs",
        tmp_path,
        reference=None,
        trial={"loss": "pc"},
        space={"margin": cfg.space["margin"].model_dump()},
        initial_points=[{"margin": 0.995}],
    )
    assert [r["name"] for r in ce_only.references()] == ["ce"]  # no PC-LC trained: no authors' PC-LC arm
    mine = tiny_optimize("refs", tmp_path, reference=[{"name": "base", "loss": "ce", "lr": 0.01}])
    assert mine.references() == [{"name": "base", "loss": "ce", "lr": 0.01}]


def test_an_ablation_marks_the_grid_point_that_is_a_reference_and_adds_the_missing_one(tmp_path: Path) -> None:
    cfg = tiny_ablation(
        "abl",
        tmp_path,
        variants=[{"loss": "ce"}, {"loss": "pc", "margin": [0.9, 0.99]}],
        seeds=[0, 1],
        reference=[
            {"name": "ce", "loss": "ce"},
            {"name": "authors", "loss": "pclc", "margin": 0.995, "lc_weight": 0.05},
        ],
    )
    grid = cfg.trial_overrides()
    assert len(grid) == 2 + 4 + 2  # ce × 2 seeds, pc × 2 margins × 2 seeds, the added reference × 2 seeds
    assert [o.get(REFERENCE) for o in grid if o["variant"] == "ce"] == ["ce", "ce"]
    added = [o for o in grid if o.get(REFERENCE) == "authors"]
    assert [(o["variant"], o["seed"]) for o in added] == [("authors", 0), ("authors", 1)]
    assert all(REFERENCE not in o for o in grid if o["variant"] == "pc")
    assert cfg.total_trials() == 8


def test_confirmation_takes_distinct_top_configurations_and_every_reference(tmp_path: Path) -> None:
    cfg = tiny_optimize("conf", tmp_path, reference=None, confirm={"top": 2, "seeds": [5, 6]})
    ranked = [
        {"trial_id": "a", "margin": 0.95, "lc_weight": 0.1},
        {"trial_id": "b", "margin": 0.95, "lc_weight": 0.1},  # the same configuration again: confirmed once
        {"trial_id": "c", "margin": 0.995, "lc_weight": 0.05},  # the authors' point: confirmed as that reference
        {"trial_id": "d", "margin": 0.91, "lc_weight": 0.2},
    ]
    arms = cfg.confirm_overrides(ranked)
    labels = [(o["variant"], o.get(REFERENCE), o.get("search_trial"), o["seed"]) for o in arms]
    assert labels == [
        ("search #1", None, "a", 5),
        ("search #1", None, "a", 6),
        ("search #2", "pclc-authors", "c", 5),
        ("search #2", "pclc-authors", "c", 6),
        ("ce", "ce", None, 5),
        ("ce", "ce", None, 6),
    ]
    assert cfg.confirm_trial().aa_limit is None  # AutoAttack on every evaluated sample
    assert cfg.trial_config(arms[-1], confirmation=True).loss == "ce"
    assert cfg.total_trials() == 3 + (2 + 2) * 2  # the search, then at most top + references per fresh seed
    assert tiny_optimize("conf", tmp_path, confirm={"top": 0}).confirm_overrides(ranked) == []


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (
            {"reference": [{"name": "ce", "loss": "ce", "seed": 3}]},
            "reference[0].seed: a reference runs on the sweep's own seeds",
        ),
        ({"reference": [{"loss": "ce", "attacks": ["fgsm"]}]}, "reference[0].attacks: not variable per trial"),
        ({"reference": [{"loss": "pclc", "margin": [0.9, 0.99]}]}, "a reference is one configuration"),
        ({"reference": [{"name": "x", "loss": "ce"}, {"name": "x", "loss": "pc"}]}, "must differ"),
        (
            {"reference": [{"name": "bad", "loss": "pclc", "margin": 5}]},
            "reference (bad): the trial {loss='pclc', margin=5} is invalid: margin",
        ),
        ({"confirm": {"top": 2, "seeds": [0, 1]}}, "seed 0 is the search's own (trial.seed)"),
        ({"confirm": {"top": 2, "seeds": [1, 1]}}, "confirm.seeds = [1, 1]: give distinct integers"),
        ({"confirm": {"top": -1}}, "confirm.top"),
    ],
)
def test_bad_references_and_confirmations_are_refused_by_field(tmp_path: Path, changes: dict, message: str) -> None:
    with pytest.raises(SweepConfigError) as err:
        tiny_optimize("bad", tmp_path, **changes)
    assert message in str(err.value)


def test_confirm_is_refused_in_an_ablation(tmp_path: Path) -> None:
    with pytest.raises(SweepConfigError, match="confirm: only for mode optimize"):
        tiny_ablation("abl", tmp_path, variants=[{"loss": "ce"}], seeds=[0], confirm={"top": 3})


# ------------------------------------------------------------------ a sweep whose search winner is noise
@pytest.mark.slow
def test_a_search_winner_that_is_noise_is_tied_after_confirmation(local_ray: None, tmp_path: Path) -> None:
    cfg = tiny_optimize(
        "noise",
        tmp_path,
        num_trials=6,
        reference=None,
        confirm={"top": 2, "seeds": [1, 2, 3, 4]},
        trial={"epochs": 2},
    )
    printed = io.StringIO()
    result = run_sweep(cfg, out=printed, run_fn=sweep_util.noise_trial)
    text = printed.getvalue()
    verdict = result.verdict
    assert verdict is not None and verdict.source == "confirmation"
    names = [a.name for a in verdict.arms]
    # the top 2 and both references; the authors' initial point is confirmed once, as its reference, if it ranks
    assert {"search #1", "ce"} <= set(names) and len(names) in (3, 4), names
    assert any(a.reference == "pclc-authors" for a in verdict.arms)
    assert all(len(a.runs) == 4 for a in verdict.arms)
    total = 6 + 4 * len(names)
    assert f"{total} trials: {total} finished, 0 failed" in text, text[-3000:]
    winner = next(a for a in verdict.arms if a.name == "search #1")
    assert winner.search_score is not None  # the search's own score is shown beside
    against_ce = [line for line in verdict.lines if line.reference.name == "ce" and line.arm.reference is None]
    assert against_ce and all(line.result.outcome == "tied" for line in against_ce), verdict.sentences()
    assert "search #1" in text.split("verdict (")[-1] and " vs ce: " in text.split("verdict (")[-1], text[-2000:]

    # MLflow: the confirmation runs are children of the same parent, tagged as such
    parent, children = runs(f"sqlite:///{tmp_path / 'mlflow.db'}", "noise")
    phases = [c.data.tags.get(C.PHASE) for c in children]
    assert phases.count(C.PHASE_CONFIRM) == 4 * len(names) and phases.count(C.PHASE_SEARCH) == 6
    confirm_runs = [c for c in children if c.data.tags.get(C.PHASE) == C.PHASE_CONFIRM]
    assert all(c.data.params["aa_limit"] == "None" for c in confirm_runs)
    assert {c.data.params["seed"] for c in confirm_runs} == {"1", "2", "3", "4"}
    assert sum(c.data.tags.get(C.REFERENCE) == "ce" for c in confirm_runs) == 4
