"""Training modes: what the loss of one training step is taken on, whatever the loss.

- `standard`: the clean batch.
- `pgd`: PGD examples with a random start (Madry et al. 2018), made by the evaluation's own attack runner.
- `trades`: the clean batch, plus β · KL(p(x) ‖ p(x′)) where x′ maximises that KL (Zhang et al. 2019).

The outer objective is the trial's loss (CE, PC-LC, …), so PC-LC on top of adversarial training is one
more configuration. The inner attack runs in IEEE fp32 with the model frozen in eval mode (as TRADES'
reference code crafts; it also keeps BatchNorm's running statistics off the k attack passes), and its
random start comes from a seed the trainer draws per batch from its own generator: the same config and
seed give the same weights, and no global random state moves.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pclc.attacks import ATTACK_BUILDERS, CLIP, AttackSuite, run_attack
from pclc.registry import Registry

# The step size when `adv_step_size` is None: 2.5 · eps / steps, the evaluation's PGD ratio (Madry et al.).
STEP_SCALE = 2.5


@dataclass(frozen=True)
class Budget:
    """The inner attack's L∞ budget: radius, iterations, step size (pixels in [0, 1])."""

    eps: float
    steps: int
    step_size: float

    def suite(self, seed: int, batch_size: int) -> AttackSuite:
        """The attack-runner settings for one batch: one radius, this budget, the batch's own seed."""
        return AttackSuite(
            attacks=("pgd_ce",),
            eps=(self.eps,),
            steps=self.steps,
            step_scale=self.step_size * self.steps / self.eps,
            batch_size=max(1, batch_size),
            seed=seed,
            aa_limit=None,
        )


class Step(Protocol):
    """One training step's loss: `forward` is the (maybe compiled) training model, `model` the plain one
    the inner attack differentiates, `seed` the batch's attack seed."""

    def __call__(
        self, model: nn.Module, forward: nn.Module, loss_fn: nn.Module, x: Tensor, y: Tensor, seed: int
    ) -> Tensor: ...


TRAINING_MODES: Registry[Step] = Registry("training mode")
"""name → builder(budget, trades_beta); info: the trial fields the mode reads (the others it ignores)."""

ADV_FIELDS: tuple[str, ...] = ("adv_eps", "adv_steps", "adv_step_size")


@TRAINING_MODES.register("standard", info=())
def _standard(*, budget: Budget, trades_beta: float) -> Step:
    def step(model: nn.Module, forward: nn.Module, loss_fn: nn.Module, x: Tensor, y: Tensor, seed: int) -> Tensor:
        return loss_fn(forward(x), y)

    return step


@TRAINING_MODES.register("pgd", info=ADV_FIELDS)
def _pgd(*, budget: Budget, trades_beta: float) -> Step:
    """Madry's adversarial training: the loss on PGD-CE examples (random start) in place of the clean batch."""

    def step(model: nn.Module, forward: nn.Module, loss_fn: nn.Module, x: Tensor, y: Tensor, seed: int) -> Tensor:
        suite = budget.suite(seed, len(x))
        attack = ATTACK_BUILDERS.create("pgd_ce", model=model, eps=budget.eps, suite=suite)
        x_adv = run_attack(attack, model, x, y, suite).to(memory_format=_format(x))
        return loss_fn(forward(x_adv), y)

    return step


@TRAINING_MODES.register("trades", info=(*ADV_FIELDS, "trades_beta"))
def _trades(*, budget: Budget, trades_beta: float) -> Step:
    """TRADES: the loss on the clean batch + β · KL(p(x) ‖ p(x′)) per sample, x′ from `KLAttack`."""

    def step(model: nn.Module, forward: nn.Module, loss_fn: nn.Module, x: Tensor, y: Tensor, seed: int) -> Tensor:
        suite = budget.suite(seed, len(x))
        x_adv = run_attack(KLAttack(model, budget), model, x, y, suite).to(memory_format=_format(x))
        logits = forward(x)
        # As the reference: the clean distribution is not detached, so the KL term trains it too.
        robust = F.kl_div(
            F.log_softmax(forward(x_adv).float(), dim=1), F.softmax(logits.float(), dim=1), reduction="batchmean"
        )
        return loss_fn(logits, y) + trades_beta * robust

    return step


def _format(x: Tensor) -> torch.memory_format:
    """Keep the batch's memory format (channels-last training) for the adversarial batch too."""
    if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format


class KLAttack:
    """TRADES' inner maximisation, as its reference code does it: start at x + 0.001 · N(0, 1), then
    `steps` signed-gradient ascents on KL(p(x) ‖ p(x′)), each projected on the eps-ball and [0, 1].
    The labels are not used (the target is the model's own clean distribution)."""

    def __init__(self, model: nn.Module, budget: Budget) -> None:
        self.model, self.budget = model, budget

    def perturb(self, x: Tensor, y: Tensor) -> Tensor:
        del y
        b = self.budget
        with torch.no_grad():
            target = F.softmax(self.model(x), dim=1)
        x_adv = (x + 0.001 * torch.randn(x.shape, device=x.device)).detach()
        for _ in range(b.steps):
            x_adv.requires_grad_(True)
            loss = F.kl_div(F.log_softmax(self.model(x_adv), dim=1), target, reduction="sum")
            (grad,) = torch.autograd.grad(loss, x_adv)
            x_adv = x_adv.detach() + b.step_size * grad.sign()
            x_adv = torch.min(torch.max(x_adv, x - b.eps), x + b.eps).clamp(*CLIP)
        return x_adv.clamp(*CLIP).detach()


def budget_of(eps: float, steps: int, step_size: float | None) -> Budget:
    """The inner attack's budget from the trial's fields (`adv_step_size` None: 2.5 · eps / steps)."""
    return Budget(eps=float(eps), steps=int(steps), step_size=float(step_size or STEP_SCALE * eps / steps))


def build_step(name: str, *, budget: Budget, trades_beta: float) -> Step:
    """The training step of mode `name` (a TRAINING_MODES name)."""
    return TRAINING_MODES.get(name)(budget=budget, trades_beta=trades_beta)


# What a mode ignores: a sweep that varies them for that mode varies nothing (analysis leaves them out).
TRAINING_FIELDS: tuple[str, ...] = (*ADV_FIELDS, "trades_beta")
IGNORED_BY_TRAINING: dict[str, frozenset[str]] = {
    name: frozenset(TRAINING_FIELDS) - set(TRAINING_MODES.info(name)) for name in TRAINING_MODES.names()
}

__all__ = [
    "IGNORED_BY_TRAINING",
    "TRAINING_FIELDS",
    "TRAINING_MODES",
    "Budget",
    "KLAttack",
    "Step",
    "budget_of",
    "build_step",
]
