"""Scoring a trained model: clean and robust accuracy, probability gap, second-class rate, masking checks.

Every metric name comes from `pclc.metrics`, so sweeps, MLflow and analysis read the same schema.
The gradient-masking checks follow AutoAttack: they warn, in plain words, instead of failing the run.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from pclc import metrics as M
from pclc.attacks import AttackSuite, SuiteResult, run_suite

BLACKBOX_MARGIN = 0.02  # a black-box attack beating every white-box one by more than this is suspect
CE_CW_MARGIN = 0.10  # PGD-CE leaving this much more accuracy than PGD-CW is suspect
COLLAPSE_ACC = 0.10  # PGD at the large masking eps should leave no more accuracy than this
_FLAGS = {M.masking_key(c) for c in M.MASKING_FLAGS}


@dataclass
class Evaluation:
    """The final metrics (DESIGN.md schema) and the plain-English warnings of the masking checks."""

    metrics: dict[str, float]
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"metrics": dict(self.metrics), "warnings": list(self.warnings)}


# ------------------------------------------------------------------ metrics from per-sample outcomes
def prob_gap(probs: torch.Tensor, y: torch.Tensor) -> float:
    """Mean of p(true) − max p(false) over samples, in [-1, 1] (the paper's "Effect" figure)."""
    p_true = probs.gather(1, y.view(-1, 1)).squeeze(1)
    p_false = probs.scatter(1, y.view(-1, 1), float("-inf")).max(dim=1).values
    return (p_true - p_false).mean().item()


def second_class_rate(clean_scores: torch.Tensor, y: torch.Tensor, adv_pred: torch.Tensor) -> float | None:
    """Share of successful attacks (clean-correct, adversarially wrong) that land in the clean input's
    second most probable class; None when no attack succeeded (the rate is undefined).

    `clean_scores` are logits or probabilities (only their order matters). Logits are better: a
    saturated softmax rounds the non-top probabilities to exact ties at 0.
    """
    correct = clean_scores.argmax(dim=1) == y
    success = correct & (adv_pred != y)
    if not success.any():
        return None
    # For a clean-correct sample the runner-up is the highest-scoring class other than the true one.
    runner_up = clean_scores.scatter(1, y.view(-1, 1), float("-inf")).argmax(dim=1)
    return (adv_pred[success] == runner_up[success]).float().mean().item()


def masking_checks(
    accuracy: dict[tuple[str, float], float], large_eps_acc: float | None, *, masking_eps: float | None = None
) -> tuple[dict[str, float], list[str]]:
    """Gradient-masking checks on per-(attack, eps) robust accuracies; returns (metrics, warnings).

    A check whose attacks were not run is left out of the metrics (it cannot fire).
    Flags are 1.0 when they fire; `masking/any` is 1.0 if any flag fired.
    """
    out: dict[str, float] = {}
    warnings: list[str] = []
    eps_grid = sorted({e for _, e in accuracy})

    # 1. A black-box attack should never beat the best gradient attack at the same eps.
    gaps = []
    for eps in eps_grid:
        white = {a: acc for (a, e), acc in accuracy.items() if e == eps and a in M.WHITE_BOX}
        black = {a: acc for (a, e), acc in accuracy.items() if e == eps and a in M.BLACK_BOX}
        if white and black:
            best_white, best_black = min(white, key=white.get), min(black, key=black.get)  # type: ignore[arg-type]
            gaps.append((white[best_white] - black[best_black], eps, best_white, best_black, white, black))
    if gaps:
        gap, eps, wb, bb, white, black = max(gaps, key=lambda g: g[0])
        fired = gap > BLACKBOX_MARGIN
        out[M.masking_key("blackbox_gap")] = gap
        out[M.masking_key("blackbox_beats_whitebox")] = float(fired)
        if fired:
            warnings.append(
                f"Gradient masking suspected: at eps={M.format_eps(eps)} the black-box attack {bb} leaves "
                f"{black[bb]:.3f} accuracy, below the best white-box attack {wb} ({white[wb]:.3f}). Attacks "
                "that see the gradients should be at least as strong as ones that do not, so this model's "
                "gradients are probably masked or obfuscated (non-differentiable, saturating or randomised "
                "layers). Treat the white-box numbers as upper bounds; trust the worst case, and use more "
                "attack steps or an adaptive attack (BPDA, EOT) before claiming robustness."
            )

    # 2. PGD on CE should be about as strong as PGD on the CW margin loss.
    ce_cw = [
        (accuracy[("pgd_ce", e)] - accuracy[("pgd_cw", e)], e)
        for e in eps_grid
        if ("pgd_ce", e) in accuracy and ("pgd_cw", e) in accuracy
    ]
    if ce_cw:
        gap, eps = max(ce_cw)
        fired = gap > CE_CW_MARGIN
        out[M.masking_key("ce_cw_gap")] = gap
        out[M.masking_key("ce_weaker_than_cw")] = float(fired)
        if fired:
            warnings.append(
                f"Gradient masking suspected: at eps={M.format_eps(eps)} PGD on the cross-entropy loss leaves "
                f"{accuracy[('pgd_ce', eps)]:.3f} accuracy, {gap:.3f} more than PGD on the CW margin loss. A "
                "saturated softmax (very confident logits, which probability-margin losses encourage) flattens "
                "the cross-entropy gradient, so CE-based attacks (fgsm, pgd_ce, mim, bim) overstate robustness. "
                "Report the pgd_cw and worst-case numbers, not the CE ones."
            )

    # 3. At a very large eps any working attack reaches ~0 % accuracy.
    if large_eps_acc is not None:
        fired = large_eps_acc > COLLAPSE_ACC
        out[M.masking_key("large_eps_acc")] = large_eps_acc
        out[M.masking_key("no_collapse")] = float(fired)
        if fired:
            where = f"eps={M.format_eps(masking_eps)}" if masking_eps is not None else "a large eps"
            warnings.append(
                f"Gradient masking suspected: PGD-CE at {where} still leaves {large_eps_acc:.3f} accuracy. "
                "A ball that large holds images of other classes, so an attack that follows working gradients "
                f"should reach ~0 % (≤ {COLLAPSE_ACC:.2f}). Check for masked gradients; if there are none, "
                "raise attack_steps or step_scale, since the attack is not converging."
            )

    flags = [v for k, v in out.items() if k in _FLAGS]
    if flags:
        out[M.masking_key("any")] = float(max(flags))
    return out, warnings


# ------------------------------------------------------------------ the evaluation
def evaluate(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    suite: AttackSuite,
    *,
    substitute: nn.Module | None = None,
    headline_eps: float,
    masking_eps: float | None,
) -> Evaluation:
    """Run `suite` against `model` on (x, y) and score it in the metric schema.

    Metrics: clean_acc; robust_acc/<attack>/eps=<eps> for every (attack, eps); robust_acc/worst/eps=<eps>
    (per-sample worst case over the attacks at that eps); robust_acc (worst at `headline_eps`); prob_gap;
    second_class_rate/<attack> at `headline_eps` (left out for an attack with no successful sample,
    where the rate is undefined); masking/* checks (see `masking_checks`), with one extra PGD-CE run at
    `masking_eps` (None skips that check). Each fired check adds a plain-English warning.

    Example:
        >>> ev = evaluate(model, x, y, suite, substitute=sub, headline_eps=0.1, masking_eps=0.5)
        >>> ev.metrics["robust_acc"], ev.warnings
    """
    if float(headline_eps) not in suite.eps:
        raise ValueError(f"headline_eps {headline_eps} is not in the suite's eps grid {list(suite.eps)}")
    result = run_suite(model, x, y, suite, substitute=substitute)
    metrics = _scores(result, float(headline_eps))

    large_eps_acc = None
    if masking_eps is not None:
        probe = dataclasses.replace(suite, attacks=("pgd_ce",), eps=(float(masking_eps),))
        large_eps_acc = run_suite(model, x, y, probe).accuracy("pgd_ce", masking_eps)
    accuracy = {(a, e): result.accuracy(a, e) for (a, e) in result.adv_pred}
    masking, warnings = masking_checks(accuracy, large_eps_acc, masking_eps=masking_eps)
    metrics.update(masking)
    return Evaluation(metrics=metrics, warnings=warnings)


def _scores(result: SuiteResult, headline_eps: float) -> dict[str, float]:
    metrics: dict[str, float] = {M.CLEAN_ACC: result.clean_correct.float().mean().item()}
    for attack, eps in result.adv_pred:
        metrics[M.robust_key(attack, eps)] = result.accuracy(attack, eps)
    for eps in result.eps:
        metrics[M.robust_key(M.WORST, eps)] = result.worst(eps).float().mean().item()
    metrics[M.ROBUST_ACC] = metrics[M.robust_key(M.WORST, headline_eps)]
    metrics[M.PROB_GAP] = prob_gap(result.clean_probs, result.y)
    for attack in result.attacks:
        rate = second_class_rate(result.clean_logits, result.y, result.pred(attack, headline_eps))
        if rate is not None:
            metrics[M.second_class_key(attack)] = rate
    return metrics


def quick_robust_acc(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    steps: int,
    step_scale: float | None = None,
    batch_size: int | None = None,
) -> float:
    """PGD-CE robust accuracy on a small subset: the cheap per-epoch signal ASHA stops trials on.

    step_scale and batch_size default to the trial config's defaults.
    """
    kwargs = {k: v for k, v in {"step_scale": step_scale, "batch_size": batch_size}.items() if v is not None}
    suite = AttackSuite(attacks=("pgd_ce",), eps=(float(eps),), steps=steps, **kwargs)
    return run_suite(model, x, y, suite).accuracy("pgd_ce", eps)
