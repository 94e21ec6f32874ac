"""Scoring a trained model: clean and robust accuracy, probability gap, second-class rate, masking checks.

Every metric name comes from `pclc.metrics`, so sweeps, MLflow and analysis read the same schema.
The gradient-masking checks follow AutoAttack: they warn, in plain words, instead of failing the run.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from pclc import metrics as M
from pclc.attacks import (
    AUTOATTACK,
    BLACK_BOX,
    CLASSIC,
    WHITE_BOX,
    AttackSuite,
    LeftOut,
    SuiteResult,
    defined_for,
    frozen,
    left_out,
    run_suite,
    zero_gradient_points,
)
from pclc.outcomes import Outcomes

BLACKBOX_MARGIN = 0.02  # a black-box attack beating every white-box one by more than this is suspect
CE_CW_MARGIN = 0.10  # PGD-CE leaving this much more accuracy than PGD-CW is suspect
COLLAPSE_ACC = 0.10  # PGD at the large masking eps should leave no more accuracy than this
CLASSIC_AA_MARGIN = 0.03  # the worst classic attack leaving this much more than AutoAttack-grade ones is masking
SQUARE_MARGIN = 0.002  # the reference's own threshold: Square finding what the white-box attacks missed
ZERO_GRADIENT_SHARE = 0.01  # share of scored points no gradient loss can move (CE and margin both exactly 0)
EPOCH_TARGETS = 9  # per-epoch APGD-T targets, as the final one: top-3 overstated at 28×28 (benchmarks/epoch_signal.py)
EPOCH_ATTACKS = ("apgd_ce", "apgd_t")  # the per-epoch signal: untargeted CE, then targeted DLR
EPOCH_SIGNAL = "the per-epoch signal (epoch_robust_acc)"  # how a warning names it
_FLAGS = {M.masking_key(c) for c in M.MASKING_FLAGS}


@dataclass
class Evaluation:
    """The final metrics (DESIGN.md schema), the plain-English warnings of the masking checks, and the
    per-sample outcomes every accuracy metric is the mean of (samples indexed by position in x)."""

    metrics: dict[str, float]
    warnings: list[str] = field(default_factory=list)
    outcomes: Outcomes | None = None

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
    accuracy: dict[tuple[str, float], float],
    large_eps_acc: float | None,
    *,
    masking_eps: float | None = None,
    classic_vs_aa: dict[float, tuple[float, float]] | None = None,
    reference: dict[str, float] | None = None,
    zero_gradients: tuple[int, int] | None = None,
) -> tuple[dict[str, float], list[str]]:
    """Gradient-masking checks on per-(attack, eps) robust accuracies; returns (metrics, warnings).

    `classic_vs_aa[eps]` is (worst classic, worst AutoAttack-grade) accuracy on the same samples;
    `reference` the reference AutoAttack's own findings (`SuiteResult.flags`); `zero_gradients` is
    (points no gradient loss can move, points checked), from `pclc.attacks.zero_gradient_points`.

    A check whose attacks were not run is left out of the metrics (it cannot fire).
    Flags are 1.0 when they fire; `masking/any` is 1.0 if any flag fired.
    """
    out: dict[str, float] = {}
    warnings: list[str] = []
    eps_grid = sorted({e for _, e in accuracy})

    def record(number: str, value: float, flag: str, fired: bool, why: str) -> None:
        """One check: the number behind it, its flag (1.0 when it fired) and, if it fired, the warning."""
        out[M.masking_key(number)] = value
        out[M.masking_key(flag)] = float(fired)
        if fired:
            warnings.append(f"Gradient masking suspected: {why}")

    # 1. A black-box attack should never beat the best gradient attack at the same eps.
    gaps = []
    for eps in eps_grid:
        white = {a: acc for (a, e), acc in accuracy.items() if e == eps and a in WHITE_BOX}
        black = {a: acc for (a, e), acc in accuracy.items() if e == eps and a in BLACK_BOX}
        if white and black:
            best_white, best_black = min(white, key=white.get), min(black, key=black.get)  # type: ignore[arg-type]
            gaps.append((white[best_white] - black[best_black], eps, best_white, best_black, white, black))
    if gaps:
        gap, eps, wb, bb, white, black = max(gaps, key=lambda g: g[0])
        record(
            "blackbox_gap",
            gap,
            "blackbox_beats_whitebox",
            gap > BLACKBOX_MARGIN,
            f"at eps={M.format_eps(eps)} the black-box attack {bb} leaves "
            f"{black[bb]:.3f} accuracy, below the best white-box attack {wb} ({white[wb]:.3f}). Attacks "
            "that see the gradients should be at least as strong as ones that do not, so this model's "
            "gradients are probably masked or obfuscated (non-differentiable, saturating or randomised "
            "layers). Treat the white-box numbers as upper bounds; trust the worst case, and use more "
            "attack steps or an adaptive attack (BPDA, EOT) before claiming robustness.",
        )

    # 2. PGD on CE should be about as strong as PGD on the CW margin loss.
    ce_cw = [
        (accuracy[("pgd_ce", e)] - accuracy[("pgd_cw", e)], e)
        for e in eps_grid
        if ("pgd_ce", e) in accuracy and ("pgd_cw", e) in accuracy
    ]
    if ce_cw:
        gap, eps = max(ce_cw)
        record(
            "ce_cw_gap",
            gap,
            "ce_weaker_than_cw",
            gap > CE_CW_MARGIN,
            f"at eps={M.format_eps(eps)} PGD on the cross-entropy loss leaves "
            f"{accuracy[('pgd_ce', eps)]:.3f} accuracy, {gap:.3f} more than PGD on the CW margin loss. A "
            "saturated softmax (very confident logits, which probability-margin losses encourage) flattens "
            "the cross-entropy gradient, so CE-based attacks (fgsm, pgd_ce, mim, bim) overstate robustness. "
            "Report the pgd_cw and worst-case numbers, not the CE ones.",
        )

    # 3. At a very large eps any working attack reaches ~0 % accuracy.
    if large_eps_acc is not None:
        where = f"eps={M.format_eps(masking_eps)}" if masking_eps is not None else "a large eps"
        record(
            "large_eps_acc",
            large_eps_acc,
            "no_collapse",
            large_eps_acc > COLLAPSE_ACC,
            f"PGD-CE at {where} still leaves {large_eps_acc:.3f} accuracy. "
            "A ball that large holds images of other classes, so an attack that follows working gradients "
            f"should reach ~0 % (≤ {COLLAPSE_ACC:.2f}). Check for masked gradients; if there are none, "
            "raise attack_steps or step_scale, since the attack is not converging.",
        )

    # 4. The paper's attacks should not claim more than AutoAttack-grade attacks find.
    if classic_vs_aa:
        eps, (classic, aa) = max(classic_vs_aa.items(), key=lambda item: item[1][0] - item[1][1])
        record(
            "classic_aa_gap",
            classic - aa,
            "classic_overstates",
            classic - aa > CLASSIC_AA_MARGIN,
            f"at eps={M.format_eps(eps)} the worst of the paper's attacks leaves "
            f"{classic:.3f} accuracy but AutoAttack-grade attacks leave {aa:.3f} ({classic - aa:.3f} less, "
            f"threshold {CLASSIC_AA_MARGIN:.2f}). The classic attacks overstate this model's robustness: "
            "report the AutoAttack-grade number (the headline robust_acc already does).",
        )

    # 5. Points whose input gradient is exactly zero under every loss: gradient attacks cannot move them.
    if zero_gradients is not None and zero_gradients[1] > 0:
        points, checked = zero_gradients
        record(
            "aa_zero_gradient_points",
            float(points),
            "aa_zero_gradients",
            points / checked > ZERO_GRADIENT_SHARE,
            f"{points} of {checked} clean-correct point(s) on the AutoAttack subset have an input gradient "
            "that is exactly zero under the cross-entropy and the CW margin loss alike "
            f"(threshold {ZERO_GRADIENT_SHARE:.0%} of them). Gradient-based attacks cannot move those points, "
            "so their robustness is unmeasured; look for quantised, saturated or non-differentiable layers. "
            "(A zero cross-entropy gradient alone is float32 saturation on confident points, not masking.)",
        )

    # 6. The reference AutoAttack's own Square check.
    if reference:
        gain = reference.get("aa_square_gain", 0.0)
        record(
            "aa_square_gain",
            gain,
            "aa_square_beats_whitebox",
            gain > SQUARE_MARGIN,
            f"in AutoAttack, the black-box Square Attack lowered robust accuracy "
            f"by {gain:.3f} after the white-box attacks had run (the reference AutoAttack's check). A model "
            "whose gradients work should leave Square nothing to find; run Square with more queries and "
            "restarts, or an adaptive attack.",
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
    (per-sample worst case over the attacks at that eps, on the samples all of them scored: the
    AutoAttack subset when AutoAttack-grade attacks ran); robust_acc (worst at `headline_eps`);
    worst_classic / worst_aa and robust_acc_classic / robust_acc_aa (the same per family); prob_gap;
    second_class_rate/<attack> at `headline_eps` (left out for an attack with no successful sample,
    where the rate is undefined); masking/* checks (see `masking_checks`), with one extra PGD-CE run at
    `masking_eps` (None skips that check). Each fired check adds a plain-English warning, and so does each
    part a composite attack left out for the model's class count (`pclc.attacks.LeftOut`).

    Example (an illustration: it needs a trained model or a store):
        >>> ev = evaluate(model, x, y, suite, substitute=sub, headline_eps=0.1, masking_eps=0.5)  # doctest: +SKIP
        >>> ev.metrics["robust_acc"], ev.warnings  # doctest: +SKIP
    """
    if float(headline_eps) not in suite.eps:
        raise ValueError(f"headline_eps {headline_eps} is not in the suite's eps grid {list(suite.eps)}")
    result = run_suite(model, x, y, suite, substitute=substitute)
    outcomes = sample_outcomes(result, headline_eps=float(headline_eps))
    metrics = _scores(result, outcomes, float(headline_eps))

    seconds = {M.eval_seconds_key(a, e): s for (a, e), s in result.seconds.items()}
    for (composite, eps), parts in result.part_seconds.items():  # within the composite's own seconds
        seconds.update({M.eval_seconds_key(f"{composite}.{part}", eps): s for part, s in parts.items()})
    seconds[M.eval_seconds_key("clean")] = result.clean_seconds

    large_eps_acc = None
    if masking_eps is not None:
        started = time.perf_counter()
        probe = dataclasses.replace(suite, attacks=("pgd_ce",), eps=(float(masking_eps),), aa_eps=None)
        large_eps_acc = run_suite(model, x, y, probe).accuracy("pgd_ce", masking_eps)
        seconds[M.eval_seconds_key("masking_probe")] = time.perf_counter() - started
    accuracy = {(a, e): result.accuracy(a, e) for (a, e) in result.adv_pred if a not in result.worst_only}
    started = time.perf_counter()
    checked = (suite.aa_subset(len(result.y)) & result.clean_correct).nonzero().squeeze(1).to(x.device)
    zero = zero_gradient_points(model, x[checked], y[checked], suite.batch_size) if len(checked) else None
    seconds[M.eval_seconds_key("zero_gradients")] = time.perf_counter() - started
    classic_vs_aa = {
        eps: (metrics[M.robust_key(M.WORST_CLASSIC, eps)], metrics[M.robust_key(M.WORST_AA, eps)])
        for eps in result.eps
        if M.robust_key(M.WORST_CLASSIC, eps) in metrics and M.robust_key(M.WORST_AA, eps) in metrics
    }
    masking, warnings = masking_checks(
        accuracy,
        large_eps_acc,
        masking_eps=masking_eps,
        classic_vs_aa=classic_vs_aa,
        reference=result.flags,
        zero_gradients=(int(zero.sum()), len(zero)) if zero is not None else None,
    )
    metrics.update(masking)
    metrics.update(seconds)  # what each part cost: the per-attack rows of the cost table (benchmarks/trial_cost.py)
    notes = [str(x) for x in result.left_out] + _reference_notes(result)
    return Evaluation(metrics=metrics, warnings=warnings + notes, outcomes=outcomes)


def _reference_notes(result: SuiteResult) -> list[str]:
    # The reference's other warnings (randomised or dynamic defence, class count) pass through as said.
    known = ("points with zero gradient", "Square Attack has decreased")
    return [f"AutoAttack: {m}" for m in dict.fromkeys(result.messages) if not any(k in m for k in known)]


def sample_outcomes(result: SuiteResult, *, headline_eps: float) -> Outcomes:
    """Per sample, scored and still correct for clean_acc, every robust_acc/<attack>/eps=<eps>, and the
    worst / worst_classic / worst_aa cases per eps; robust_acc (and _classic, _aa) name their eps' key.

    Samples are positions in the evaluated (x, y) (`Outcomes.at` names the dataset's indices). Every
    accuracy metric `evaluate` reports is the mean of these flags (`Outcomes.accuracy`), so a paired test
    on them agrees with the logged numbers.
    """
    everyone = torch.ones(len(result.y), dtype=torch.bool)
    scored: dict[str, torch.Tensor] = {M.CLEAN_ACC: everyone}
    correct: dict[str, torch.Tensor] = {M.CLEAN_ACC: result.clean_correct}
    for attack, eps in result.adv_pred:
        if attack in result.worst_only:  # it ran where the others failed: only the worst case holds it
            continue
        key = M.robust_key(attack, eps)
        scored[key], correct[key] = result.mask(attack, eps), result.robust(attack, eps)
    for eps in result.eps:
        # the worst cases are over the samples every attack scored (the AutoAttack subset, if any ran),
        # the per-family ones too, so the three compare on the same samples
        robust, scope = result.worst(eps)
        scored[M.robust_key(M.WORST, eps)], correct[M.robust_key(M.WORST, eps)] = scope, robust
        for aggregate, family in ((M.WORST_CLASSIC, CLASSIC), (M.WORST_AA, AUTOATTACK)):
            ran = tuple(a for a in result.attacks if a in family and (a, eps) in result.adv_pred)
            if ran and result.exact(ran):  # a family holding a worst-case-only attack has no exact worst
                key = M.robust_key(aggregate, eps)
                scored[key], correct[key] = scope, result.worst(eps, ran)[0]
    headlines = {M.ROBUST_ACC: M.robust_key(M.WORST, headline_eps)}
    for headline, aggregate in ((M.ROBUST_ACC_CLASSIC, M.WORST_CLASSIC), (M.ROBUST_ACC_AA, M.WORST_AA)):
        if M.robust_key(aggregate, headline_eps) in correct:
            headlines[headline] = M.robust_key(aggregate, headline_eps)
    return Outcomes(dataset="", indices=range(len(result.y)), scored=scored, correct=correct, headlines=headlines)


def _scores(result: SuiteResult, outcomes: Outcomes, headline_eps: float) -> dict[str, float]:
    metrics = outcomes.metrics()  # every accuracy, from the per-sample flags that are logged with it
    metrics[M.PROB_GAP] = prob_gap(result.clean_probs, result.y)
    for attack in (a for a in result.attacks if a not in result.worst_only):
        rate = second_class_rate(result.clean_logits, result.y, result.pred(attack, headline_eps))
        if rate is not None:
            metrics[M.second_class_key(attack)] = rate
    return metrics


def epoch_robust_acc(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    steps: int,
    targets: int = EPOCH_TARGETS,
    attacks: tuple[str, ...] = EPOCH_ATTACKS,
    cascade: bool = True,
) -> float:
    """The cheap per-epoch signal ASHA stops trials on: per-sample worst of `attacks` (APGD-CE and
    APGD-T on the top-`targets` false classes), `steps` iterations each. Plain PGD-CE here rewarded
    softmax saturation, i.e. masking; `targets` and `attacks` let benchmarks/epoch_signal.py try others.
    Of `attacks`, only those defined for the model's class count run (`epoch_left_out` says which did not).
    `cascade` runs each attack after the first only on the points the earlier ones left robust (the same
    worst case; False attacks every point with every attack, as before issue 28, for benchmarks)."""
    with frozen(model), torch.no_grad():  # eval mode: a training-mode forward would move BatchNorm's statistics
        num_classes = int(model(x[:1]).shape[1])
    runnable = defined_for(attacks, num_classes)
    if not runnable:
        raise ValueError(f"none of the per-epoch attacks {list(attacks)} is defined for {num_classes} classes")
    # only the worst case is read: each attack after the first runs on the points the earlier ones left robust
    suite = AttackSuite(
        attacks=runnable,
        eps=(float(eps),),
        aa_steps=steps,
        aa_targets=targets,
        aa_limit=None,
        worst_only=runnable[1:] if cascade else (),
    )
    return run_suite(model, x, y, suite).worst_accuracy(eps)


def epoch_left_out(num_classes: int, attacks: tuple[str, ...] = EPOCH_ATTACKS) -> list[LeftOut]:
    """The attacks of the per-epoch signal that `epoch_robust_acc` leaves out for `num_classes` classes."""
    ran = defined_for(attacks, num_classes)
    return [dataclasses.replace(x, within=EPOCH_SIGNAL, ran=ran) for x in left_out(attacks, num_classes)]
