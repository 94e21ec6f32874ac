"""The one metric-name schema shared by pclc, sweeps (MLflow) and analysis.

Names follow DESIGN.md (`robust_acc/<attack>/eps=<eps>`). MLflow forbids `=` in metric
names, so `to_mlflow`/`from_mlflow` map it once, here, in both directions.
"""

from __future__ import annotations

import re

ATTACKS: tuple[str, ...] = ("fgsm", "pgd_ce", "pgd_cw", "mim", "bim", "spsa", "transfer")
WHITE_BOX: tuple[str, ...] = ("fgsm", "pgd_ce", "pgd_cw", "mim", "bim")
BLACK_BOX: tuple[str, ...] = ("spsa", "transfer")
WORST = "worst"

CLEAN_ACC = "clean_acc"
TRAIN_LOSS = "train_loss"
EPOCH = "epoch"
ROBUST_ACC = "robust_acc"  # the headline: worst case at the config's headline eps
PROB_GAP = "prob_gap"
EPOCH_ROBUST_ACC = "epoch_robust_acc"  # cheap per-epoch PGD on a subset, for ASHA
MASKING_PREFIX = "masking/"
# The gradient-masking checks that raise a warning (1.0 = fired); other masking/* are the numbers behind them.
MASKING_FLAGS: tuple[str, ...] = ("blackbox_beats_whitebox", "ce_weaker_than_cw", "no_collapse")

_ROBUST_RE = re.compile(r"^robust_acc/(?P<attack>[a-z_]+)/eps=(?P<eps>[0-9.e+-]+)$")


def format_eps(eps: float) -> str:
    """Canonical text of an eps value: 0.1 → '0.1', 8/255 → '0.0313725'."""
    return f"{float(eps):.6g}"


def robust_key(attack: str, eps: float) -> str:
    return f"robust_acc/{attack}/eps={format_eps(eps)}"


def second_class_key(attack: str) -> str:
    return f"second_class_rate/{attack}"


def masking_key(check: str) -> str:
    return f"{MASKING_PREFIX}{check}"


def parse_robust_key(key: str) -> tuple[str, float] | None:
    """(attack, eps) of a robust-accuracy key, or None for any other metric."""
    m = _ROBUST_RE.match(from_mlflow(key))
    return (m["attack"], float(m["eps"])) if m else None


def to_mlflow(key: str) -> str:
    """The name under which `key` is logged to MLflow (which refuses '=')."""
    return key.replace("=", "_")


def from_mlflow(name: str) -> str:
    """Inverse of `to_mlflow`: 'eps_0.1' back to 'eps=0.1'."""
    return re.sub(r"(^|/)eps_", r"\1eps=", name)
