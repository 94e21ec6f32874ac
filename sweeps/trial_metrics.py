"""The final metrics a trial reports, from its config: what a sweep's objective may name, and whether an
objective is checked by AutoAttack-grade attacks. Read by the sweep file's checks (`sweeps.config`)."""

from __future__ import annotations

from pclc import metrics as M
from pclc.config import TrialConfig


def objective_metrics(trial: TrialConfig) -> list[str]:
    """Every final metric a trial with this config reports (what an objective may name)."""
    from pclc.attacks import AttackSuite

    suite = AttackSuite.from_config(trial)
    names = [M.CLEAN_ACC, M.ROBUST_ACC, M.PROB_GAP, M.TRAIN_LOSS]
    exact = [a for a in trial.attacks if a not in trial.worst_case_only]  # the others have no number of their own
    for attack in exact:
        names += [M.robust_key(attack, eps) for eps in suite.eps_for(attack)]
    names += [M.robust_key(M.WORST, eps) for eps in trial.eps]
    from pclc.attacks import AUTOATTACK, CLASSIC

    families = ((M.WORST_CLASSIC, M.ROBUST_ACC_CLASSIC, CLASSIC), (M.WORST_AA, M.ROBUST_ACC_AA, AUTOATTACK))
    for aggregate, headline, family in families:
        if set(family) & set(trial.worst_case_only):
            continue  # its worst would hold an attack run only where the others failed: not exact
        ran = family_eps(trial, family)
        names += [M.robust_key(aggregate, eps) for eps in sorted(ran)]
        names += [headline] if trial.headline_eps in ran else []
    names += [M.second_class_key(a) for a in exact]
    return names


def family_eps(trial: TrialConfig, family: tuple[str, ...]) -> set[float]:
    """The radii at which some attack of `family` runs in this trial (AutoAttack-grade ones only at aa_eps)."""
    from pclc.attacks import AttackSuite

    suite = AttackSuite.from_config(trial)
    return {eps for a in trial.attacks if a in family for eps in suite.eps_for(a)}


def unchecked_robust_metric(metric: str, trial: TrialConfig) -> str | None:
    """Why optimising `metric` would reward fooling weak attacks, or None when AutoAttack-grade attacks
    check it. Softmax-saturating losses (PC) flatten CE gradients: a classic-only number is a claim."""
    from pclc.attacks import AUTOATTACK, CLASSIC

    aa_eps = family_eps(trial, AUTOATTACK)
    if metric == M.ROBUST_ACC_CLASSIC:
        return "it is the paper's classic attacks alone"
    parsed = M.parse_robust_key(metric)
    if metric == M.ROBUST_ACC:
        parsed = (M.WORST, trial.headline_eps)
    if parsed is None:
        return None
    attack, eps = parsed
    if attack in CLASSIC or attack == M.WORST_CLASSIC:
        return f"{attack} is one of the paper's classic attacks, not AutoAttack-grade"
    if attack == M.WORST and eps not in aa_eps:
        return f"no AutoAttack-grade attack runs at eps={M.format_eps(eps)} (trial.attacks, trial.aa_eps)"
    return None
