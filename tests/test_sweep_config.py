"""Sweep files: every shipped file validates; every malformed field is refused before Ray starts,
with a message naming the file, the field, the bad value and what is allowed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from pclc.attacks import CLASSIC
from pclc.config import TrialConfig
from sweeps.config import (
    SEARCHABLE,
    SweepConfigError,
    parse_sweep,
    read_sweep_file,
    resolved_yaml,
    shipped_configs,
)

SHIPPED = shipped_configs()


def test_the_expected_files_are_shipped() -> None:
    names = {p.stem for p in SHIPPED}
    assert {
        "quickstart",
        "ablation_digits",
        "mnist_lenet5",
        "fashion_mnist_cnn3",
        "cifar10_vgg13",
        "cifar10_resnet20",
        "tiny_imagenet_vgg13",
        "controls_digits",
        "mnist_lenet5_at",
        "cifar10_resnet20_at",
    } <= names


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_shipped_file_validates(path: Path) -> None:
    cfg = read_sweep_file(path)
    assert cfg.name == path.stem
    assert cfg.total_trials() >= 1
    # the resolved file round-trips into the same sweep
    again = parse_sweep(yaml.safe_load(resolved_yaml(cfg)), source="resolved")
    assert again == cfg


@pytest.mark.parametrize(
    "path", [p for p in SHIPPED if not p.stem.endswith("_digits") and p.stem != "quickstart"], ids=lambda p: p.stem
)
def test_paper_scale_files_use_gpus_and_start_from_the_authors_defaults(path: Path) -> None:
    cfg = read_sweep_file(path)
    assert 0 < cfg.resources.gpu <= 1
    assert cfg.trial.data_root is not None and Path(cfg.trial.data_root).is_absolute()
    authors = {"margin": 0.995, "lc_weight": 0.05}.items()
    if cfg.mode == "optimize":
        assert authors <= cfg.full_initial_points()[0].items()
    else:  # the controls' grid: the authors' PC-LC is one of the references
        assert any(authors <= fields.items() for _, fields in cfg.reference_arms())
    natural = cfg.trial.dataset.startswith(("cifar", "tiny_imagenet"))
    assert max(cfg.trial.eps) <= (8 / 255 + 1e-6 if natural else 0.3)


def test_data_root_comes_from_an_environment_variable(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PCLC_DATA", str(tmp_path / "datasets"))
    cfg = read_sweep_file(Path(__file__).parents[1] / "sweeps/configs/mnist_lenet5.yaml")
    assert cfg.trial.data_root == str(tmp_path / "datasets")


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_shipped_files_score_with_autoattack_and_the_classic_attacks(path: Path) -> None:

    trial = read_sweep_file(path).trial
    assert "autoattack" in trial.attacks and trial.headline_eps in (trial.aa_eps or [trial.headline_eps])
    assert {"fgsm", "pgd_ce", "pgd_cw", "mim", "transfer"} <= set(trial.attacks)  # the paper's protocol stays
    assert trial.save_weights  # `pclc evaluate` can re-score the finalists
    assert set(trial.attacks) & set(CLASSIC) and trial.aa_limit is not None


def test_quickstart_is_small_and_cpu_only() -> None:
    cfg = read_sweep_file(Path(__file__).parents[1] / "sweeps/configs/quickstart.yaml")
    assert (cfg.mode, cfg.trial.dataset, cfg.resources.gpu, cfg.num_trials) == ("optimize", "digits", 0, 4)
    assert {"margin", "lc_weight", "epochs", "warmup_epochs", "lr"} <= set(cfg.space)  # training length too
    # the verdict's arms: the best and the references (CE first) on 5 fresh seeds
    assert (cfg.confirm.top, cfg.confirm_seeds()) == (1, [1, 2, 3, 4, 5])
    assert [r["name"] for r in cfg.references()] == ["ce", "pclc-authors"]


def test_ablation_grid_is_variants_times_values_times_seeds() -> None:
    cfg = read_sweep_file(Path(__file__).parents[1] / "sweeps/configs/ablation_digits.yaml")
    trials = cfg.trial_overrides()
    # ce: 1, pc: 3 margins, lc: 2 weights, pclc: 2 margins × 3 weights = 12 points; × 3 seeds
    assert len(trials) == cfg.total_trials() == 12 * 3
    assert {t["variant"] for t in trials} == {"ce", "pc", "lc", "pclc"}
    assert sum(t["variant"] == "pclc" and t["seed"] == 1 for t in trials) == 6
    for t in trials:  # every grid point is a valid trial
        assert cfg.trial_config(t).loss == t["variant"]


@pytest.mark.parametrize("name", ["controls_digits", "mnist_lenet5_at", "cifar10_resnet20_at"])
def test_the_controls_grid_is_seven_arms_in_three_training_modes(name: str) -> None:
    cfg = read_sweep_file(Path(__file__).parents[1] / f"sweeps/configs/{name}.yaml")
    trials = cfg.trial_overrides()
    assert len(trials) == cfg.total_trials() == 7 * len(cfg.seeds) and len(cfg.seeds) >= 3
    arms = {t["variant"]: cfg.trial_config(t) for t in trials}
    assert {(a.loss, a.training) for a in arms.values()} == {
        ("ce", "standard"),
        ("pclc", "standard"),
        ("label_smoothing", "standard"),
        ("ce", "pgd"),
        ("pclc", "pgd"),
        ("ce", "trades"),
        ("pclc", "trades"),
    }
    assert [r for r, _ in cfg.reference_arms()] == ["ce", "pclc-authors", "ce-pgd", "ce-trades"]
    # adversarial training at the headline radius: the eps the verdict is taken at
    assert all(a.adv_eps == a.headline_eps for a in arms.values())
    natural = cfg.trial.dataset.startswith("cifar")
    expected = 8 / 255 if natural else 0.3 if cfg.trial.dataset == "mnist" else 0.1
    assert cfg.trial.headline_eps == pytest.approx(expected, rel=1e-4)


def test_initial_points_are_completed_from_the_base_trial() -> None:
    cfg = parse_sweep(_optimize(initial_points=[{"margin": 0.99}]))
    assert cfg.full_initial_points() == [{"margin": 0.99, "lc_weight": 0.05}]


def test_set_overrides_use_dotted_keys(tmp_path: Path) -> None:
    path = _write(tmp_path, _optimize())
    cfg = read_sweep_file(path, ["trial.epochs=5", "num_trials=3", "space.margin={type: uniform, low: 0.5, high: 0.9}"])
    assert (cfg.trial.epochs, cfg.num_trials, cfg.space["margin"].high) == (5, 3, 0.9)


def test_smoke_test_shrinks_the_sweep_and_the_users_set_still_wins() -> None:
    quickstart = Path(__file__).parents[1] / "sweeps/configs/quickstart.yaml"
    smoke = read_sweep_file(quickstart, smoke=True)
    assert (smoke.name, smoke.num_trials, smoke.trial.epochs, smoke.trial.train_limit) == (
        "quickstart-smoke",
        2,
        2,
        256,
    )
    assert smoke.full_initial_points()[0]["warmup_epochs"] == 1  # inside the shrunk warm-up range
    mine = read_sweep_file(quickstart, ["trial.epochs=6", "name=mine"], smoke=True)
    assert (mine.name, mine.num_trials, mine.trial.epochs, mine.trial.eval_limit) == ("mine", 2, 6, 64)


def test_objective_names_are_canonical_and_lists_make_a_pareto_search() -> None:
    cfg = parse_sweep(_optimize(objective=["clean_acc", {"metric": "robust_acc/apgd_ce/eps=0.10"}]))
    assert [o.metric for o in cfg.objective] == ["clean_acc", "robust_acc/apgd_ce/eps=0.1"]
    assert cfg.multi_objective and cfg.headline_metric == "robust_acc/apgd_ce/eps=0.1"


def test_tracking_uri_is_made_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    cfg = parse_sweep(_optimize(tracking_uri="sqlite:///sub/mlflow.db", storage_path="rr"))
    assert cfg.tracking_uri == f"sqlite:///{tmp_path}/sub/mlflow.db"
    assert cfg.storage_path == str(tmp_path / "rr")


# --------------------------------------------------------------------------- malformed files


def _optimize(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "name": "t",
        "mode": "optimize",
        "trial": {
            "dataset": "digits",
            "model": "small_cnn",
            "epochs": 4,
            "warmup_epochs": 1,
            "attacks": ["fgsm", "pgd_ce", "apgd_ce"],
            "eps": [0.1, 0.2],
            "headline_eps": 0.1,
        },
        "objective": [{"metric": "robust_acc", "mode": "max"}],
        "space": {
            "margin": {"type": "uniform", "low": 0.9, "high": 0.999},
            "lc_weight": {"type": "loguniform", "low": 0.01, "high": 0.5},
        },
        "num_trials": 4,
    }
    return _merge(base, changes)


def _ablation(**changes: Any) -> dict[str, Any]:
    base = _optimize()
    for key in ("space", "num_trials"):
        base.pop(key)
    base.update(mode="ablation", variants=[{"loss": "ce"}, {"loss": "pc", "margin": [0.9, 0.99]}], seeds=[0, 1])
    return _merge(base, changes)


def _merge(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in changes.items():
        if isinstance(value, dict) and value and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _write(tmp_path: Path, data: dict[str, Any]) -> Path:
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _drop(data: dict[str, Any], *keys: str) -> dict[str, Any]:
    node = data
    for k in keys[:-1]:
        node = node[k]
    del node[keys[-1]]
    return data


# (id, sweep file, text that must appear: the field, the bad value, and what is allowed)
BAD: list[tuple[str, dict[str, Any], list[str]]] = [
    ("unknown top-level key", _optimize(trails=3), ["trails", "unknown key", "allowed keys", "num_trials"]),
    ("bad mode", _optimize(mode="search"), ["mode", "'search'", "optimize", "ablation"]),
    ("bad name", _optimize(name="a/b"), ["name", "'a/b'", "letters, digits"]),
    ("missing name", _drop(_optimize(), "name"), ["name", "required"]),
    ("trial margin above 1", _optimize(trial={"margin": 1.5}), ["trial.margin", "1.5", "less than or equal to 1"]),
    (
        "negative lc_weight",
        _optimize(trial={"lc_weight": -0.1}),
        ["trial.lc_weight", "-0.1", "greater than or equal to 0"],
    ),
    ("unknown trial key", _optimize(trial={"epoch": 3}), ["trial.epoch", "unknown key", "epochs", "margin"]),
    ("eps out of pixel range", _optimize(trial={"eps": [0.1, 2.0]}), ["trial.eps", "2.0", "(0, 1]"]),
    ("unknown attack", _optimize(trial={"attacks": ["fgsm", "cw"]}), ["trial.attacks", "cw", "pgd_ce"]),
    ("unknown dataset", _optimize(trial={"dataset": "mnist2"}), ["trial.dataset", "mnist2", "fashion_mnist"]),
    ("unknown model", _optimize(trial={"model": "vgg99"}), ["trial.model", "vgg99", "lenet5"]),
    (
        "space type",
        _optimize(space={"margin": {"type": "normal", "low": 0, "high": 1}}),
        ["space.margin.type", "normal", "uniform", "loguniform", "int", "choice"],
    ),
    (
        "space bounds swapped",
        _optimize(space={"margin": {"type": "uniform", "low": 0.99, "high": 0.9}}),
        ["space.margin", "low 0.99 must be below high 0.9"],
    ),
    (
        "space beyond the field's range",
        _optimize(space={"margin": {"type": "uniform", "low": 0.5, "high": 1.2}}),
        ["space", "margin=1.2", "margin", "less than or equal to 1"],
    ),
    (
        "loguniform at zero",
        _optimize(space={"lc_weight": {"type": "loguniform", "low": 0.0, "high": 0.5}}),
        ["space.lc_weight", "loguniform needs low > 0"],
    ),
    ("choice without values", _optimize(space={"loss": {"type": "choice"}}), ["space.loss", "values"]),
    (
        "choice with a bad value",
        _optimize(space={"loss": {"type": "choice", "values": ["pc", "hinge"]}}),
        ["loss='hinge'", "loss", "choose one of: ce, label_smoothing, lc, pc, pclc"],
    ),
    (
        "warm-up longer than training",
        _optimize(space={"warmup_epochs": {"type": "int", "low": 0, "high": 9}}),
        ["warmup_epochs=9", "warmup_epochs 9 exceeds epochs 4"],
    ),
    (
        "space over a fixed field",
        _optimize(space={"model": {"type": "choice", "values": ["lenet5"]}}),
        ["space.model", "not searchable", "searchable: " + ", ".join(SEARCHABLE)],
    ),
    (
        "unknown space key",
        _optimize(space={"margin": {"type": "uniform", "low": 0.9, "high": 0.99, "step": 2}}),
        ["space.margin.step", "unknown key", "low", "high", "values"],
    ),
    ("optimize without space", {**_optimize(), "space": {}}, ["space", "at least one parameter", "searchable"]),
    ("optimize without num_trials", _drop(_optimize(), "num_trials"), ["num_trials", "missing"]),
    ("num_trials zero", _optimize(num_trials=0), ["num_trials", "0", "greater than or equal to 1"]),
    (
        "initial point outside the space",
        _optimize(initial_points=[{"margin": 0.5}]),
        ["initial_points[0].margin", "0.5", "uniform in [0.9, 0.999]"],
    ),
    (
        "initial point not in the space",
        _optimize(initial_points=[{"lr": 0.1}]),
        ["initial_points[0].lr", "not in `space`", "allowed: lc_weight, margin"],
    ),
    (
        "objective not measured",
        _optimize(objective="robust_acc/bim/eps=0.1"),
        ["objective[0].metric", "robust_acc/bim/eps=0.1", "allowed:", "robust_acc/pgd_ce/eps=0.1"],
    ),
    (
        "objective on classic attacks alone",
        _optimize(trial={"attacks": ["fgsm", "pgd_ce"]}),
        ["objective[0].metric", "'robust_acc'", "AutoAttack-grade", "autoattack", "trial.attacks"],
    ),
    (
        "objective on a classic attack",
        _optimize(objective="robust_acc/pgd_ce/eps=0.1"),
        ["objective[0].metric", "robust_acc/pgd_ce/eps=0.1", "classic attacks", "AutoAttack-grade"],
    ),
    (
        "objective on the classic claim",
        _optimize(objective="robust_acc_classic"),
        ["objective[0].metric", "robust_acc_classic", "classic attacks alone"],
    ),
    (
        "objective where AutoAttack did not run",
        _optimize(objective="robust_acc/worst/eps=0.2"),
        ["objective[0].metric", "robust_acc/worst/eps=0.2", "no AutoAttack-grade attack runs at eps=0.2", "aa_eps"],
    ),
    (
        "objective mode",
        _optimize(objective=[{"metric": "robust_acc", "mode": "up"}]),
        ["objective.0.mode", "'up'", "'max' or 'min'"],
    ),
    ("negative gpu", _optimize(resources={"gpu": -1}), ["resources.gpu", "-1", "greater than or equal to 0"]),
    ("gpu fraction above one", _optimize(resources={"gpu": 1.5}), ["resources.gpu", "1.5", "whole GPUs"]),
    ("zero cpu", _optimize(resources={"cpu": 0}), ["resources.cpu", "0", "greater than 0"]),
    ("gpu with a cpu trial", _optimize(resources={"gpu": 0.5}, trial={"device": "cpu"}), ["resources.gpu", "device"]),
    ("max_concurrent zero", _optimize(max_concurrent=0), ["max_concurrent", "greater than or equal to 1"]),
    ("negative retries", _optimize(max_retries=-1), ["max_retries", "-1", "greater than or equal to 0"]),
    ("unknown scheduler", _optimize(scheduler="hyperband"), ["scheduler.type", "hyperband", "'none' or 'asha'"]),
    (
        "asha on a final metric",
        _optimize(scheduler={"type": "asha", "metric": "robust_acc"}),
        ["scheduler.metric", "robust_acc", "epoch_robust_acc", "clean_acc", "train_loss"],
    ),
    (
        "asha grace beyond epochs",
        _optimize(scheduler={"type": "asha", "grace_period": 4}),
        ["scheduler.grace_period", "4", "below the fewest epochs a trial trains (4)"],
    ),
    (
        "asha without the per-epoch PGD",
        _optimize(scheduler={"type": "asha"}, trial={"epoch_eval_samples": 0}),
        ["scheduler.metric", "epoch_eval_samples > 0"],
    ),
    ("file store", _optimize(tracking_uri="file:///tmp/mlruns"), ["tracking_uri", "file:///tmp/mlruns", "sqlite:///"]),
    (
        "unset environment variable",
        _optimize(trial={"data_root": "${PCLC_NOT_SET_ANYWHERE}/x"}),
        ["trial.data_root", "PCLC_NOT_SET_ANYWHERE", "not set"],
    ),
    ("ablation without variants", _ablation(variants=[]), ["variants", "at least one variant"]),
    ("ablation variant without loss", _ablation(variants=[{"margin": 0.9}]), ["variants[0]", "needs `loss`"]),
    (
        "ablation variant over a fixed field",
        _ablation(variants=[{"loss": "pc", "eps": [0.1]}]),
        ["variants[0].eps", "not variable", "margin"],
    ),
    (
        "ablation variant with a bad value",
        _ablation(variants=[{"loss": "pc", "margin": [0.9, 0]}]),
        ["variants (pc)", "margin=0", "greater than 0"],
    ),
    (
        "ablation with a space",
        _ablation(space={"margin": {"type": "uniform", "low": 0.9, "high": 0.99}}),
        ["space", "only for mode optimize"],
    ),
    ("ablation with asha", _ablation(scheduler="asha"), ["scheduler.type", "'asha'", "use none"]),
    # 6 grid points and the default reference the grid lacks (the authors' PC-LC) on both seeds
    ("ablation trial count", _ablation(num_trials=5), ["num_trials = 5", "grid has 8 trials"]),
    ("ablation duplicate seeds", _ablation(seeds=[1, 1]), ["seeds", "[1, 1]", "distinct"]),
]


@pytest.mark.parametrize(("data", "expected"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_malformed_field_is_named_with_value_and_what_is_allowed(
    tmp_path: Path, data: dict[str, Any], expected: list[str]
) -> None:
    path = _write(tmp_path, data)
    with pytest.raises(SweepConfigError) as err:
        read_sweep_file(path)
    message = str(err.value)
    assert str(path) in message
    for text in expected:
        assert text in message, f"{text!r} missing from:\n{message}"


def test_every_error_is_reported_at_once(tmp_path: Path) -> None:
    path = _write(tmp_path, _optimize(max_concurrent=0, resources={"cpu": -1}, mode="x"))
    with pytest.raises(SweepConfigError) as err:
        read_sweep_file(path)
    assert all(f in str(err.value) for f in ("max_concurrent", "resources.cpu", "mode"))


def test_missing_or_unreadable_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="does not exist"):
        read_sweep_file(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(ValueError, match="not valid YAML"):
        read_sweep_file(bad)


def test_searchable_fields_are_trial_fields() -> None:
    assert set(SEARCHABLE) <= set(TrialConfig.model_fields)


def test_tiny_imagenet_follows_the_authors_notebook() -> None:
    trial = read_sweep_file(Path(__file__).parents[1] / "sweeps/configs/tiny_imagenet_vgg13.yaml").trial
    assert (trial.dataset, trial.model, trial.headline_eps) == ("tiny_imagenet", "vgg13", 0.015)
    assert trial.eps == trial.aa_eps == [0.005, 0.01, 0.015]
    assert (trial.optimizer, trial.lr, trial.batch_size, trial.schedule, trial.milestones, trial.gamma) == (
        "adam",
        0.01,
        256,
        "step",
        [50, 100],
        0.2,
    )
    assert (trial.warmup_epochs, trial.epochs, trial.reset_optimizer) == (150, 300, True)  # 150 CE, then 150 PC-LC
    assert (trial.attack_steps, trial.step_scale) == (10, 1.0)  # 10 steps of eps/10 (step = step_scale · eps / steps)


def test_training_length_is_searchable_and_asha_follows_the_longest_trial(tmp_path: Path) -> None:
    data = _optimize(space={"epochs": {"type": "int", "low": 3, "high": 8}}, initial_points=[])
    cfg = parse_sweep(_merge(data, {"scheduler": {"type": "asha", "grace_period": 2}}))
    assert cfg.epoch_range() == (3, 8) and cfg.asha_max_t() == 7
    with pytest.raises(
        SweepConfigError, match=r"grace_period = 3: must be below the fewest epochs a trial trains \(3\)"
    ):
        parse_sweep(_merge(data, {"scheduler": {"type": "asha", "grace_period": 3}}))
    with pytest.raises(SweepConfigError, match="warmup_epochs 4 exceeds epochs 3"):  # every corner is built
        parse_sweep(_merge(data, {"trial": {"warmup_epochs": 4}}))


def test_a_signal_cadence_that_misses_the_schedulers_rungs_is_refused(tmp_path: Path) -> None:
    """ASHA decides on epoch_robust_acc at its rungs: an explicit cadence without them is refused before Ray starts;
    the default cadence gets the rungs added."""
    data = _merge(_optimize(), {"trial": {"epochs": 8}, "scheduler": {"type": "asha", "grace_period": 1}})
    cfg = parse_sweep(data)
    assert cfg.rung_epochs() == (1, 2, 4) and cfg.trial.signal_epochs(also=cfg.rung_epochs()) == (1, 2, 3, 4, 8)
    with pytest.raises(SweepConfigError, match=r"trial.epoch_eval_at = \[8\]: ASHA decides on epoch_robust_acc at "):
        parse_sweep(_merge(data, {"trial": {"epoch_eval_at": [8]}}))
    assert parse_sweep(_merge(data, {"trial": {"epoch_eval_at": [1, 2, 4]}})).trial.epoch_eval_at == [1, 2, 4]
    with pytest.raises(SweepConfigError, match="epochs count from 1"):
        parse_sweep(_merge(data, {"trial": {"epoch_eval_at": [0, 2]}}))
