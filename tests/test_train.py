from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pclc.config import make_config
from pclc.data import load_dataset
from pclc.losses import LogitConstraint, PCLCLoss
from pclc.models import create_model
from pclc.train import (
    CheckpointError,
    NonFiniteLossError,
    Trainer,
    accuracy,
    augment,
    checkpoint_due,
    load_checkpoint,
    save_checkpoint,
    seed_everything,
)

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def _trainer(digits, **overrides) -> Trainer:
    cfg = make_config({"epochs": 4, "warmup_epochs": 2, "batch_size": 128, **overrides})
    generator = seed_everything(cfg.seed)
    model = create_model(cfg.model, input_shape=digits.input_shape, num_classes=digits.num_classes)
    return Trainer(cfg, model, CPU, generator)


def _train(digits, epochs: int | None = None, **overrides) -> tuple[Trainer, list[float]]:
    trainer = _trainer(digits, **overrides)
    losses = [trainer.train_epoch(digits.x_train, digits.y_train) for _ in range(epochs or trainer.cfg.epochs)]
    return trainer, losses


@pytest.mark.parametrize("loss", ["ce", "pc", "pclc", "lc"])
def test_every_loss_drops_into_the_same_loop(digits, loss: str) -> None:
    trainer, losses = _train(digits, loss=loss, warmup_epochs=0 if loss == "lc" else 2, lr=3e-3)
    assert all(torch.isfinite(torch.tensor(losses)))
    if loss != "lc":  # LC alone only bounds the logit gap: it does not teach the classes
        assert accuracy(trainer.model, digits.x_test, digits.y_test) > 0.5


def test_warmup_is_ce_then_the_configured_loss(digits) -> None:
    trainer = _trainer(digits, loss="pclc", warmup_epochs=1, epochs=2)
    trainer.train_epoch(digits.x_train, digits.y_train)
    assert trainer.phase == "warmup" and isinstance(trainer.loss_fn, torch.nn.CrossEntropyLoss)
    first_optimizer = trainer.optimizer
    trainer.train_epoch(digits.x_train, digits.y_train)
    assert trainer.phase == "main" and isinstance(trainer.loss_fn, PCLCLoss)
    assert trainer.optimizer is not first_optimizer  # a fresh optimizer after warm-up, as the authors do


def test_ce_ignores_warmup(digits) -> None:
    trainer = _trainer(digits, loss="ce", warmup_epochs=3)
    assert trainer.phase == "main" and trainer.warmup == 0


def test_same_seed_same_result_twice(digits) -> None:
    _, a = _train(digits, epochs=2, seed=7)
    _, b = _train(digits, epochs=2, seed=7)
    _, c = _train(digits, epochs=2, seed=8)
    assert a == b and a != c


def test_resume_from_a_checkpoint_gives_the_same_weights(digits, tmp_path: Path) -> None:
    straight, _ = _train(digits, epochs=4)
    first, _ = _train(digits, epochs=2)
    save_checkpoint(first.state_dict(), tmp_path / "ckpt.pt")
    resumed = _trainer(digits)
    resumed.load_state_dict(load_checkpoint(tmp_path / "ckpt.pt"))
    assert resumed.epoch == 2 and resumed.phase == "warmup"
    for _ in range(2):
        resumed.train_epoch(digits.x_train, digits.y_train)
    for key, value in straight.model.state_dict().items():
        torch.testing.assert_close(resumed.model.state_dict()[key], value)


def test_non_finite_loss_stops_with_a_clear_error(digits) -> None:
    x = digits.x_train.clone()
    x[3, 0, 2, 2] = float("nan")
    trainer = _trainer(digits)
    with pytest.raises(NonFiniteLossError, match="training loss became nan at epoch 1"):
        trainer.train_epoch(x, digits.y_train)


def test_corrupt_checkpoint_is_named(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(bad)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")


def test_checkpoints_refuse_arbitrary_objects(tmp_path: Path) -> None:
    # weights_only=True: a pickled object that is not tensors/containers is refused, not executed.
    path = tmp_path / "evil.pt"
    torch.save({"model": LogitConstraint()}, path)
    with pytest.raises(CheckpointError):
        load_checkpoint(path)


def test_step_and_cosine_schedules_change_the_learning_rate(digits) -> None:
    step, _ = _train(digits, epochs=2, loss="ce", schedule="step", milestones=[1], gamma=0.5, lr=1e-3)
    assert step.optimizer.param_groups[0]["lr"] == pytest.approx(5e-4)
    cos, _ = _train(digits, epochs=2, loss="ce", schedule="cosine", lr=1e-3)
    assert cos.optimizer.param_groups[0]["lr"] < 1e-3


def test_sgd_and_augmentation_run(digits) -> None:
    trainer, losses = _train(digits, epochs=1, loss="ce", optimizer="sgd", lr=0.05, augment=True)
    assert isinstance(trainer.optimizer, torch.optim.SGD) and losses[0] > 0


def test_resume_with_augmentation_gives_the_same_weights(digits) -> None:
    # Augmentation draws from its own generator on the trial's device; the checkpoint carries its state.
    straight, _ = _train(digits, epochs=2, augment=True, warmup_epochs=1)
    first, _ = _train(digits, epochs=1, augment=True, warmup_epochs=1)
    resumed = _trainer(digits, augment=True, warmup_epochs=1)
    resumed.load_state_dict(first.state_dict())
    resumed.train_epoch(digits.x_train, digits.y_train)
    for key, value in straight.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[key], value), key


def test_augmentation_draws_only_from_its_own_generator(digits) -> None:
    trainer = _trainer(digits, augment=True)
    global_before = torch.random.get_rng_state()
    order_before = trainer.generator.get_state()
    x = augment(digits.x_train[:32], trainer.augment_generator)
    assert x.shape == digits.x_train[:32].shape and x.device == digits.x_train.device
    assert torch.equal(torch.random.get_rng_state(), global_before)  # neither the global RNG ...
    assert torch.equal(trainer.generator.get_state(), order_before)  # ... nor the batch order's generator


@pytest.mark.parametrize(
    ("every", "also", "due"),
    [(1, (), [1, 2, 3, 4, 5]), (2, (), [2, 4, 5]), (3, (), [3, 5]), (10, (), [5]), (2, (1, 3), [1, 2, 3, 4, 5])],
)
def test_checkpoints_every_k_epochs_at_the_rungs_and_at_the_end(
    every: int, also: tuple[int, ...], due: list[int]
) -> None:
    assert [e for e in range(1, 6) if checkpoint_due(e, every=every, last=5, also=also)] == due


def test_channels_last_trains(digits) -> None:
    trainer, losses = _train(digits, epochs=1, loss="ce", channels_last=True)
    conv = next(m for m in trainer.model.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert torch.isfinite(torch.tensor(losses)).all() and accuracy(trainer.model, digits.x_test, digits.y_test) > 0.2


def test_compile_wraps_the_training_forward_only(digits) -> None:
    # Compiling itself takes about a minute on this 2-core CPU (measured 65 s for one digits epoch), so
    # the test checks the wiring, not a compiled step: the plain model (attacks, checkpoints) is untouched.
    trainer = _trainer(digits, compile=True)
    assert trainer.forward is not trainer.model and isinstance(trainer.forward, torch.nn.Module)
    assert getattr(trainer.forward, "_orig_mod", None) is trainer.model
    assert set(trainer.state_dict()["model"]) == set(trainer.model.state_dict())
    plain = _trainer(digits)
    assert plain.forward is plain.model
