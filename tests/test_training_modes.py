"""Training modes (standard, PGD adversarial training, TRADES) and the label-smoothing control (issue 19).

Real digits, the real training loop and the real attack runner: the modes must change what is learnt,
keep bit-identical reruns and resumes, and PGD-AT must buy robustness to PGD that a test can see.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from pclc.attacks import AttackSuite, craft
from pclc.config import ConfigError, make_config
from pclc.data import load_dataset
from pclc.experiment import substitute_config
from pclc.losses import IGNORED_BY_LOSS, build_loss
from pclc.models import create_model
from pclc.train import Trainer, accuracy, seed_everything
from pclc.training_modes import IGNORED_BY_TRAINING, KLAttack, budget_of

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def _trained(digits, epochs: int, **overrides) -> Trainer:
    cfg = make_config({"epochs": epochs, "warmup_epochs": 1, "batch_size": 128, "lr": 3e-3, **overrides})
    generator = seed_everything(cfg.seed)
    model = create_model(cfg.model, input_shape=digits.input_shape, num_classes=digits.num_classes)
    trainer = Trainer(cfg, model, CPU, generator)
    for _ in range(epochs):
        trainer.train_epoch(digits.x_train, digits.y_train)
    return trainer


def _weights(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in trainer.model.state_dict().items()}


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("mode", ["pgd", "trades"])
def test_a_mode_changes_the_weights_and_reruns_bit_identically(digits, mode: str) -> None:
    knobs = {"loss": "pclc", "adv_eps": 0.1, "adv_steps": 3}
    standard = _weights(_trained(digits, 2, **knobs))
    first = _weights(_trained(digits, 2, training=mode, **knobs))
    again = _weights(_trained(digits, 2, training=mode, **knobs))
    assert _same(first, again)  # same config + seed: the same weights, bit for bit
    assert not _same(first, standard)
    changed = max(float((first[k].float() - standard[k].float()).abs().max()) for k in first)
    assert changed > 1e-3  # not a rounding difference: the mode changed what was learnt


def test_the_seed_reaches_the_inner_attack(digits) -> None:
    a = _weights(_trained(digits, 1, training="pgd", adv_steps=2, seed=0))
    b = _weights(_trained(digits, 1, training="pgd", adv_steps=2, seed=1))
    assert not _same(a, b)


def test_resuming_an_adversarial_trial_from_its_checkpoint_gives_the_uninterrupted_weights(digits) -> None:
    knobs = {"training": "trades", "adv_steps": 2, "loss": "pclc"}
    whole = _trained(digits, 3, **knobs)
    cfg = whole.cfg
    generator = seed_everything(cfg.seed)  # before the model: its initial weights come from the seed too
    half = Trainer(cfg, create_model(cfg.model, input_shape=digits.input_shape, num_classes=10), CPU, generator)
    for _ in range(2):
        half.train_epoch(digits.x_train, digits.y_train)
    state = half.state_dict()
    resumed = Trainer(
        cfg,
        create_model(cfg.model, input_shape=digits.input_shape, num_classes=digits.num_classes),
        CPU,
        torch.Generator().manual_seed(12345),  # overwritten by the checkpoint
    )
    resumed.load_state_dict(state)
    resumed.train_epoch(digits.x_train, digits.y_train)
    assert _same(_weights(resumed), _weights(whole))


def test_the_warm_up_runs_ce_in_the_same_mode(digits) -> None:
    trainer = _trained(digits, 1, loss="pclc", training="pgd", adv_steps=1, warmup_epochs=1)
    assert trainer.phase == "warmup" and isinstance(trainer.loss_fn, torch.nn.CrossEntropyLoss)
    plain = _trained(digits, 1, loss="pclc", warmup_epochs=1)
    assert not _same(_weights(trainer), _weights(plain))  # the warm-up epoch was adversarial too


def _pgd_accuracy(trainer: Trainer, digits, eps: float) -> float:
    suite = AttackSuite(attacks=("pgd_ce",), eps=(eps,), steps=20, seed=0)
    x, y = digits.x_test, digits.y_test
    return accuracy(trainer.model, craft("pgd_ce", trainer.model, x, y, eps=eps, suite=suite), y)


def test_pgd_training_is_more_robust_to_pgd_than_standard_training(digits) -> None:
    knobs = {"loss": "ce", "adv_eps": 0.1, "adv_steps": 5}
    standard = _trained(digits, 6, **knobs)
    robust = _trained(digits, 6, training="pgd", **knobs)
    plain, adversarial = _pgd_accuracy(standard, digits, 0.1), _pgd_accuracy(robust, digits, 0.1)
    assert accuracy(robust.model, digits.x_test, digits.y_test) > 0.7  # it still learnt the digits
    assert adversarial > plain + 0.1, (plain, adversarial)  # measured: +18 to +25 points over seeds 0, 1


def test_label_smoothing_matches_its_formula() -> None:
    torch.manual_seed(0)
    logits, target = torch.randn(16, 10) * 3, torch.randint(0, 10, (16,))
    alpha = 0.2
    log_p = F.log_softmax(logits, dim=1)
    by_hand = ((1 - alpha) * -log_p.gather(1, target[:, None]).squeeze(1) + alpha * -log_p.mean(dim=1)).mean()
    assert torch.allclose(build_loss("label_smoothing", smoothing=alpha)(logits, target), by_hand, atol=1e-6)
    assert torch.allclose(build_loss("label_smoothing", smoothing=0.0)(logits, target), F.cross_entropy(logits, target))
    assert IGNORED_BY_LOSS["label_smoothing"] == {"margin", "lc_weight"}
    assert "smoothing" in IGNORED_BY_LOSS["pclc"]


def test_label_smoothing_has_no_warm_up(digits) -> None:
    trainer = _trained(digits, 1, loss="label_smoothing", smoothing=0.3, warmup_epochs=1)
    assert trainer.phase == "main" and trainer.loss_fn.label_smoothing == 0.3


def test_the_trades_attack_stays_in_the_ball_and_raises_the_kl(digits) -> None:
    torch.manual_seed(0)
    model = create_model("small_cnn", input_shape=digits.input_shape, num_classes=digits.num_classes).eval()
    x = digits.x_test[:64]
    budget = budget_of(0.1, 5, None)
    assert math.isclose(budget.step_size, 0.05)  # 2.5 · eps / steps
    x_adv = KLAttack(model, budget).perturb(x, digits.y_test[:64])
    assert float((x_adv - x).abs().max()) <= 0.1 + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
    with torch.no_grad():
        p = F.softmax(model(x), dim=1)
        kl = F.kl_div(F.log_softmax(model(x_adv), dim=1), p, reduction="sum")
    assert float(kl) > 0


def test_modes_name_the_fields_they_use() -> None:
    assert IGNORED_BY_TRAINING["standard"] == {"adv_eps", "adv_steps", "adv_step_size", "trades_beta"}
    assert IGNORED_BY_TRAINING["pgd"] == {"trades_beta"}
    assert IGNORED_BY_TRAINING["trades"] == frozenset()


def test_the_substitute_is_trained_in_the_standard_mode() -> None:
    cfg = make_config({"training": "trades", "loss": "pclc"})
    assert substitute_config(cfg).training == "standard"


@pytest.mark.parametrize(
    ("values", "field"),
    [
        ({"adv_eps": -0.1}, "adv_eps"),
        ({"adv_eps": 0.0}, "adv_eps"),
        ({"trades_beta": -1.0}, "trades_beta"),
        ({"adv_steps": 0}, "adv_steps"),
        ({"adv_step_size": 0.0}, "adv_step_size"),
        ({"adv_eps": 0.1, "adv_step_size": 0.5}, "adv_step_size"),
        ({"training": "fgsm"}, "training"),
        ({"smoothing": 1.0}, "smoothing"),
        ({"smoothing": -0.1}, "smoothing"),
    ],
)
def test_bad_training_values_are_refused_with_one_clear_message(values: dict, field: str) -> None:
    with pytest.raises(ConfigError) as err:
        make_config(values)
    lines = str(err.value).splitlines()[1:]
    assert len(lines) == 1 and field in lines[0], str(err.value)
    if field == "training":
        assert "standard" in lines[0] and "trades" in lines[0]  # the choices are named


def test_a_trial_runs_end_to_end_in_an_adversarial_mode(tmp_path) -> None:
    from pclc.experiment import Silent, run_trial

    cfg = make_config(
        {
            "training": "pgd",
            "adv_steps": 2,
            "loss": "pclc",
            "epochs": 2,
            "warmup_epochs": 1,
            "attacks": ["pgd_ce", "apgd_ce"],
            "eval_limit": 32,
            "epoch_eval_samples": 16,
            "epoch_attack_steps": 2,
            "aa_steps": 5,
            "out_dir": str(tmp_path),
        }
    )
    metrics = run_trial(cfg, Silent())
    assert 0.0 <= metrics["robust_acc"] <= metrics["clean_acc"] <= 1.0
    written = (tmp_path / "metrics.json").read_text()
    assert '"training": "pgd"' in written  # the mode is part of the recorded config (an MLflow param in a sweep)
