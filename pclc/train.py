"""The training loop: CE warm-up epochs, then the configured loss, each step in the trial's training mode.

Also the pieces a loop needs and nothing else: device choice, seeding, optimizer and
schedule, augmentation on the device, checkpoints loaded with `weights_only=True`.
"""

from __future__ import annotations

import contextlib
import copy
import math
import random
from collections.abc import Collection, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pclc.config import TrialConfig
from pclc.data import Dataset, batches
from pclc.files import atomic_file
from pclc.gpu import bf16_native
from pclc.losses import NO_WARMUP, build_loss
from pclc.training_modes import Step, budget_of, build_step


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or inf; the run cannot go on."""


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read as one."""


def select_device(preference: str = "auto") -> torch.device:
    """cuda → mps → cpu for 'auto'; an explicit choice that is unavailable is an error."""
    has = {"cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available(), "cpu": True}
    if preference == "auto":
        return torch.device(next(d for d in ("cuda", "mps", "cpu") if has[d]))
    if not has.get(preference, False):
        raise ValueError(f"device {preference!r} is not available here; use device=auto or cpu")
    return torch.device(preference)


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch; return the generator that orders the training batches."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


@contextlib.contextmanager
def isolated_rng() -> Iterator[None]:
    """Whatever draws random numbers inside leaves Python's, NumPy's and torch's global RNGs as they were:
    preparing a substitute or building a throw-away model must not change the trial's own draws."""
    py, np_state = random.getstate(), np.random.get_state()
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=devices):
        try:
            yield
        finally:
            random.setstate(py)
            np.random.set_state(np_state)


def make_optimizer(cfg: TrialConfig, model: nn.Module) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    return torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)


def make_scheduler(cfg: TrialConfig, opt: torch.optim.Optimizer, epochs: int) -> torch.optim.lr_scheduler.LRScheduler:
    """Per-epoch schedule over one phase of `epochs` epochs."""
    if cfg.schedule == "step":
        return torch.optim.lr_scheduler.MultiStepLR(opt, milestones=cfg.milestones, gamma=cfg.gamma)
    if cfg.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, epochs))
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)


def augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random horizontal flip and a shift of up to 1/8 of the side, per sample, drawn and applied on x's
    device (`generator` lives there too: no per-batch copy from the CPU)."""
    n = x.shape[0]
    flip = torch.rand(n, generator=generator, device=x.device) < 0.5
    shift = (torch.rand(n, 2, generator=generator, device=x.device) * 2 - 1) * 0.25  # 0.25 = 1/8 of the side
    theta = torch.zeros(n, 2, 3, device=x.device, dtype=x.dtype)
    theta[:, 0, 0] = torch.where(flip, -1.0, 1.0)
    theta[:, 1, 1] = 1.0
    theta[:, :, 2] = shift
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, padding_mode="reflection", align_corners=False)


def stream_seed(seed: int, stream: int) -> int:
    """A seed for consumer `stream` of a trial seeded `seed`, independent of the other streams'."""
    return int(np.random.SeedSequence((seed % 2**32, stream)).generate_state(1, dtype=np.uint64)[0] >> 1)


def augment_generator(seed: int, device: torch.device) -> torch.Generator:
    """The augmentation's own generator, on the trial's device, seeded apart from the batch order's."""
    return torch.Generator(device=device).manual_seed(stream_seed(seed, 1))


def attack_generator(seed: int) -> torch.Generator:
    """Adversarial training's own generator (on the CPU): each batch's inner-attack seed is drawn from it."""
    return torch.Generator().manual_seed(stream_seed(seed, 2))


def draw_seed(generator: torch.Generator) -> int:
    """The next seed from `generator` (one batch's inner attack)."""
    return int(torch.randint(0, 2**31 - 1, (), generator=generator))


def checkpoint_due(epoch: int, *, every: int, last: int, also: Collection[int] = ()) -> bool:
    """Whether epoch `epoch` reports a checkpoint: every `every` epochs, at the `last` one, and at `also`
    (a scheduler's decision epochs)."""
    return epoch % every == 0 or epoch == last or epoch in also


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 512) -> float:
    """Top-1 accuracy of `model` in eval mode; restores the model's training flag."""
    was_training = model.training
    model.eval()
    correct = sum(int((model(xb).argmax(1) == yb).sum()) for xb, yb in batches(x, y, batch_size, shuffle=False))
    model.train(was_training)
    return correct / max(1, len(y))


@dataclass
class Trainer:
    """Owns the model's optimisation across the two phases (CE warm-up, then `cfg.loss`)."""

    cfg: TrialConfig
    model: nn.Module
    device: torch.device
    generator: torch.Generator
    epoch: int = 0  # epochs completed
    phase: str = field(init=False, default="")
    optimizer: torch.optim.Optimizer = field(init=False)
    scheduler: torch.optim.lr_scheduler.LRScheduler = field(init=False)
    loss_fn: nn.Module = field(init=False)
    augment_generator: torch.Generator = field(init=False)
    attack_generator: torch.Generator = field(init=False)  # per-batch seeds of the training mode's inner attack
    forward: nn.Module = field(init=False)  # the training forward pass: the model, compiled if cfg.compile
    step: Step = field(init=False)  # the training mode's loss of one batch (pclc.training_modes)

    def __post_init__(self) -> None:
        self.augment_generator = augment_generator(self.cfg.seed, self.device)
        self.attack_generator = attack_generator(self.cfg.seed)
        self.step = build_step(
            self.cfg.training,
            budget=budget_of(self.cfg.adv_eps or self.cfg.headline_eps, self.cfg.adv_steps, self.cfg.adv_step_size),
            trades_beta=self.cfg.trades_beta,
        )
        if self.cfg.channels_last:
            self.model.to(memory_format=torch.channels_last)
        # Compiled for training only: attacks and evaluation call the plain model (other shapes, modes, grads).
        self.forward = torch.compile(self.model) if self.cfg.compile else self.model
        self._enter_phase(self.phase_of(1))

    @property
    def warmup(self) -> int:
        return 0 if self.cfg.loss in NO_WARMUP else self.cfg.warmup_epochs

    def phase_of(self, epoch: int) -> str:
        return "warmup" if epoch <= self.warmup else "main"

    def _enter_phase(self, phase: str) -> None:
        """A new phase gets its own loss, and (as the authors do) a fresh optimizer and schedule."""
        first = not self.phase
        self.phase = phase
        name = "ce" if phase == "warmup" else self.cfg.loss
        self.loss_fn = build_loss(
            name, margin=self.cfg.margin, lc_weight=self.cfg.lc_weight, smoothing=self.cfg.smoothing
        )
        if first or self.cfg.reset_optimizer:
            length = self.warmup if phase == "warmup" else self.cfg.epochs - self.warmup
            self.optimizer = make_optimizer(self.cfg, self.model)
            self.scheduler = make_scheduler(self.cfg, self.optimizer, length)

    def train_epoch(self, x: torch.Tensor, y: torch.Tensor) -> float:
        """One pass over (x, y); returns the mean training loss. Raises on a non-finite loss.

        The loss stays on the device until the epoch ends: one host sync per epoch, not one per step
        (a NaN or inf in any step makes the epoch's sum non-finite).
        """
        epoch = self.epoch + 1
        if self.phase_of(epoch) != self.phase:
            self._enter_phase(self.phase_of(epoch))
        self.model.train()
        use_bf16 = self.cfg.bf16 and self.device.type == "cuda" and bf16_native()
        channels_last = self.cfg.channels_last and x.dim() == 4
        total, count = torch.zeros((), device=self.device), 0
        for xb, yb in batches(x, y, self.cfg.batch_size, shuffle=True, generator=self.generator):
            if self.cfg.augment:
                xb = augment(xb, self.augment_generator)
            if channels_last:
                xb = xb.contiguous(memory_format=torch.channels_last)
            seed = draw_seed(self.attack_generator) if self.cfg.training != "standard" else 0
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=use_bf16):
                loss = self.step(self.model, self.forward, self.loss_fn, xb, yb, seed)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            total += loss.detach() * len(yb)
            count += len(yb)
        mean = float(total) / max(1, count)  # the epoch's one sync
        if not math.isfinite(mean):
            raise NonFiniteLossError(
                f"training loss became {mean} at epoch {epoch} "
                f"(loss={self.loss_fn.__class__.__name__}, lr={self.cfg.lr}); lower lr or check the data"
            )
        self.scheduler.step()
        self.epoch = epoch
        return mean

    def state_dict(self) -> dict[str, Any]:
        """A picklable checkpoint: resuming from it continues at the next epoch, same batches."""
        return {
            "epoch": self.epoch,
            "phase": self.phase,
            # Copies, not views: the trial keeps training after handing this state over.
            "model": {k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()},
            "optimizer": copy.deepcopy(self.optimizer.state_dict()),
            "scheduler": copy.deepcopy(self.scheduler.state_dict()),
            "generator": self.generator.get_state(),
            "augment_generator": self.augment_generator.get_state(),
            "attack_generator": self.attack_generator.get_state(),
            # torch's global CPU generator: dropout (VGG) and the per-epoch attacks' random starts draw from it
            "torch_rng": torch.get_rng_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.epoch = int(state["epoch"])
        if state["phase"] != self.phase:
            self._enter_phase(state["phase"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.generator.set_state(state["generator"])
        if "augment_generator" in state:  # checkpoints from before augmentation had its own generator
            self.augment_generator.set_state(state["augment_generator"])
        if "attack_generator" in state:  # checkpoints from before training modes
            self.attack_generator.set_state(state["attack_generator"])
        if "torch_rng" in state:  # checkpoints from before issue 30 resumed with the global generator as seeded
            torch.set_rng_state(state["torch_rng"])


def save_checkpoint(state: dict[str, Any], path: str | Path) -> None:
    """Write atomically, so a kill mid-write never leaves a half checkpoint behind."""
    with atomic_file(path) as f:
        torch.save(state, f)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint with `weights_only=True` (no arbitrary code), or say why it cannot be."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for truncated or foreign files
        raise CheckpointError(f"checkpoint {path} is corrupt or not a pclc checkpoint: {exc}") from None


def fit(cfg: TrialConfig, model: nn.Module, data: Dataset, device: torch.device) -> list[float]:
    """Train `model` for `cfg.epochs` without reporting; used for the substitute model."""
    trainer = Trainer(cfg, model, device, seed_everything(cfg.seed))
    return [trainer.train_epoch(data.x_train, data.y_train) for _ in range(cfg.epochs)]
