"""The sweep's verdict: reference arms, confirmation on fresh seeds, paired comparisons (issue 18).

The config tests need no Ray; the sweeps run on a real local Ray and a real MLflow store, with a
stand-in trial whose robust accuracy is noise (the search's winner is luck by construction)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import sweep_util
from ray import cloudpickle
from statsmodels.stats.multitest import multipletests
from sweep_util import local_ray, runs, tiny_ablation, tiny_optimize  # noqa: F401  (local_ray is a fixture)

from analysis.compare import Estimate
from analysis.load import Sweep
from analysis.verdict import Arm, verdict
from pclc import contract as C
from pclc import metrics as M
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


# ------------------------------------------------------------------ arms paired by training mode
# (name, reference?, training): ce has no `training` value, like a run logged before there was a choice
MODE_ARMS = [
    ("ce", True, None),
    ("pclc-authors", True, "standard"),
    ("ce-pgd", True, "pgd"),
    ("ce-trades", True, "trades"),
    ("label-smoothing", False, "standard"),
    ("pclc-pgd", False, "pgd"),
    ("pclc-trades", False, "trades"),
]


def finished_run(run_id: str, name: str, seed: int, robust: float, *, reference: bool, **extra: Any) -> dict[str, Any]:
    """A hand-made finished run of arm `name` (a reference arm's when `reference`), as a sweep's table row."""
    return {
        "run_id": run_id,
        "variant": name,
        "config": "default",
        "outcome": "finished",
        "phase": C.PHASE_SEARCH,
        "reference": name if reference else None,
        "search_trial": None,
        "seed": seed,
        **extra,
        M.ROBUST_ACC: robust,
        M.CLEAN_ACC: 0.9,
    }


def table_sweep(rows: list[dict[str, Any]], references: list[str], **fields: Any) -> Sweep:
    """An ablation sweep of `rows` (`finished_run`s) without a store: the verdict reads the table alone where no
    per-epoch signal is logged. `fields` override the Sweep's (params, objectives, verdict_margin, …)."""
    base = dict(
        experiment="table",
        experiment_id="0",
        tracking_uri="",
        parent_run_id=None,
        mode="ablation",
        headline=M.ROBUST_ACC,
        objectives=[(M.ROBUST_ACC, "max")],
        runs=pd.DataFrame(rows),
        params=["seed"],
        metrics=[M.ROBUST_ACC, M.CLEAN_ACC],
        config_params=[],
        references=references,
    )
    return Sweep(**{**base, **fields})


def grid_sweep(arms: list[tuple[str, bool, str | None]], *, training: bool = True) -> Sweep:
    """An ablation grid, one run per arm and seed 1-3. `training=False`: runs without a `training` param."""
    rows = [
        finished_run(
            f"{name}-{seed}",
            name,
            seed,
            0.3 + 0.02 * i + 0.01 * (seed * (i + 1) % 3),  # differences vary by seed: a t-test
            reference=reference,
            **({"training": mode} if training else {}),
        )
        for i, (name, reference, mode) in enumerate(arms)
        for seed in (1, 2, 3)
    ]
    references = [name for name, reference, _ in arms if reference]
    return table_sweep(rows, references, params=["seed"] + (["training"] if training else []))


def test_arms_are_judged_against_the_references_of_their_training_mode_and_plain_ce() -> None:
    judged = verdict(grid_sweep(MODE_ARMS))
    assert [(line.arm.name, line.reference.name) for line in judged.lines] == [
        ("pclc-authors", "ce"),
        ("ce-pgd", "ce"),
        ("ce-trades", "ce"),
        ("label-smoothing", "ce"),
        ("label-smoothing", "pclc-authors"),
        ("pclc-pgd", "ce-pgd"),
        ("pclc-pgd", "ce"),
        ("pclc-trades", "ce-trades"),
        ("pclc-trades", "ce"),
    ]
    assert [a.training for a in judged.arms] == ["standard", "standard", "pgd", "trades", "standard", "pgd", "trades"]
    raw = [line.result.p_value for line in judged.lines]
    assert [line.result.p_corrected for line in judged.lines] == pytest.approx(
        list(multipletests(raw, method="bonferroni")[1])
    )  # Bonferroni over these nine comparisons, no more
    assert {line.result.level for line in judged.lines} == {1 - 0.05 / 9} and {
        line.family for line in judged.lines
    } == {9}
    assert not [n for n in judged.notes if "not compared" in n]


def test_runs_without_a_training_param_are_judged_as_before() -> None:
    judged = verdict(grid_sweep(MODE_ARMS, training=False))
    refs = [name for name, reference, _ in MODE_ARMS if reference]
    # every arm against every reference; a later reference against the earlier ones
    expected = [
        (name, ref) for name, reference, _ in MODE_ARMS for ref in (refs[: refs.index(name)] if reference else refs)
    ]
    assert len(expected) == 1 + 2 + 3 + 3 * 4
    assert [(line.arm.name, line.reference.name) for line in judged.lines] == expected
    assert {a.training for a in judged.arms} == {"standard"}


@pytest.mark.parametrize(
    ("name", "config", "training", "label"),
    [
        ("search #1", "ξ=0.99", "pgd", "search #1 (ξ=0.99) [pgd]"),  # unnamed: the mode is added
        ("search #2", "default", "trades", "search #2 [trades]"),
        ("pclc-pgd", "default", "pgd", "pclc-pgd"),  # the name says it
        ("search #1", "training=pgd, ε_train=0.3", "pgd", "search #1 (training=pgd, ε_train=0.3)"),  # the config does
        ("search #1", "ξ=0.99", "standard", "search #1 (ξ=0.99)"),
    ],
)
def test_an_arm_label_shows_a_training_mode_nothing_else_says(
    name: str, config: str, training: str, label: str
) -> None:
    estimate = Estimate(0.5, 0.4, 0.6, "seeds", 3)
    arm = Arm(name, config, None, pd.DataFrame(), estimate, clean=0.9, training=training)
    assert arm.label == label


# ------------------------------------------------------------------ a sweep whose search winner is noise
@pytest.mark.slow
def test_a_search_winner_that_is_noise_is_not_better_after_confirmation(local_ray: None, tmp_path: Path) -> None:
    cfg = tiny_optimize(
        "noise",
        tmp_path,
        num_trials=6,
        reference=None,
        confirm={"top": 2, "seeds": [1, 2, 3, 4]},
        trial={"epochs": 2},
        max_concurrent=1,  # TPE then proposes the same points whatever the timing: one fixed draw, not a 5 % coin
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
    assert against_ce and all(line.result.outcome == "inconclusive" for line in against_ce), verdict.sentences()
    # the stand-in trials log no per-sample outcomes: the sentence says the pairing is by seed only
    assert all(not line.on_samples for line in against_ce) and "paired by seed on logged accuracies" in text
    assert "search #1" in text.split("verdict (")[-1] and " vs ce: " in text.split("verdict (")[-1], text[-2000:]

    # MLflow: the confirmation runs are children of the same parent, tagged as such
    parent, children = runs(f"sqlite:///{tmp_path / 'mlflow.db'}", "noise")
    phases = [c.data.tags.get(C.PHASE) for c in children]
    assert phases.count(C.PHASE_CONFIRM) == 4 * len(names) and phases.count(C.PHASE_SEARCH) == 6
    confirm_runs = [c for c in children if c.data.tags.get(C.PHASE) == C.PHASE_CONFIRM]
    assert all(c.data.params["aa_limit"] == "None" for c in confirm_runs)
    assert {c.data.params["seed"] for c in confirm_runs} == {"1", "2", "3", "4"}
    assert sum(c.data.tags.get(C.REFERENCE) == "ce" for c in confirm_runs) == 4


# ------------------------------------------------------------------ a sequential confirmation
@pytest.mark.slow
def test_a_sequential_confirmation_stops_the_decided_comparisons_and_resumes_at_its_look(
    local_ray: None, tmp_path: Path
) -> None:
    """confirm.looks [2, 4, 6]: PC-LC 30 points above CE is decided at look 2 (4 seeds; O'Brien–Fleming never
    decides at 2), CE stops there; the PC-LC arms, within 6 points of each other, take look 3's seeds."""
    cfg = tiny_optimize(
        "looks", tmp_path, num_trials=2, reference=None, confirm={"top": 2, "looks": [2, 4, 6]}, trial={"epochs": 1}
    )
    printed = io.StringIO()
    result = run_sweep(cfg, out=printed, run_fn=sweep_util.loss_trial)
    text, verdict = printed.getvalue(), result.verdict
    assert verdict is not None and verdict.progress is not None, text[-3000:]
    against_ce = [line for line in verdict.lines if line.reference.name == "ce"]
    assert against_ce and all(line.result.outcome == "better" for line in against_ce), verdict.sentences()
    assert all(line.stopped == "decided at look 2 of 3 (4 seeds)" for line in against_ce)
    assert all("repeated interval, decided at look 2 of 3" in line.sentence(verdict.metric) for line in against_ce)
    within = [line for line in verdict.lines if line.reference.name != "ce"]
    seeds = {a.name: len(a.runs) for a in verdict.arms}
    assert len(seeds) == 3 and len(within) == 1, seeds  # both search points are confirmed: one is the authors' ξ, λ
    assert seeds["ce"] == 4 and all(n == 6 for name, n in seeds.items() if name != "ce"), seeds
    assert all(line.seeds == 6 and "look 3 of 3" in (line.stopped or "") for line in within), verdict.sentences()
    assert "2 saved by the early stops" in text and "look 3 of 3:" in text, text[-3000:]
    parent, children = runs(f"sqlite:///{tmp_path / 'mlflow.db'}", "looks")
    confirm_seeds = sorted(int(c.data.params["seed"]) for c in children if c.data.tags.get(C.PHASE) == C.PHASE_CONFIRM)
    assert confirm_seeds.count(1) == len(seeds) and confirm_seeds.count(5) == len(seeds) - 1
    # the same command again: every look is read back (none re-runs), the same decisions
    again = run_sweep(cfg, out=io.StringIO(), run_fn=sweep_util.loss_trial, resume=True)
    assert [line.stopped for line in again.verdict.lines] == [line.stopped for line in verdict.lines]
    assert len(runs(f"sqlite:///{tmp_path / 'mlflow.db'}", "looks")[1]) == len(children)


@pytest.mark.slow
def test_an_ablation_takes_its_seeds_in_looks_too(local_ray: None, tmp_path: Path) -> None:
    """`looks` in an ablation: the grid runs on the first 2 seeds, each later look adds seeds to the arms of the
    comparisons still open; a variant's grid points are arms of their own ('pclc (margin=0.9)')."""
    variants = [{"loss": "ce"}, {"loss": "pclc", "margin": [0.9, 0.995], "lc_weight": 0.05}]
    cfg = tiny_ablation("ablooks", tmp_path, variants, [1, 2, 3, 4, 5, 6], reference=None, looks=[2, 4, 6])
    assert cfg.look_seeds(0) == [1, 2] and len(cfg.trial_overrides(cfg.look_seeds(0))) == 6
    printed = io.StringIO()
    result = run_sweep(cfg, out=printed, run_fn=sweep_util.loss_trial)
    verdict = result.verdict
    assert verdict is not None and verdict.source == "grid" and verdict.progress is not None, printed.getvalue()[-3000:]
    seeds = {a.name: len(a.runs) for a in verdict.arms}
    assert seeds == {"ce": 4, "pclc (margin=0.9)": 6, "pclc (margin=0.995)": 6}, seeds
    against_ce = [line for line in verdict.lines if line.reference.name == "ce"]
    assert len(against_ce) == 2 and all(line.stopped == "decided at look 2 of 3 (4 seeds)" for line in against_ce)
    assert all(line.result.outcome == "better" for line in against_ce), verdict.sentences()
    parent, children = runs(f"sqlite:///{tmp_path / 'mlflow.db'}", "ablooks")
    assert len(children) == 6 + 6 + 4 and {c.data.tags.get(C.PHASE) for c in children} == {C.PHASE_SEARCH}
    assert sorted(c.data.tags.get(C.LOOK, "1") for c in children).count("3") == 4


def test_looks_are_checked_before_ray_starts(tmp_path: Path) -> None:
    cfg = tiny_optimize("looks", tmp_path, reference=None, confirm={"top": 1, "looks": [3, 6, 10]})
    assert cfg.look_sizes() == (3, 6, 10) and cfg.look_seeds(1) == [4, 5, 6] and cfg.confirm_seeds() == [1, 2, 3]
    assert cfg.total_trials() == 3 + 3 * 10  # every look run: the most it can cost
    for looks, seeds, message in (
        ([1, 4], None, "the first at least 2"),
        ([3, 3], None, "increasing seed counts"),
        ([2, 4], [1, 2, 3], "the last look needs 4 seeds"),
        ([2, 4], [4, 3, 2, 1], "increasing order"),
    ):
        with pytest.raises(SweepConfigError, match=message):
            tiny_optimize("looks", tmp_path, reference=None, confirm={"top": 1, "looks": looks, "seeds": seeds})
    with pytest.raises(SweepConfigError, match="looks: only for mode ablation"):
        tiny_optimize("looks", tmp_path, reference=None, looks=[2, 4])
    with pytest.raises(SweepConfigError, match=r"seeds = \[1, 2, 3\]: the last look needs 4 seeds"):
        tiny_ablation("looks", tmp_path, [{"loss": "ce"}], [1, 2, 3], looks=[2, 4])
    grid = tiny_ablation("looks", tmp_path, [{"loss": "ce"}], [1, 2, 3, 4], looks=[2, 4])
    assert (
        grid.look_sizes() == (2, 4) and grid.look_seeds(1) == [3, 4] and grid.total_trials() == 4
    )  # at most: every look run


# ------------------------------------------------------------------ what the verdict says, and what it leaves out
def two_arm_sweep(rows: list[tuple[str, int, float]], **fields: Any) -> Sweep:
    """CE (the reference) and one arm: (arm, seed, robust_acc) rows, started in that order."""
    runs = [
        finished_run(
            f"{name}-{seed}-{i}", name, seed, value, reference=name == "ce", start_time=pd.Timestamp(i, unit="s")
        )
        for i, (name, seed, value) in enumerate(rows)
    ]
    return table_sweep(runs, ["ce"], **fields)


def test_seeds_in_one_arm_only_and_a_seed_run_twice_are_said_not_dropped_silently() -> None:
    rows = [("ce", s, 0.5 + 0.01 * s) for s in (1, 2, 3, 4)] + [("pclc", s, 0.45 + 0.02 * s) for s in (1, 2, 3)]
    rows.append(("pclc", 2, 0.9))  # seed 2 again, later: the latest run of the seed speaks
    judged = verdict(two_arm_sweep(rows))
    (line,) = judged.lines
    assert line.seeds == 3 and not line.on_samples
    assert line.result.difference.value == pytest.approx(((0.47 - 0.51) + (0.9 - 0.52) + (0.51 - 0.53)) / 3)
    notes = " ".join(judged.notes)
    assert "ran seed(s) [2] more than once: the latest run of each seed is compared" in notes
    assert "seed(s) [4] ran in one arm only and are left out of the comparison" in notes
    assert "paired by seed on logged accuracies (no per-sample outcomes" in line.sentence(judged.metric)


def test_the_sweeps_margin_and_direction_decide_the_words() -> None:
    rows = [("ce", s, 0.5 + 0.03 * s) for s in (1, 2, 3, 4, 5)] + [
        ("pclc", s, 0.5 + 0.03 * s + d) for s, d in zip((1, 2, 3, 4, 5), (0.002, -0.001, 0.0, 0.001, -0.002))
    ]
    judged = verdict(two_arm_sweep(rows))
    (line,) = judged.lines
    assert judged.margin == 0.03 and line.result.outcome == "equivalent"
    assert "equivalent within ±3.0 points" in line.sentence(judged.metric)
    assert "AutoAttack-checked" in line.sentence(judged.metric)
    tight = verdict(two_arm_sweep(rows, verdict_margin=0.001))
    assert tight.lines[0].result.outcome == "inconclusive" and "detects a difference of" in tight.sentences()[0]
    lower = [("ce", s, 0.5 + 0.01 * s) for s in (1, 2, 3)] + [("pclc", s, 0.3 + 0.012 * s) for s in (1, 2, 3)]
    as_min = verdict(two_arm_sweep(lower, objectives=[(M.ROBUST_ACC, "min")]))
    assert as_min.lines[0].result.outcome == "better" and not as_min.higher_is_better
    assert verdict(two_arm_sweep(lower)).lines[0].result.outcome == "worse"


def test_one_seed_per_arm_ranks_and_says_so() -> None:
    judged = verdict(two_arm_sweep([("ce", 0, 0.5), ("pclc", 0, 0.7)]))
    assert not judged.lines  # no per-sample outcomes: nothing to pair, said as a note
    assert any("one seed and no stored per-sample outcomes" in n for n in judged.notes)
