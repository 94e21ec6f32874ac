"""The one metric-name schema shared by pclc, sweeps (MLflow) and analysis.

Names follow DESIGN.md (`robust_acc/<attack>/eps=<eps>`). MLflow forbids `=` in metric
names, so `to_mlflow`/`from_mlflow` map it once, here, in both directions, and `canonical_metric`
reads any spelling back. The rest of the MLflow contract (tags, params, tracking URI) is `pclc.contract`.
"""

from __future__ import annotations

import re

# The attack names and their families (CLASSIC, AUTOATTACK, WHITE_BOX, …) live with the attacks: pclc.attacks.
WORST = "worst"  # per-sample worst case over every attack run at an eps (on the AutoAttack subset)
WORST_CLASSIC = "worst_classic"  # the same over the paper's attacks only: what a weak evaluation claims
WORST_AA = "worst_aa"  # the same over the AutoAttack-grade attacks only
AGGREGATES: tuple[str, ...] = (WORST, WORST_CLASSIC, WORST_AA)

CLEAN_ACC = "clean_acc"
TRAIN_LOSS = "train_loss"
EPOCH = "epoch"
ROBUST_ACC = "robust_acc"  # the headline: worst case at the config's headline eps
ROBUST_ACC_CLASSIC = "robust_acc_classic"  # worst classic attack at the headline eps (the paper's claim)
ROBUST_ACC_AA = "robust_acc_aa"  # worst AutoAttack-grade attack at the headline eps
PROB_GAP = "prob_gap"
EVAL_SECONDS = "eval_seconds"  # wall time of the final evaluation (the attack suite), within trial_seconds
TRIAL_SECONDS = "trial_seconds"  # wall time of the whole trial: set-up, training, evaluation; a resumed
# trial adds what earlier attempts spent up to their last checkpoint (their work after it is not counted)
TRAIN_SECONDS = "train_seconds"  # wall time of the training epochs (with their per-epoch signal), within trial_seconds
SIGNAL_SECONDS = "signal_seconds"  # of train_seconds, the per-epoch signal's (epoch_robust_acc at its cadence)
GPU_HOURS = "gpu_hours"  # the trial's GPU share × trial_seconds / 3600: what it costs on a GPU (0 on a CPU)
# What a trial costs; the sweep's parent run holds each summed over its trials as `total_key(name)`.
COST: tuple[str, ...] = (GPU_HOURS, TRIAL_SECONDS, TRAIN_SECONDS, SIGNAL_SECONDS, EVAL_SECONDS)
EPOCH_ROBUST_ACC = "epoch_robust_acc"  # cheap per-epoch APGD-CE + APGD-T on a subset, for ASHA
FINALIST_PREFIX = "finalist/"  # `pclc evaluate`: the full AutoAttack re-score of a chosen trial
MASKING_PREFIX = "masking/"
# The gradient-masking checks that raise a warning (1.0 = fired); other masking/* are the numbers behind them.
MASKING_FLAGS: tuple[str, ...] = (
    "blackbox_beats_whitebox",
    "ce_weaker_than_cw",
    "no_collapse",
    "classic_overstates",  # the worst classic attack leaves more accuracy than AutoAttack-grade ones
    "aa_zero_gradients",
    "aa_square_beats_whitebox",  # the reference AutoAttack's own flags
)

_ROBUST_RE = re.compile(r"^robust_acc/(?P<attack>[a-z_]+)/eps=(?P<eps>[0-9.e+-]+)$")


def format_eps(eps: float) -> str:
    """Canonical text of an eps value: 0.1 → '0.1', 8/255 → '0.0313725'."""
    return f"{float(eps):.6g}"


def robust_key(attack: str, eps: float) -> str:
    return f"robust_acc/{attack}/eps={format_eps(eps)}"


def eval_seconds_key(part: str, eps: float | None = None) -> str:
    """Of `eval_seconds`, what one part of the final evaluation took: an (attack, eps) of the suite, or a
    check (`clean`, `masking_probe`, `zero_gradients`); the sum of the parts is within `eval_seconds`.

    >>> eval_seconds_key("pgd_ce", 0.1), eval_seconds_key("clean")
    ('eval_seconds/pgd_ce/eps=0.1', 'eval_seconds/clean')
    """
    return f"{EVAL_SECONDS}/{part}" + (f"/eps={format_eps(eps)}" if eps is not None else "")


def total_key(key: str) -> str:
    """The parent run's sum over a sweep's trials of the per-trial metric `key` (e.g. `total_gpu_hours`)."""
    return f"total_{key}"


def finalist_key(key: str) -> str:
    """Where `pclc evaluate` logs its re-score of `key`, beside the trial's own number."""
    return f"{FINALIST_PREFIX}{key}"


def second_class_key(attack: str) -> str:
    return f"second_class_rate/{attack}"


def masking_key(check: str) -> str:
    return f"{MASKING_PREFIX}{check}"


def parse_robust_key(key: str) -> tuple[str, float] | None:
    """(attack, eps) of a robust-accuracy key, or None for any other metric."""
    m = _ROBUST_RE.match(from_mlflow(key))
    return (m["attack"], float(m["eps"])) if m else None


def canonical_metric(name: str) -> str:
    """A metric name in the schema's canonical spelling ('eps=0.10' → 'eps=0.1', MLflow '_' → '='),
    a `finalist/` re-score included (its key is the trial's own key behind the prefix).

    >>> canonical_metric("robust_acc/fgsm/eps_0.10"), canonical_metric("finalist/robust_acc/worst/eps=0.20")
    ('robust_acc/fgsm/eps=0.1', 'finalist/robust_acc/worst/eps=0.2')
    """
    if name.startswith(FINALIST_PREFIX):
        return finalist_key(canonical_metric(name.removeprefix(FINALIST_PREFIX)))
    name = from_mlflow(name)
    parsed = parse_robust_key(name)
    return robust_key(*parsed) if parsed else name


def to_mlflow(key: str) -> str:
    """The name under which `key` is logged to MLflow (which refuses '=')."""
    return key.replace("=", "_")


def from_mlflow(name: str) -> str:
    """Inverse of `to_mlflow`: 'eps_0.1' back to 'eps=0.1'."""
    return re.sub(r"(^|/)eps_", r"\1eps=", name)
