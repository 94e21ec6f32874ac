"""pclc.evaluate: the metric schema, worst case, probability gap, second-class rate and masking checks,
with real advertorch attacks on a small CNN trained on real digits."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn
from trained import digits, model, small_cnn, substitute, train  # noqa: F401  (fixtures)

from pclc import metrics as M
from pclc.attacks import ATTACK_BUILDERS, CLASSIC, AttackSuite, run_suite
from pclc.evaluate import (
    Evaluation,
    epoch_robust_acc,
    evaluate,
    masking_checks,
    prob_gap,
    sample_outcomes,
    second_class_rate,
)
from pclc.outcomes import Outcomes

EPS = (0.1, 0.2)
HEADLINE = 0.2
MASKING_EPS = 0.5


class Quantized(nn.Module):
    """Rounds its input to 8 bits first: same predictions, but zero input gradients (masked)."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(torch.round(x * 255) / 255)


class Saturated(nn.Module):
    """Logits scaled by 1e4: same predictions, but the softmax saturates so the CE gradient is exactly 0
    (defensive-distillation style masking); margin losses still see the gradient."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x) * 1e4


class Scaled(nn.Module):
    """Logits ×1000: same predictions, a saturated softmax. CE-based attacks stall; DLR/margin ones do not."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x) * 1000


# Small AutoAttack budgets (digits break at far less than the reference's); every sample scored, so
# per-attack accuracies and the worst case are over the same samples.
AA_BUDGET = {"aa_steps": 20, "square_queries": 300, "aa_limit": None, "aa_eps": (HEADLINE,)}


@pytest.fixture(scope="module")
def suite() -> AttackSuite:
    return AttackSuite(attacks=tuple(ATTACK_BUILDERS.names()), eps=EPS, steps=5, spsa_samples=16, **AA_BUDGET)


def _evaluate(net: nn.Module, digits, suite: AttackSuite, substitute: nn.Module) -> Evaluation:
    return evaluate(
        net, digits[2], digits[3], suite, substitute=substitute, headline_eps=HEADLINE, masking_eps=MASKING_EPS
    )


@pytest.fixture(scope="module")
def normal(model, digits, suite, substitute) -> Evaluation:
    return _evaluate(model, digits, suite, substitute)


# ------------------------------------------------------------------ the metric schema
def test_metric_names_follow_the_schema(normal: Evaluation, suite: AttackSuite) -> None:
    keys = set(normal.metrics)
    assert {M.CLEAN_ACC, M.ROBUST_ACC, M.PROB_GAP} <= keys
    for attack in suite.attacks:
        for eps in suite.eps_for(attack):
            assert M.robust_key(attack, eps) in keys
    for eps in EPS:
        assert {M.robust_key(M.WORST, eps), M.robust_key(M.WORST_CLASSIC, eps)} <= keys
    assert (M.robust_key(M.WORST_AA, HEADLINE) in keys) and (M.robust_key(M.WORST_AA, EPS[0]) not in keys)
    headlines = (M.CLEAN_ACC, M.ROBUST_ACC, M.ROBUST_ACC_CLASSIC, M.ROBUST_ACC_AA, M.PROB_GAP)
    assert set(headlines) <= keys
    for key in keys:
        known = key in headlines or M.parse_robust_key(key) is not None
        known |= key.startswith(("second_class_rate/", M.MASKING_PREFIX, M.EVAL_SECONDS + "/"))
        assert known, key
        assert isinstance(normal.metrics[key], float) and math.isfinite(normal.metrics[key]), key
    json.dumps(normal.to_dict())  # lands in evaluation.json as is


def test_each_part_of_the_evaluation_says_what_it_took(normal: Evaluation, suite: AttackSuite) -> None:
    parts = {k for k in normal.metrics if k.startswith(M.EVAL_SECONDS + "/")}
    expected = {M.eval_seconds_key(a, e) for a in suite.attacks for e in suite.eps_for(a)}
    expected |= {M.eval_seconds_key(p) for p in ("clean", "masking_probe", "zero_gradients")}
    # the standard AutoAttack's parts, by the reference's own clock, in its cascade's order (it stops early
    # when no point is left robust)
    cascade = [k for k in normal.metrics if k.startswith(M.eval_seconds_key("autoattack."))]
    assert cascade and parts - expected == set(cascade)
    assert cascade[0] == M.eval_seconds_key("autoattack.apgd_ce", HEADLINE)
    assert sum(normal.metrics[k] for k in cascade) <= normal.metrics[M.eval_seconds_key("autoattack", HEADLINE)] + 0.2
    assert all(normal.metrics[k] >= 0 for k in parts)


def test_worst_case_only_attacks_keep_the_worst_case_and_have_no_number_of_their_own(model, digits) -> None:
    x, y = digits[2][:96], digits[3][:96]
    exact = AttackSuite(attacks=("fgsm", "bim", "pgd_cw"), eps=EPS, steps=5)
    cheap = AttackSuite(attacks=("fgsm", "bim", "pgd_cw"), eps=EPS, steps=5, worst_only=("bim",))
    full, worst_only = run_suite(model, x, y, exact), run_suite(model, x, y, cheap)
    for eps in EPS:
        # BIM has no random start: on the points it still attacks it does what it did on all of them
        assert torch.equal(worst_only.worst(eps)[0], full.worst(eps)[0])
        assert torch.equal(worst_only.robust("pgd_cw", eps), full.robust("pgd_cw", eps))
        assert full.accuracy("bim", eps) < full.accuracy("fgsm", eps)  # it breaks points of its own, too
    with pytest.raises(ValueError, match="worst case only"):
        worst_only.accuracy("bim", EPS[0])
    with pytest.raises(ValueError, match="not exact"):
        worst_only.worst(EPS[0], ("fgsm", "bim"))
    outcomes = sample_outcomes(worst_only, headline_eps=HEADLINE)
    assert M.robust_key("bim", HEADLINE) not in outcomes.correct
    assert M.robust_key(M.WORST_CLASSIC, HEADLINE) in outcomes.correct  # every classic attack: exact
    with pytest.raises(ValueError, match="must be attacks of the suite"):
        AttackSuite(attacks=("fgsm",), eps=EPS, worst_only=("bim",))


def test_the_signal_cascade_scores_what_attacking_every_point_scores(model, digits) -> None:
    x, y = digits[2][:64], digits[3][:64]
    both = [epoch_robust_acc(model, x, y, eps=HEADLINE, steps=5, cascade=c) for c in (True, False)]
    assert abs(both[0] - both[1]) <= 2 / 64  # APGD-T's random start differs with the batch it is drawn for


def test_accuracies_are_sane_on_a_trained_model(normal: Evaluation, suite: AttackSuite) -> None:
    m = normal.metrics
    assert m[M.CLEAN_ACC] > 0.9
    for attack in suite.attacks:
        for eps in suite.eps_for(attack):
            assert 0.0 <= m[M.robust_key(attack, eps)] < m[M.CLEAN_ACC]


def test_worst_case_is_at_most_every_attack(normal: Evaluation, suite: AttackSuite) -> None:
    m = normal.metrics
    for eps in EPS:
        worst = m[M.robust_key(M.WORST, eps)]
        ran = [a for a in suite.attacks if eps in suite.eps_for(a)]
        assert all(worst <= m[M.robust_key(a, eps)] for a in ran)
        assert worst <= m[M.robust_key(M.WORST_CLASSIC, eps)]
    # Per-sample worst case: strictly below the best single attack somewhere on this grid.
    classic = [a for a in suite.attacks if a in CLASSIC]
    assert any(m[M.robust_key(M.WORST_CLASSIC, e)] < min(m[M.robust_key(a, e)] for a in classic) for e in EPS)
    assert m[M.ROBUST_ACC] == m[M.robust_key(M.WORST, HEADLINE)]
    assert m[M.ROBUST_ACC] == min(m[M.ROBUST_ACC_CLASSIC], m[M.ROBUST_ACC_AA]) or m[M.ROBUST_ACC] < min(
        m[M.ROBUST_ACC_CLASSIC], m[M.ROBUST_ACC_AA]
    )
    assert m[M.ROBUST_ACC_AA] <= m[M.robust_key("autoattack", HEADLINE)]


# ------------------------------------------------------------------ per-sample outcomes
HEADLINES = (M.CLEAN_ACC, M.ROBUST_ACC, M.ROBUST_ACC_CLASSIC, M.ROBUST_ACC_AA)


def test_outcomes_read_back_from_their_artifact_equal_every_accuracy_metric(normal: Evaluation, model, digits) -> None:
    back = Outcomes.from_json(normal.outcomes.to_json())
    accuracies = {k: v for k, v in normal.metrics.items() if k in HEADLINES or M.parse_robust_key(k) is not None}
    assert len(accuracies) > 20 and back.metrics() == accuracies  # every one, aggregates and headlines: ==, not ≈
    # the flags are the model's own outcomes, not just numbers that average right
    with torch.no_grad():
        clean = (model(digits[2]).argmax(1) == digits[3]).numpy()
    assert np.array_equal(back.correct[M.CLEAN_ACC], clean) and back.scored[M.CLEAN_ACC].all()
    for eps in EPS:
        ran = [a for a in ATTACK_BUILDERS.names() if M.robust_key(a, eps) in back.correct]
        every = np.logical_and.reduce([back.correct[M.robust_key(a, eps)] for a in ran])
        assert np.array_equal(back.correct[M.robust_key(M.WORST, eps)], every)
        assert not (back.correct[M.robust_key(M.WORST, eps)] & ~clean).any()  # clean-wrong is never robust


def test_sample_outcomes_follow_the_suite_result_on_the_autoattack_subset(model, digits) -> None:
    x, y = digits[2][:96], digits[3][:96]
    suite = AttackSuite(
        attacks=("fgsm", "pgd_ce", "apgd_ce"), eps=(0.1, 0.2), steps=3, aa_steps=5, aa_limit=40, aa_eps=(0.1,)
    )
    result = run_suite(model, x, y, suite)
    o = sample_outcomes(result, headline_eps=0.1)
    assert o.indices.tolist() == list(range(96))
    assert o.accuracy(M.CLEAN_ACC) == result.clean_correct.float().mean().item()
    for attack, eps in result.adv_pred:
        assert o.accuracy(M.robust_key(attack, eps)) == result.accuracy(attack, eps)
    for eps in (0.1, 0.2):
        assert o.accuracy(M.robust_key(M.WORST, eps)) == result.worst_accuracy(eps)
    # at 0.1 every worst case is over the AutoAttack subset, the classic one too (same samples as the others)
    subset = suite.aa_subset(96).numpy()
    for aggregate in (M.WORST, M.WORST_CLASSIC, M.WORST_AA):
        assert np.array_equal(o.scored[M.robust_key(aggregate, 0.1)], subset)
    assert subset.sum() == 40 and o.scored[M.robust_key("apgd_ce", 0.1)].sum() == 40
    classic = result.worst(0.1, ("fgsm", "pgd_ce"))[0][torch.from_numpy(subset)].float().mean().item()
    assert o.accuracy(M.robust_key(M.WORST_CLASSIC, 0.1)) == classic
    assert o.scored[M.robust_key(M.WORST, 0.2)].all() and M.robust_key(M.WORST_AA, 0.2) not in o.correct
    assert o.headlines == {
        M.ROBUST_ACC: M.robust_key(M.WORST, 0.1),
        M.ROBUST_ACC_CLASSIC: M.robust_key(M.WORST_CLASSIC, 0.1),
        M.ROBUST_ACC_AA: M.robust_key(M.WORST_AA, 0.1),
    }


def test_headline_eps_must_be_in_the_grid(model, digits, suite) -> None:
    with pytest.raises(ValueError, match="headline_eps"):
        evaluate(model, digits[2], digits[3], suite, headline_eps=0.3, masking_eps=None)


# ------------------------------------------------------------------ probability gap, second-class rate
def test_prob_gap_by_hand() -> None:
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.6, 0.3], [0.2, 0.2, 0.6]])
    y = torch.tensor([0, 2, 2])
    # (0.7 − 0.2) + (0.3 − 0.6) + (0.6 − 0.2), averaged
    assert prob_gap(probs, y) == pytest.approx((0.5 - 0.3 + 0.4) / 3)


def test_prob_gap_matches_the_model(normal: Evaluation, model, digits) -> None:
    with torch.no_grad():
        p = torch.softmax(model(digits[2]), dim=1)
    y = digits[3]
    by_hand = sum((p[i, y[i]] - max(p[i, j] for j in range(10) if j != y[i])).item() for i in range(len(y))) / len(y)
    assert -1.0 <= normal.metrics[M.PROB_GAP] <= 1.0
    assert normal.metrics[M.PROB_GAP] == pytest.approx(by_hand, abs=1e-5)


def test_second_class_rate_by_hand() -> None:
    scores = torch.tensor([[5.0, 3.0, 1.0], [1.0, 4.0, 2.0], [0.0, 1.0, 3.0], [3.0, 2.0, 1.0]])
    y = torch.tensor([0, 1, 2, 1])  # the last sample is clean-wrong: never counted
    adv = torch.tensor([1, 0, 2, 0])  # successes: #0 → runner-up 1 (yes), #1 → 0 (runner-up is 2: no)
    assert second_class_rate(scores, y, adv) == pytest.approx(0.5)
    assert second_class_rate(scores, y, y.clone()) is None  # no success: undefined


def test_second_class_rates_are_shares(normal: Evaluation, suite: AttackSuite) -> None:
    rates = {k: v for k, v in normal.metrics.items() if k.startswith("second_class_rate/")}
    assert set(rates) == {M.second_class_key(a) for a in suite.attacks}  # every attack succeeded somewhere
    assert all(0.0 <= v <= 1.0 for v in rates.values())


# ------------------------------------------------------------------ gradient-masking checks
def test_no_masking_flags_on_a_normal_model(normal: Evaluation) -> None:
    m = normal.metrics
    assert m[M.masking_key("any")] == 0.0
    assert m[M.masking_key("large_eps_acc")] <= 0.1
    assert normal.warnings == []


def test_masked_input_gradients_are_flagged(model, digits, suite, substitute) -> None:
    ev = _evaluate(Quantized(model), digits, suite, substitute)
    m = ev.metrics
    assert m[M.CLEAN_ACC] > 0.9
    assert m[M.masking_key("blackbox_beats_whitebox")] == 1.0
    assert m[M.masking_key("no_collapse")] == 1.0
    assert m[M.masking_key("any")] == 1.0
    assert any("black-box" in w for w in ev.warnings)
    assert any(f"eps={MASKING_EPS}" in w for w in ev.warnings)


def test_saturated_softmax_is_flagged(model, digits, suite, substitute) -> None:
    ev = _evaluate(Saturated(model), digits, suite, substitute)
    m = ev.metrics
    assert m[M.masking_key("ce_weaker_than_cw")] == 1.0
    assert m[M.masking_key("ce_cw_gap")] > 0.1
    assert m[M.masking_key("any")] == 1.0
    assert any("cross-entropy" in w for w in ev.warnings)
    # The margin-loss PGD is not fooled: the worst case stays honest.
    assert m[M.robust_key("pgd_cw", HEADLINE)] < 0.2
    assert m[M.ROBUST_ACC] < 0.2


def test_masking_checks_thresholds_and_omissions() -> None:
    acc = {("pgd_ce", 0.1): 0.50, ("pgd_cw", 0.1): 0.45, ("fgsm", 0.1): 0.6, ("transfer", 0.1): 0.47}
    out, warnings = masking_checks(acc, 0.05, masking_eps=0.5)
    assert out[M.masking_key("blackbox_gap")] == pytest.approx(-0.02)
    assert out[M.masking_key("ce_cw_gap")] == pytest.approx(0.05)
    assert out[M.masking_key("any")] == 0.0 and warnings == []
    out, warnings = masking_checks({**acc, ("spsa", 0.1): 0.40}, 0.2)
    assert out[M.masking_key("blackbox_beats_whitebox")] == 1.0 and out[M.masking_key("no_collapse")] == 1.0
    assert len(warnings) == 2
    # Checks whose attacks were not run are left out rather than reported as passing.
    out, _ = masking_checks({("fgsm", 0.1): 0.5}, None)
    assert out == {}


def test_evaluation_leaves_no_weight_gradients(model, digits, substitute) -> None:
    small = AttackSuite(attacks=("fgsm", "pgd_cw", "mim", "transfer"), eps=(0.1,), steps=2)
    model.train()
    try:
        evaluate(
            model,
            digits[2][:32],
            digits[3][:32],
            small,
            substitute=substitute,
            headline_eps=0.1,
            masking_eps=MASKING_EPS,
        )
        assert all(p.grad is None for p in model.parameters())
        assert all(p.requires_grad for p in model.parameters()) and model.training
    finally:
        model.eval()


# ------------------------------------------------------------------ classic attacks vs AutoAttack
CLASSIC_SUITE = ("fgsm", "pgd_ce", "mim", "bim", "autoattack")  # the paper's CE-based protocol + AutoAttack


def _classic_vs_aa(net: nn.Module, digits) -> Evaluation:
    s = AttackSuite(attacks=CLASSIC_SUITE, eps=(HEADLINE,), steps=5, **AA_BUDGET)
    return evaluate(net, digits[2], digits[3], s, headline_eps=HEADLINE, masking_eps=None)


def test_classic_overstating_fires_on_scaled_logits_and_names_both_numbers(model, digits) -> None:
    ev = _classic_vs_aa(Scaled(model), digits)
    m = ev.metrics
    classic, aa = m[M.ROBUST_ACC_CLASSIC], m[M.ROBUST_ACC_AA]
    assert classic - aa > 0.03
    assert m[M.masking_key("classic_overstates")] == 1.0 and m[M.masking_key("any")] == 1.0
    assert m[M.masking_key("classic_aa_gap")] == pytest.approx(classic - aa)
    warning = next(w for w in ev.warnings if "AutoAttack-grade" in w)
    assert f"{classic:.3f}" in warning and f"{aa:.3f}" in warning
    assert m[M.ROBUST_ACC] <= aa  # the headline is the truth, whatever the classic attacks claim


def test_classic_overstating_stays_quiet_on_a_plain_ce_model(model, digits) -> None:
    ev = _classic_vs_aa(model, digits)
    assert ev.metrics[M.masking_key("classic_overstates")] == 0.0
    assert not any("AutoAttack-grade" in w for w in ev.warnings)


def test_zero_gradient_flag_fires_on_masked_gradients_not_on_a_saturated_softmax(model, digits) -> None:
    # Issue 22: the reference's own check counts points whose CE gradient is exactly zero, which a
    # confidently trained CE model has on some CPUs (AVX-512) and not on others. Only points that the
    # margin loss cannot move either are masking.
    s = AttackSuite(attacks=("apgd_ce", "apgd_t"), eps=(HEADLINE,), **AA_BUDGET)
    x, y = digits[2][:64], digits[3][:64]
    masked = evaluate(Quantized(model), x, y, s, headline_eps=HEADLINE, masking_eps=None)
    assert masked.metrics[M.masking_key("aa_zero_gradients")] == 1.0
    with torch.no_grad():
        correct = (Quantized(model)(x).argmax(1) == y).sum().item()
    assert masked.metrics[M.masking_key("aa_zero_gradient_points")] == correct  # every checked point
    assert any("exactly zero" in w for w in masked.warnings)

    saturated = evaluate(Saturated(model), x, y, s, headline_eps=HEADLINE, masking_eps=None)
    assert saturated.metrics[M.masking_key("aa_zero_gradients")] == 0.0
    assert saturated.metrics[M.masking_key("aa_zero_gradient_points")] == 0.0
    assert not any("exactly zero" in w for w in saturated.warnings)
    plain = evaluate(model, x, y, s, headline_eps=HEADLINE, masking_eps=None)
    assert plain.metrics[M.masking_key("aa_zero_gradients")] == 0.0


def test_zero_gradient_points_needs_both_losses_flat(model, digits) -> None:
    from pclc.attacks import zero_gradient_points

    x, y = digits[2][:64], digits[3][:64]
    x_ce = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(nn.functional.cross_entropy(Saturated(model)(x_ce), y, reduction="sum"), x_ce)
    ce_flat = (grad.flatten(1).abs().sum(1) == 0).sum().item()
    assert ce_flat > len(x) // 2  # ×1e4 logits: the CE gradient underflows on most points, on any CPU
    assert not zero_gradient_points(Saturated(model), x, y, batch_size=16).any()
    assert zero_gradient_points(Quantized(model), x, y, batch_size=16).all()
    assert all(p.grad is None for p in model.parameters())


def test_zero_gradient_flag_threshold_by_hand() -> None:
    out, warnings = masking_checks({}, None, zero_gradients=(1, 200))  # 0.5 %: one odd point
    assert out[M.masking_key("aa_zero_gradients")] == 0.0 and warnings == []
    out, warnings = masking_checks({}, None, zero_gradients=(3, 200))
    assert out[M.masking_key("aa_zero_gradients")] == 1.0 and "3 of 200" in warnings[0]
    assert masking_checks({}, None, zero_gradients=(0, 0)) == ({}, [])  # nothing checked: left out


def test_masking_checks_classic_vs_aa_and_reference_by_hand() -> None:
    out, warnings = masking_checks({}, None, classic_vs_aa={0.1: (0.60, 0.58), 0.2: (0.30, 0.25)})
    assert out[M.masking_key("classic_aa_gap")] == pytest.approx(0.05)  # the worst eps is reported
    assert out[M.masking_key("classic_overstates")] == 1.0 and "eps=0.2" in warnings[0]
    out, warnings = masking_checks({}, None, classic_vs_aa={0.1: (0.60, 0.58)}, reference={"aa_square_gain": 0.01})
    assert out[M.masking_key("classic_overstates")] == 0.0
    assert out[M.masking_key("aa_square_beats_whitebox")] == 1.0 and "Square" in warnings[0]


# ------------------------------------------------------------------ the per-epoch signal
def test_epoch_robust_acc(model, digits) -> None:
    x, y = digits[2][:128], digits[3][:128]
    weak = epoch_robust_acc(model, x, y, eps=0.05, steps=5)
    strong = epoch_robust_acc(model, x, y, eps=0.2, steps=5)
    with torch.no_grad():
        clean = (model(x).argmax(1) == y).float().mean().item()
    assert 0.0 <= strong < weak < clean


def test_epoch_robust_acc_is_not_fooled_by_a_saturated_softmax(model, digits) -> None:
    # The old signal (PGD-CE) rewarded saturation: it stalls on ×1000 logits; APGD-T does not.
    x, y = digits[2][:128], digits[3][:128]
    honest = epoch_robust_acc(model, x, y, eps=0.1, steps=5)
    scaled = epoch_robust_acc(Scaled(model), x, y, eps=0.1, steps=5)
    pgd = AttackSuite(attacks=("pgd_ce",), eps=(0.1,), steps=5)
    from pclc.attacks import run_suite

    fooled = run_suite(Scaled(model), x, y, pgd).accuracy("pgd_ce", 0.1)
    assert fooled > honest + 0.2
    assert abs(scaled - honest) < 0.1


def test_epoch_robust_acc_more_targets_find_more_and_fewer_attacks_less(model, digits) -> None:
    # APGD-T seeds once, then tries targets in order on the points still standing: targets 1–3 run the same.
    x, y = digits[2][:128], digits[3][:128]
    top3 = epoch_robust_acc(model, x, y, eps=0.1, steps=5, targets=3)
    assert epoch_robust_acc(model, x, y, eps=0.1, steps=5, targets=9) <= top3
    assert epoch_robust_acc(model, x, y, eps=0.1, steps=5, targets=3, attacks=("apgd_ce",)) >= top3
