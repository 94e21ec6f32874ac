"""The paper's losses: probabilistically compact (PC) loss, logit constraint (LC), and PC + λ·LC.

Each is a drop-in for `nn.CrossEntropyLoss`: `loss(logits, target) -> scalar`. The class count
comes from the logits (the authors' notebook hard-coded 10), any device works, and the maths
runs in float32 so bf16 logits and logits as large as ±1e4 give finite values and gradients.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pclc.knobs import AUTHORS, LOSS_KNOBS
from pclc.registry import Registry

__all__ = [
    "IGNORED_BY_LOSS",
    "KNOBS",
    "LOSSES",
    "NO_WARMUP",
    "LogitConstraint",
    "PCLCLoss",
    "PCLoss",
    "build_loss",
    "logit_constraint",
    "pc_loss",
]


def _check_margin(margin: float) -> float:
    # NaN fails both comparisons, so it is refused too.
    if isinstance(margin, bool) or not 0.0 < float(margin) <= 1.0:
        raise ValueError(f"margin (ξ) must be in (0, 1], got {margin!r}")
    return float(margin)


def _check_lc_weight(lc_weight: float) -> float:
    if isinstance(lc_weight, bool) or not (float(lc_weight) >= 0.0 and math.isfinite(lc_weight)):
        raise ValueError(f"lc_weight (λ) must be a finite number >= 0, got {lc_weight!r}")
    return float(lc_weight)


def _prepare(logits: Tensor, target: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """float32 logits, target as an (N, 1) index, and the (N, K) true-class mask."""
    if logits.dim() != 2:
        raise ValueError(f"logits must be (batch, classes), got shape {tuple(logits.shape)}")
    if logits.shape[1] < 2:
        raise ValueError(f"need at least 2 classes, got logits of shape {tuple(logits.shape)}")
    if target.dim() != 1 or target.shape[0] != logits.shape[0]:
        raise ValueError(f"target must be ({logits.shape[0]},) class indices, got shape {tuple(target.shape)}")
    if target.dtype.is_floating_point or target.dtype == torch.bool:
        raise ValueError(f"target must hold integer class indices, got dtype {target.dtype}")
    z = logits.float()
    index = target.long().unsqueeze(1)
    # scatter rather than F.one_hot: no host sync on CUDA.
    true_mask = torch.zeros_like(z, dtype=torch.bool).scatter_(1, index, True)
    return z, index, true_mask


def pc_loss(logits: Tensor, target: Tensor, margin: float = AUTHORS["margin"]) -> Tensor:
    """Mean over the batch of Σ_{j≠y} max(0, ξ + p_j − p_y), divided by K − 1 (float32 scalar)."""
    z, index, true_mask = _prepare(logits, target)
    p = z.softmax(dim=1)
    p_true = p.gather(1, index)
    hinge = F.relu(margin + p - p_true).masked_fill(true_mask, 0.0)
    return hinge.sum(dim=1).mean() / (z.shape[1] - 1)


def logit_constraint(logits: Tensor, target: Tensor) -> Tensor:
    """Mean over the batch of Σ_{j≠y} max(0, w_j (z_y − z_j)), w = softmax over the false classes."""
    z, index, true_mask = _prepare(logits, target)
    z_true = z.gather(1, index)
    # -inf gives the true class a weight of exactly 0; K >= 2 keeps a finite entry per row.
    w = z.masked_fill(true_mask, float("-inf")).softmax(dim=1)
    # On the true class w = 0 and z_y − z_y = 0, so the product is 0 with a finite gradient.
    return F.relu(w * (z_true - z)).sum(dim=1).mean()


class PCLoss(nn.Module):
    """Probabilistically compact loss: every false-class probability ξ below the true one.

    Example:
        >>> loss = PCLoss(margin=0.995)
        >>> loss(torch.tensor([[4.0, 0.0, 0.0]]), torch.tensor([0])).item() > 0
        True
    """

    def __init__(self, margin: float = AUTHORS["margin"]) -> None:
        super().__init__()
        self.margin = _check_margin(margin)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        return pc_loss(logits, target, self.margin)

    def extra_repr(self) -> str:
        return f"margin={self.margin}"


class LogitConstraint(nn.Module):
    """Logit constraint: penalises the true logit exceeding the (softmax-weighted) false logits.

    Keeps the logit gap from growing without bound once PC has saturated the probabilities.
    """

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        return logit_constraint(logits, target)


class PCLCLoss(nn.Module):
    """The paper's training objective after CE warm-up: PC + λ·LC."""

    def __init__(self, margin: float = AUTHORS["margin"], lc_weight: float = AUTHORS["lc_weight"]) -> None:
        super().__init__()
        self.margin = _check_margin(margin)
        self.lc_weight = _check_lc_weight(lc_weight)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        loss = pc_loss(logits, target, self.margin)
        if self.lc_weight:
            loss = loss + self.lc_weight * logit_constraint(logits, target)
        return loss

    def extra_repr(self) -> str:
        return f"margin={self.margin}, lc_weight={self.lc_weight}"


# --- registry: the config's `loss` field names one of these; each member knows the paper's knobs it uses
KNOBS: tuple[str, ...] = LOSS_KNOBS  # ξ (PC's margin), λ (LC's weight), α (smoothing): symbols etc. in pclc.knobs
LOSSES: Registry[nn.Module] = Registry("loss")
"""name → builder(**knobs); info: the knobs (of `KNOBS`) the loss uses."""


@LOSSES.register("ce", info=())
def _ce() -> nn.Module:
    return nn.CrossEntropyLoss()


@LOSSES.register("pc", info=("margin",))
def _pc(*, margin: float = AUTHORS["margin"]) -> nn.Module:
    return PCLoss(margin=margin)


@LOSSES.register("lc", info=("lc_weight",))
def _lc(*, lc_weight: float = AUTHORS["lc_weight"]) -> nn.Module:
    # The constraint alone, for ablation. It is unweighted (λ does not change it), yet λ stays LC's knob:
    # the paper's ablation labels LC runs by λ, and analysis keeps it in their labels.
    del lc_weight
    return LogitConstraint()


@LOSSES.register("pclc", info=("margin", "lc_weight"))
def _pclc(*, margin: float = AUTHORS["margin"], lc_weight: float = AUTHORS["lc_weight"]) -> nn.Module:
    return PCLCLoss(margin=margin, lc_weight=lc_weight)


@LOSSES.register("label_smoothing", info=("smoothing",))
def _label_smoothing(*, smoothing: float = 0.1) -> nn.Module:
    """CE against (1 − α)·one-hot + α/K (Szegedy et al. 2016): a known gradient masker, the negative
    control of a robustness sweep (its gains under weak attacks come from a flattened softmax)."""
    if isinstance(smoothing, bool) or not 0.0 <= float(smoothing) < 1.0:
        raise ValueError(f"smoothing (α) must be in [0, 1), got {smoothing!r}")
    return nn.CrossEntropyLoss(label_smoothing=float(smoothing))


# Losses that are cross-entropy themselves: a CE warm-up before them would be more of the same, so they have none.
NO_WARMUP: frozenset[str] = frozenset({"ce", "label_smoothing"})

# The knobs each loss ignores: a sweep that varies them for that loss varies nothing (analysis leaves them out).
IGNORED_BY_LOSS: dict[str, frozenset[str]] = {
    name: frozenset(KNOBS) - set(LOSSES.info(name)) for name in LOSSES.names()
}


def build_loss(
    name: str, *, margin: float | None = None, lc_weight: float | None = None, smoothing: float | None = None
) -> nn.Module:
    """The loss called `name` ("ce", "pc", "pclc", "lc", "label_smoothing"); None keeps the default; a knob
    the loss does not use is ignored.

    Example:
        >>> build_loss("pclc", margin=0.9, lc_weight=0.1)
        PCLCLoss(margin=0.9, lc_weight=0.1)
    """
    knobs = {"margin": margin, "lc_weight": lc_weight, "smoothing": smoothing}
    return LOSSES.create(name, **{k: knobs[k] for k in LOSSES.info(name)})
