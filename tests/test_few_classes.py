"""Data sets with fewer than 4 classes: every attack runs where its loss is defined, and says so where not.

The reference AutoAttack's DLR losses index the 3rd (APGD-DLR) and 4th (APGD-T) largest logit, so they do not
exist for 2 or 3 classes. A trial on such data runs the default suite with `autoattack` minus APGD-T (and the
per-epoch signal with APGD-CE alone) and names what it left out in its warnings; an attack asked for on its
own that cannot run is refused before training, in one message. The data are real `npz:` files written here.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from pclc import metrics as M
from pclc.attacks import ATTACK_BUILDERS, AUTOATTACK, LEFT_OUT, AttackSuite, craft, left_out, run_attack, run_suite
from pclc.config import ConfigError, make_config
from pclc.experiment import Evaluation, run_trial
from sweeps.cli import main

# A trial of about two seconds with the default attack suite (not overridden): the paper's attacks, the
# transfer attack (its substitute trained here too) and standard AutoAttack, with few steps and queries.
FEW: dict[str, object] = {
    "model": "small_cnn",
    "epochs": 2,
    "warmup_epochs": 1,
    "eval_limit": 48,
    "epoch_eval_samples": 16,
    "attack_steps": 2,
    "aa_steps": 3,
    "aa_limit": 16,
    "epoch_attack_steps": 2,
    "square_queries": 10,
    "substitute_epochs": 1,
    "save_weights": False,
    "threads": 1,
}


def write_classes(path: Path, classes: int, per_class: int = 60) -> Path:
    """An 8×8 `npz:` set of `classes` classes a small CNN learns in a few epochs: class k lights rows 2k, 2k+1."""
    rng = np.random.default_rng(classes)
    y = np.arange(classes * per_class) % classes
    x = rng.uniform(0.0, 0.3, size=(len(y), 8, 8))
    for k in range(classes):
        x[y == k, 2 * k : 2 * k + 2, :] += 0.6
    np.savez(path, x=np.clip(x, 0.0, 1.0).astype(np.float32), y=y)
    return path


class Recorder:
    def __init__(self) -> None:
        self.epochs: list[dict[str, float]] = []
        self.evaluation: Evaluation | None = None

    def on_epoch(self, metrics: dict[str, float], state: object) -> None:
        self.epochs.append(dict(metrics))

    def on_final(self, evaluation: Evaluation) -> None:
        self.evaluation = evaluation


def tiny_model(classes: int) -> nn.Module:
    torch.manual_seed(classes)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, classes)).eval()


# --------------------------------------------------------------------------- the registry's min_classes


def test_min_classes_is_in_the_registry_and_the_composite_needs_only_some_part() -> None:
    needs = {name: ATTACK_BUILDERS.info(name).min_classes for name in ATTACK_BUILDERS.select()}
    assert {n for n, k in needs.items() if k > 2} == {"apgd_dlr", "apgd_t"}
    assert needs["apgd_dlr"] == 3 and needs["apgd_t"] == 4
    assert ATTACK_BUILDERS.info("autoattack").parts == ("apgd_ce", "apgd_t", "fab_t", "square")
    every = ATTACK_BUILDERS.select()
    assert left_out(every, 10) == [] and left_out(every, 4) == []
    at_3 = [(x.attack, x.within) for x in left_out(every, 3)]
    assert at_3 == [("apgd_t", None), ("apgd_t", "autoattack")]
    at_2 = [(x.attack, x.within) for x in left_out(every, 2)]
    assert at_2 == [("apgd_dlr", None), ("apgd_t", None), ("apgd_t", "autoattack")]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("name", [n for n in ATTACK_BUILDERS.select() if n in AUTOATTACK])
def test_min_classes_is_what_the_reference_code_needs(name: str) -> None:
    """Each AutoAttack-grade attack runs on a model of its min_classes classes; one class fewer, the reference
    code itself fails (why the registry says so): not too strict, not too lax."""
    needs = ATTACK_BUILDERS.info(name).min_classes
    suite = AttackSuite(attacks=(name,), eps=(0.1,), aa_steps=2, square_queries=5, aa_limit=None)
    x = torch.rand(8, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    model = tiny_model(needs)
    y = model(x).argmax(dim=1)
    adv = craft(name, model, x, y, eps=0.1, suite=suite)
    assert adv.shape == x.shape and (adv - x).abs().max() <= 0.1 + 1e-6
    if needs > 2:  # the reference's own code, without our check in between
        fewer = tiny_model(needs - 1)
        attack = ATTACK_BUILDERS.create(name, model=fewer, eps=0.1, suite=suite)
        with pytest.raises(IndexError, match="out of bounds"):
            run_attack(attack, fewer, x, fewer(x).argmax(dim=1), suite)


@pytest.mark.timeout(120)
def test_the_runner_refuses_an_undefined_attack_before_any_attack_runs() -> None:
    model = tiny_model(3)
    x = torch.rand(8, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    suite = AttackSuite(attacks=("fgsm", "apgd_t"), eps=(0.1,), aa_steps=2, aa_limit=None)
    with pytest.raises(ValueError, match=r"attacks \['apgd_t'\] are not defined for the 3 classes of the model"):
        run_suite(model, x, model(x).argmax(dim=1), suite)


# --------------------------------------------------------------------------- whole trials


@pytest.mark.timeout(240)
@pytest.mark.parametrize("classes", [2, 3])
def test_a_trial_on_few_classes_runs_what_is_defined_and_names_what_it_left_out(tmp_path: Path, classes: int) -> None:
    data = write_classes(tmp_path / f"k{classes}.npz", classes)
    cfg = make_config({**FEW, "dataset": f"npz:{data}", "out_dir": str(tmp_path / "out")})
    assert "autoattack" in cfg.attacks and "apgd_t" not in cfg.attacks  # the default suite
    rec = Recorder()
    final = run_trial(cfg, rec)

    # every attack of the default suite ran: the paper's at every eps, autoattack at the headline eps
    for attack in cfg.attacks:
        for eps in cfg.eps if attack != "autoattack" else [cfg.headline_eps]:
            assert 0.0 <= final[M.robust_key(attack, eps)] <= final[M.CLEAN_ACC], (attack, eps)
    assert final[M.ROBUST_ACC] <= final[M.robust_key("autoattack", 0.1)] and final[M.CLEAN_ACC] > 0.9
    assert [m[M.EPOCH] for m in rec.epochs] == [1, 2] and all(M.EPOCH_ROBUST_ACC in m for m in rec.epochs)

    # ... and each left-out part is named, with the class count, where the run's warnings are kept
    assert rec.evaluation is not None
    written = json.loads((tmp_path / "out" / "metrics.json").read_text())["warnings"]
    assert written == rec.evaluation.warnings
    left = [w for w in written if w.startswith(LEFT_OUT)]
    assert left == [
        f"{LEFT_OUT}: the per-epoch signal (epoch_robust_acc) ran apgd_ce without apgd_t: apgd_t needs at least "
        f"4 classes and the model has {classes} (its targeted DLR loss divides by the gap to the mean of the 3rd "
        "and 4th largest logits)",
        f"{LEFT_OUT}: autoattack ran apgd_ce, fab_t, square without apgd_t: apgd_t needs at least 4 classes and "
        f"the model has {classes} (its targeted DLR loss divides by the gap to the mean of the 3rd and 4th "
        "largest logits)",
    ]


@pytest.mark.timeout(120)
def test_ten_classes_leave_nothing_out(tmp_path: Path) -> None:
    """The same trial on digits (10 classes): no attack is left out, so no such warning."""
    rec = Recorder()
    run_trial(make_config({**FEW, "attacks": ["fgsm", "autoattack"], "eval_limit": 32}), rec)
    assert rec.evaluation is not None and not any(w.startswith(LEFT_OUT) for w in rec.evaluation.warnings)


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    ("classes", "attacks", "refused"),
    [
        (3, ["fgsm", "apgd_t", "apgd_dlr"], ["apgd_t"]),
        (2, ["apgd_dlr", "autoattack", "apgd_t"], ["apgd_dlr", "apgd_t"]),
    ],
)
def test_an_attack_asked_for_that_the_classes_cannot_run_is_refused_before_training(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], classes: int, attacks: list[str], refused: list[str]
) -> None:
    data = write_classes(tmp_path / f"k{classes}.npz", classes)
    values = {**FEW, "dataset": f"npz:{data}", "attacks": attacks, "out_dir": str(tmp_path / "out")}
    rec = Recorder()
    with pytest.raises(ConfigError, match=re.escape(f"attacks {refused!r} are not defined for the {classes} classes")):
        run_trial(make_config(values), rec)
    assert rec.epochs == [] and not (tmp_path / "out").exists()  # nothing trained, nothing written

    # `pclc train`: one line naming the attacks, what each needs and the class count; exit 2, no traceback
    overrides = [f"{k}={json.dumps(v)}" for k, v in values.items()]
    assert main(["train", "--quiet", *(a for o in overrides for a in ("--set", o))]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"pclc train: error: attacks {refused!r}"), err
    assert f"the {classes} classes of dataset npz:{data}" in err[0] and "apgd_t needs at least 4" in err[0]
    assert "Traceback" not in err[0]


@pytest.mark.timeout(120)
def test_a_sweep_asking_for_an_undefined_attack_is_refused_before_ray_starts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = write_classes(tmp_path / "k3.npz", 3)
    quickstart = Path(__file__).parents[1] / "sweeps/configs/quickstart.yaml"
    overrides = [f"trial.dataset=npz:{data}", "trial.attacks=[fgsm, apgd_t]", f"storage_path={tmp_path / 'ray'}"]
    assert main(["sweep", str(quickstart), *(a for o in overrides for a in ("--set", o))]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"pclc sweep: error: attacks ['apgd_t'] are not defined for the 3 classes of dataset npz:{data}: apgd_t "
        "needs at least 4 (its targeted DLR loss divides by the gap to the mean of the 3rd and 4th largest logits). "
        "Drop them from attacks (autoattack runs the parts defined for 3 classes)"
    ]
    assert not (tmp_path / "ray").exists() and not (tmp_path / "mlflow.db").exists()  # nothing started


@pytest.mark.timeout(240)
def test_pclc_evaluate_on_three_classes_rescores_and_says_what_autoattack_left_out(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`pclc evaluate` of a trial run on 3 classes: standard AutoAttack without APGD-T, said on stderr as the
    trial says it, and the finalist metrics logged into the run."""
    from mlflow.tracking import MlflowClient
    from sweep_util import started_tracker

    from sweeps.tracking import TrialRun

    data = write_classes(tmp_path / "k3.npz", 3)
    values = {**FEW, "dataset": f"npz:{data}", "attacks": ["fgsm"], "epoch_eval_samples": 0, "save_weights": True}
    run_trial(make_config({**values, "out_dir": str(tmp_path / "out")}), Recorder())
    payload = json.loads((tmp_path / "out" / "metrics.json").read_text())
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = started_tracker(uri, "k3", experiment_path=str(tmp_path / "ray_results" / "k3"))
    run = TrialRun.open(tracker.target, trial_id="k3", params=payload["config"])
    run.log_final(payload["metrics"], payload, tmp_path / "out" / "model.pt")
    tracker.finish_parent()

    quick = ["--limit", "32", "--aa-steps", "3", "--square-queries", "10", "--chunk-size", "32"]
    assert main(["evaluate", "--tracking-uri", uri, "--run-id", run.run_id, *quick]) == 0
    err = capsys.readouterr().err
    assert (
        f"pclc evaluate: run {run.run_id[:8]}: {LEFT_OUT}: autoattack ran apgd_ce, fab_t, square without apgd_t: "
        "apgd_t needs at least 4 classes and the model has 3" in err
    ), err
    assert "Traceback" not in err
    metrics = MlflowClient(uri).get_run(run.run_id).data.metrics
    finalist = metrics[M.to_mlflow(M.finalist_key(M.ROBUST_ACC))]
    assert 0.0 <= finalist <= metrics[M.to_mlflow(M.finalist_key(M.CLEAN_ACC))] <= 1.0
