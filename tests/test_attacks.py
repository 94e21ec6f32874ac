"""pclc.attacks: the advertorch shim, the frozen model, the suite spec and the runner, on real digits."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from trained import digits, model, small_cnn, substitute, train  # noqa: F401  (fixtures)

from pclc.attacks import (
    ATTACK_BUILDERS,
    ATTACKS,
    AUTOATTACK,
    BLACK_BOX,
    CLASSIC,
    TRANSFER_ATTACKS,
    WHITE_BOX,
    AttackInfo,
    AttackSuite,
    craft,
    frozen,
    run_suite,
    zero_gradients,
)
from pclc.config import make_config
from pclc.gpu import _precision_flags

STEPS = 5


AA_BUDGET = {"aa_steps": 20, "square_queries": 300}  # small budgets: digits break at far less


def suite(attacks: tuple[str, ...], eps: tuple[float, ...], **kw) -> AttackSuite:
    return AttackSuite(attacks=attacks, eps=eps, steps=STEPS, spsa_samples=16, **{**AA_BUDGET, **kw})


# ------------------------------------------------------------------ advertorch shim
def test_advertorch_imports_after_pclc_attacks_in_a_fresh_process() -> None:
    code = (
        "import pclc.attacks, advertorch\n"
        "from advertorch.attacks import FABAttack, LinfPGDAttack\n"
        "from torch.autograd.gradcheck import zero_gradients\n"
        "import torch\n"
        "t = torch.ones(2, requires_grad=True); t.sum().backward(); zero_gradients(t)\n"
        "assert torch.equal(t.grad, torch.zeros(2))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def test_zero_gradients_zeroes_tensors_and_nested_iterables() -> None:
    a = torch.ones(3, requires_grad=True)
    b = torch.ones(2, requires_grad=True)
    (a.sum() * 2 + b.sum() * 3).backward()
    no_grad = torch.ones(1, requires_grad=True)
    zero_gradients([a, (b, no_grad), "not a tensor"])
    assert torch.equal(a.grad, torch.zeros(3)) and torch.equal(b.grad, torch.zeros(2))
    assert no_grad.grad is None
    c = torch.ones(2, requires_grad=True)
    (c * 5).sum().backward()
    zero_gradients(c)
    assert torch.equal(c.grad, torch.zeros(2))


def test_derived_lists_partition_the_registry() -> None:
    assert sorted(ATTACKS) == ATTACK_BUILDERS.names() and len(set(ATTACKS)) == len(ATTACKS)
    assert set(CLASSIC) | set(AUTOATTACK) == set(ATTACKS) and not set(CLASSIC) & set(AUTOATTACK)
    assert not set(WHITE_BOX) & set(BLACK_BOX) and set(BLACK_BOX) >= TRANSFER_ATTACKS
    assert ATTACKS.index("transfer") < ATTACKS.index("apgd_ce")  # classic first: the order of tables and plots


@pytest.mark.parametrize("name", ATTACK_BUILDERS.names())
def test_every_attack_says_what_it_is(name: str) -> None:
    info = ATTACK_BUILDERS.info(name)
    assert isinstance(info, AttackInfo) and info.box in ("white", "black", "mixed")
    assert info.family in ("classic", "autoattack") and (name in AUTOATTACK) == (info.family == "autoattack")
    s = AttackSuite(attacks=(name,), eps=(0.1,))
    cost = info.cost(s)
    assert isinstance(cost, int) and cost >= 1
    assert cost <= info.cost(
        AttackSuite(
            attacks=(name,),
            eps=(0.1,),
            steps=2 * s.steps,
            aa_steps=2 * s.aa_steps,
            spsa_samples=2 * s.spsa_samples,
            square_queries=2 * s.square_queries,
        )
    )


# ------------------------------------------------------------------ the suite spec
def test_suite_from_config() -> None:
    suite_fields = dict(attacks=["fgsm", "spsa"], eps=[0.2, 0.1], headline_eps=0.1, attack_steps=7, step_scale=2.0)
    cfg = make_config({**suite_fields, "spsa_samples": 32, "eval_batch_size": 50, "seed": 3})
    s = AttackSuite.from_config(cfg)
    assert s == AttackSuite(
        attacks=("fgsm", "spsa"),
        eps=(0.1, 0.2),
        steps=7,
        step_scale=2.0,
        spsa_samples=32,
        batch_size=50,
        seed=3,
        aa_eps=(0.1,),
    )
    assert s.step_size(0.2) == pytest.approx(2.0 * 0.2 / 7)


def test_suite_defaults_come_from_the_config() -> None:
    cfg = make_config({})
    s = AttackSuite(attacks=("fgsm",), eps=(0.1,))
    assert (s.steps, s.step_scale, s.spsa_samples, s.batch_size, s.aa_steps, s.square_queries, s.aa_limit) == (
        cfg.attack_steps,
        cfg.step_scale,
        cfg.spsa_samples,
        cfg.eval_batch_size,
        cfg.aa_steps,
        cfg.square_queries,
        cfg.aa_limit,
    )


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"attacks": ("fgsm", "nope")}, "unknown attack"),
        ({"attacks": ("fgsm", "fgsm")}, "twice"),
        ({"eps": (0.0,)}, "eps"),
        ({"eps": ()}, "eps"),
        ({"steps": 0}, "steps"),
    ],
)
def test_suite_refuses_bad_specs(kwargs: dict, message: str) -> None:
    spec = {"attacks": ("fgsm",), "eps": (0.1,), **kwargs}
    with pytest.raises(ValueError, match=message):
        AttackSuite(**spec)


def test_unknown_attack_name_lists_the_choices(model, digits) -> None:
    with pytest.raises(ValueError, match="choose one of: .*pgd_ce"):
        craft("nope", model, digits[2][:4], digits[3][:4], eps=0.1, suite=suite(("fgsm",), (0.1,)))


# ------------------------------------------------------------------ frozen
def test_frozen_restores_requires_grad_and_mode_even_on_error() -> None:
    net = small_cnn().train()
    net[0].weight.requires_grad_(False)  # a mixed state must come back exactly
    net[1].eval()
    before_grad = [p.requires_grad for p in net.parameters()]
    before_mode = [m.training for m in net.modules()]
    with pytest.raises(RuntimeError, match="boom"), frozen(net):
        assert not any(p.requires_grad for p in net.parameters())
        assert not any(m.training for m in net.modules())
        raise RuntimeError("boom")
    assert [p.requires_grad for p in net.parameters()] == before_grad
    assert [m.training for m in net.modules()] == before_mode


@pytest.mark.parametrize("name", ATTACK_BUILDERS.names())
def test_attacks_leave_no_weight_gradients(name: str, digits, model, substitute) -> None:
    model.train()
    try:
        craft(name, model, digits[2][:16], digits[3][:16], eps=0.1, suite=suite((name,), (0.1,)), substitute=substitute)
        assert all(p.grad is None for p in model.parameters())
        assert all(p.grad is None for p in substitute.parameters())
        assert all(p.requires_grad for p in model.parameters()) and model.training
    finally:
        model.eval()


# ------------------------------------------------------------------ the runner, on a trained model
def test_model_is_trained(digits, model) -> None:
    result = run_suite(model, digits[2], digits[3], suite(("fgsm",), (0.1,)))
    assert result.clean_correct.float().mean() > 0.9


@pytest.mark.parametrize("name", ATTACK_BUILDERS.names())
def test_every_attack_lowers_accuracy_and_stays_in_the_ball(name: str, digits, model, substitute) -> None:
    x, y = digits[2], digits[3]
    s = suite((name,), (0.2,))
    x_adv = craft(name, model, x[:32], y[:32], eps=0.2, suite=s, substitute=substitute)
    assert x_adv.shape == x[:32].shape
    assert (x_adv - x[:32]).abs().max() <= 0.2 + 1e-6
    assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0

    result = run_suite(model, x, y, s, substitute=substitute)
    clean = result.clean_correct.float().mean().item()
    assert result.accuracy(name, 0.2) < clean - 0.3
    # Clean-wrong samples are not attacked: they keep their clean prediction.
    wrong = ~result.clean_correct
    assert torch.equal(result.pred(name, 0.2)[wrong], result.clean_pred[wrong])


def test_pgd_accuracy_does_not_grow_with_eps(digits, model) -> None:
    grid = (0.02, 0.05, 0.1, 0.15, 0.2, 0.3)
    result = run_suite(model, digits[2], digits[3], suite(("pgd_ce", "pgd_cw"), grid))
    for name in ("pgd_ce", "pgd_cw"):
        acc = [result.accuracy(name, e) for e in grid]
        assert all(b <= a + 0.02 for a, b in zip(acc, acc[1:])), (name, acc)
        assert acc[-1] < acc[0] - 0.5


def test_suite_result_shapes_and_worst_case(digits, model, substitute) -> None:
    x, y = digits[2], digits[3]
    result = run_suite(model, x, y, suite(("fgsm", "pgd_ce", "transfer"), (0.1,)), substitute=substitute)
    assert result.clean_logits.shape == (len(x), 10)
    assert torch.allclose(result.clean_probs.sum(dim=1), torch.ones(len(x)))
    assert set(result.adv_pred) == {("fgsm", 0.1), ("pgd_ce", 0.1), ("transfer", 0.1)}
    worst, scored = result.worst(0.1)
    assert scored.all()  # classic attacks score every sample
    for name in result.attacks:
        assert result.pred(name, 0.1).shape == (len(x),)
        assert (worst <= result.robust(name, 0.1)).all()
    with pytest.raises(ValueError, match="was not run"):
        result.pred("mim", 0.1)


def test_batching_does_not_change_the_outcome(digits, model) -> None:
    x, y = digits[2][:60], digits[3][:60]
    one = run_suite(model, x, y, suite(("fgsm", "pgd_ce"), (0.1,), batch_size=256))
    many = run_suite(model, x, y, suite(("fgsm", "pgd_ce"), (0.1,), batch_size=7))
    assert torch.equal(one.pred("fgsm", 0.1), many.pred("fgsm", 0.1))
    # PGD's random start is drawn per batch, so only nearly all predictions agree.
    assert (one.pred("pgd_ce", 0.1) == many.pred("pgd_ce", 0.1)).float().mean() > 0.9


def test_runs_are_seeded_and_leave_the_global_rng_alone(digits, model) -> None:
    x, y = digits[2][:80], digits[3][:80]
    state = torch.get_rng_state()
    a = run_suite(model, x, y, suite(("pgd_ce",), (0.1,)))
    assert torch.equal(torch.get_rng_state(), state)
    b = run_suite(model, x, y, suite(("pgd_ce",), (0.1,)))
    assert torch.equal(a.pred("pgd_ce", 0.1), b.pred("pgd_ce", 0.1))


def test_runs_under_no_grad_and_autocast(digits, model) -> None:
    # The per-epoch check may be called from inside an eval block of a training loop.
    x, y = digits[2][:40], digits[3][:40]
    expected = run_suite(model, x, y, suite(("fgsm",), (0.2,))).pred("fgsm", 0.2)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        got = run_suite(model, x, y, suite(("fgsm",), (0.2,))).pred("fgsm", 0.2)
    assert torch.equal(got, expected)


class PrecisionProbe(torch.nn.Module):
    """The model, noting the fp32 precision of convolutions and matmuls at every forward pass."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner, self.seen = inner, set()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.add(tuple(getattr(owner, name) for owner, name in _precision_flags()))
        return self.inner(x)


@pytest.mark.parametrize("name", ["fgsm", "spsa", "apgd_ce"])
def test_attacks_run_in_ieee_fp32_and_put_the_settings_back(name: str, digits, model) -> None:
    # TF32 (cuDNN's default for convolutions) would blur SPSA's finite differences: every forward pass
    # of an attack, clean scoring included, sees IEEE fp32; the caller's settings come back afterwards.
    before = tuple(getattr(owner, attr) for owner, attr in _precision_flags())
    probe = PrecisionProbe(model)
    run_suite(probe, digits[2][:16], digits[3][:16], suite((name,), (0.1,), aa_limit=None))
    ieee = "ieee" if hasattr(torch.backends.cudnn, "conv") else False
    assert probe.seen == {(ieee, ieee)}
    assert tuple(getattr(owner, attr) for owner, attr in _precision_flags()) == before


def test_transfer_without_substitute_is_a_clear_error(digits, model) -> None:
    with pytest.raises(ValueError, match="substitute"):
        run_suite(model, digits[2][:8], digits[3][:8], suite(("fgsm", "transfer"), (0.1,)))


# ------------------------------------------------------------------ AutoAttack-grade attacks
AA_COMPONENTS = ("apgd_ce", "apgd_t", "fab_t", "square")


@pytest.fixture(scope="module")
def aa_result(digits, model):
    x, y = digits[2], digits[3]
    return run_suite(model, x, y, suite(("fgsm", *AA_COMPONENTS, "autoattack"), (0.1,), aa_limit=96))


def test_autoattack_is_at_most_each_of_its_components(aa_result) -> None:
    aa = aa_result.accuracy("autoattack", 0.1)
    for name in AA_COMPONENTS:
        assert aa <= aa_result.accuracy(name, 0.1), name
    # APGD-CE runs first on the same points with the same seed: every point it breaks, AutoAttack breaks.
    scored = aa_result.mask("autoattack", 0.1)
    assert not (aa_result.robust("autoattack", 0.1) & ~aa_result.robust("apgd_ce", 0.1))[scored].any()


def test_autoattack_grade_attacks_score_the_first_aa_limit_of_the_drawn_samples(aa_result, digits) -> None:
    n = len(digits[3])
    subset = aa_result.mask("apgd_ce", 0.1)
    assert subset.sum() == 96 and aa_result.mask("fgsm", 0.1).all()
    # The same samples for every suite and seed: the first aa_limit of the evaluated samples, which a trial
    # passes in pclc.samples' stratified draw order (tests/test_samples.py), so a sorted file biases nothing.
    assert torch.equal(subset, suite(("fgsm",), (0.1,), aa_limit=96, seed=7).aa_subset(n))
    assert subset[:96].all() and not subset[96:].any()
    # The worst case is taken where every attack scored: on the subset.
    _, scope = aa_result.worst(0.1)
    assert torch.equal(scope, subset)
    assert aa_result.worst_accuracy(0.1) <= min(aa_result.accuracy(a, 0.1) for a in aa_result.attacks)


def test_autoattack_runs_only_at_aa_eps(digits, model) -> None:
    s = suite(("fgsm", "apgd_ce"), (0.05, 0.1), aa_eps=(0.1,), aa_limit=32)
    result = run_suite(model, digits[2][:64], digits[3][:64], s)
    assert set(result.adv_pred) == {("fgsm", 0.05), ("fgsm", 0.1), ("apgd_ce", 0.1)}
    with pytest.raises(ValueError, match="aa_eps"):
        suite(("apgd_ce",), (0.1,), aa_eps=(0.3,))


def test_reference_attacks_leave_the_global_rng_alone_and_repeat(digits, model) -> None:
    x, y = digits[2][:48], digits[3][:48]
    state = torch.get_rng_state()
    a = run_suite(model, x, y, suite(("apgd_ce", "square"), (0.1,)))
    assert torch.equal(torch.get_rng_state(), state)  # the reference code calls torch.manual_seed
    b = run_suite(model, x, y, suite(("apgd_ce", "square"), (0.1,)))
    for name in ("apgd_ce", "square"):
        assert torch.equal(a.pred(name, 0.1), b.pred(name, 0.1))


def test_reference_flags_are_read_from_its_warnings() -> None:
    import logging

    from pclc.attacks import AA_LOGGER, AAFlags

    flags = AAFlags()
    logger = logging.getLogger(AA_LOGGER)
    with flags.listening():
        logger.warning("there are tensor(3) points with zero gradient! This might lead to unreliable evaluation")
        logger.warning("there are tensor(2, device='cuda:0') points with zero gradient! ...")
        logger.warning("Square Attack has decreased the robust accuracy of 1.56%. This might indicate ...")
        logger.debug("robust accuracy after APGD-CE: 50.00%")
    logger.warning("after listening: not collected")
    assert not hasattr(flags, "zero_gradients")  # CE underflow, not masking: pclc.attacks.zero_gradient_points
    assert flags.square_gain == pytest.approx(0.0156)
    assert len(flags.messages) == 3
