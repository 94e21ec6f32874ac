"""PC, LC and PC+LC against values worked out by hand (numpy, not pclc), plus the safety properties."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from pclc.losses import IGNORED_BY_LOSS, KNOBS, LOSSES, LogitConstraint, PCLCLoss, PCLoss, build_loss


def np_softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def t(rows: list[list[float]]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32)


# --- PC


def test_pc_two_equal_logits_costs_exactly_the_margin() -> None:
    # K = 2, p = (0.5, 0.5): the one false class gives max(0, ξ + 0.5 − 0.5) = ξ, divided by K − 1 = 1.
    assert PCLoss(margin=0.7)(t([[0.0, 0.0]]), torch.tensor([0])).item() == pytest.approx(0.7)


def test_pc_matches_hand_computation() -> None:
    z = np.array([[2.0, 1.0, 0.0], [0.5, -1.0, 3.0]])
    y = np.array([0, 1])
    xi = 0.5
    p = np_softmax(z)
    # row 0: true class 0, false classes 1 and 2; row 1: true class 1, false 0 and 2.
    row0 = max(0, xi + p[0, 1] - p[0, 0]) + max(0, xi + p[0, 2] - p[0, 0])
    row1 = max(0, xi + p[1, 0] - p[1, 1]) + max(0, xi + p[1, 2] - p[1, 1])
    expected = (row0 + row1) / 2 / (3 - 1)
    got = PCLoss(margin=xi)(torch.tensor(z, dtype=torch.float32), torch.tensor(y))
    assert got.item() == pytest.approx(expected, rel=1e-6)
    assert row0 < 2 * xi  # the hinge is active but not trivially at its cap: the case tests something


def test_pc_equals_the_authors_sum_minus_margin_form() -> None:
    rng = np.random.default_rng(0)
    z = rng.normal(size=(16, 7)) * 3
    y = rng.integers(0, 7, size=16)
    xi = 0.995
    p = np_softmax(z)
    # Authors: sum over every class (the true one adds exactly ξ), batch mean, minus ξ, over K − 1.
    hinge = np.maximum(0, xi + p - p[np.arange(16), y][:, None])
    expected = (hinge.sum(axis=1).mean() - xi) / (7 - 1)
    got = PCLoss(margin=xi)(torch.tensor(z, dtype=torch.float32), torch.tensor(y))
    assert got.item() == pytest.approx(expected, rel=1e-5)


def test_pc_is_zero_once_every_false_probability_is_margin_below() -> None:
    xi = 0.9
    z = t([[6.0, 0.0, 0.0], [0.0, 0.0, 6.0]])  # p_true ≈ 0.995, p_false ≈ 0.0025: gap ≈ 0.99 > ξ
    y = torch.tensor([0, 2])
    p = np_softmax(z.numpy())
    assert p[0, 0] - p[0, 1] > xi
    assert PCLoss(margin=xi)(z, y).item() == 0.0
    # …and positive once the gap drops below ξ.
    assert PCLoss(margin=xi)(t([[2.0, 0.0, 0.0]]), torch.tensor([0])).item() > 0.0


def test_pc_gradient_raises_the_true_logit() -> None:
    z = t([[0.3, 1.2, -0.5, 0.8]]).requires_grad_()
    PCLoss()(z, torch.tensor([2])).backward()
    assert z.grad[0, 2] < 0  # gradient descent increases z_y
    assert (z.grad[0, [0, 1, 3]] > 0).all()  # and lowers the false logits


def test_pc_is_a_batch_mean() -> None:
    z = t([[1.0, 0.0, -1.0], [0.0, 2.0, 0.0]])
    y = torch.tensor([0, 1])
    loss = PCLoss(margin=0.8)
    both = loss(z, y).item()
    assert both == pytest.approx((loss(z[:1], y[:1]).item() + loss(z[1:], y[1:]).item()) / 2)


# --- LC


def test_lc_two_classes_is_the_logit_gap() -> None:
    # K = 2: the only false class gets weight 1, so LC = max(0, z_y − z_j).
    assert LogitConstraint()(t([[3.0, 1.0]]), torch.tensor([0])).item() == pytest.approx(2.0)


def test_lc_matches_hand_computation() -> None:
    # z = (3, 1, 0), y = 0: w = softmax(1, 0) = (e, 1)/(e + 1); gaps 2 and 3.
    e = math.e
    expected = e / (e + 1) * 2 + 1 / (e + 1) * 3
    assert LogitConstraint()(t([[3.0, 1.0, 0.0]]), torch.tensor([0])).item() == pytest.approx(expected, rel=1e-6)


def test_lc_weights_only_false_classes_above_the_true_logit_out() -> None:
    # z = (1, 3, 0), y = 0: class 1 is above the true logit (hinge 0), class 2 below (gap 1).
    w2 = 1 / (math.exp(3) + 1)
    assert LogitConstraint()(t([[1.0, 3.0, 0.0]]), torch.tensor([0])).item() == pytest.approx(w2 * 1.0, rel=1e-6)


def test_lc_is_zero_when_the_true_logit_exceeds_no_false_logit() -> None:
    z = t([[0.0, 1.0, 2.0], [-1.0, -1.0, 5.0]])
    assert LogitConstraint()(z, torch.tensor([0, 0])).item() == 0.0


# --- PC + LC


def test_pclc_is_pc_plus_weighted_lc() -> None:
    z = t([[2.0, 0.5, -1.0], [0.0, 1.5, 1.0]])
    y = torch.tensor([0, 1])
    pc = PCLoss(margin=0.9)(z, y).item()
    lc = LogitConstraint()(z, y).item()
    assert lc > 0
    assert PCLCLoss(margin=0.9, lc_weight=0.3)(z, y).item() == pytest.approx(pc + 0.3 * lc, rel=1e-6)
    assert PCLCLoss(margin=0.9, lc_weight=0.0)(z, y).item() == pytest.approx(pc, rel=1e-6)


# --- safety: extreme logits, bf16, class counts, bad arguments

ALL_LOSSES = [PCLoss(), LogitConstraint(), PCLCLoss()]


@pytest.mark.parametrize("loss", ALL_LOSSES, ids=lambda m: type(m).__name__)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_extreme_logits_give_finite_values_and_gradients(loss: nn.Module, dtype: torch.dtype) -> None:
    z = torch.tensor([[1e4, -1e4, 0.0], [-1e4, 1e4, -1e4], [1e4, 1e4, -1e4]], dtype=dtype, requires_grad=True)
    y = torch.tensor([0, 0, 2])
    value = loss(z, y)
    value.backward()
    assert value.dtype == torch.float32
    assert torch.isfinite(value)
    assert z.grad is not None and z.grad.dtype == dtype
    assert torch.isfinite(z.grad.float()).all()


def test_bf16_logits_give_the_float32_value() -> None:
    z = t([[2.0, 0.5, -1.0, 0.25]])  # exactly representable in bf16
    y = torch.tensor([1])
    loss = PCLCLoss()
    assert loss(z.bfloat16(), y).item() == pytest.approx(loss(z, y).item(), rel=1e-6)


@pytest.mark.parametrize("k", [2, 10, 200])
@pytest.mark.parametrize("loss", ALL_LOSSES, ids=lambda m: type(m).__name__)
def test_any_class_count(loss: nn.Module, k: int) -> None:
    g = torch.Generator().manual_seed(k)
    z = torch.randn(8, k, generator=g).mul(3).requires_grad_()
    y = torch.randint(0, k, (8,), generator=g)
    value = loss(z, y)
    value.backward()
    assert value.dim() == 0 and torch.isfinite(value)
    assert torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0


@pytest.mark.parametrize("margin", [0.0, -0.1, 1.5, float("nan")])
def test_margin_outside_zero_one_is_refused(margin: float) -> None:
    with pytest.raises(ValueError, match=r"margin .* \(0, 1\]"):
        PCLoss(margin=margin)
    with pytest.raises(ValueError, match="margin"):
        PCLCLoss(margin=margin)


@pytest.mark.parametrize("lc_weight", [-0.01, float("inf"), float("nan")])
def test_bad_lc_weight_is_refused(lc_weight: float) -> None:
    with pytest.raises(ValueError, match="lc_weight"):
        PCLCLoss(lc_weight=lc_weight)


def test_margin_of_one_is_allowed() -> None:
    assert PCLoss(margin=1.0).margin == 1.0


def test_mismatched_target_is_refused() -> None:
    with pytest.raises(ValueError, match="target"):
        PCLoss()(torch.zeros(4, 3), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="integer"):
        LogitConstraint()(torch.zeros(4, 3), torch.zeros(4))
    with pytest.raises(ValueError, match="logits"):
        PCLoss()(torch.zeros(4), torch.zeros(4, dtype=torch.long))


# --- registry


def test_registry_names_and_builders() -> None:
    assert LOSSES.names() == ["ce", "label_smoothing", "lc", "pc", "pclc"]
    assert isinstance(build_loss("ce", margin=0.9, lc_weight=0.1), nn.CrossEntropyLoss)
    assert isinstance(build_loss("lc", margin=0.9, lc_weight=0.1), LogitConstraint)
    pc = build_loss("pc", margin=0.9, lc_weight=0.1)
    assert isinstance(pc, PCLoss) and pc.margin == 0.9
    pclc = build_loss("pclc", margin=0.9, lc_weight=0.1)
    assert isinstance(pclc, PCLCLoss) and (pclc.margin, pclc.lc_weight) == (0.9, 0.1)


@pytest.mark.parametrize("name", LOSSES.names())
def test_every_loss_names_its_knobs_and_ignores_the_rest(name: str) -> None:
    used = LOSSES.info(name)
    assert set(used) <= set(KNOBS) and IGNORED_BY_LOSS[name] == set(KNOBS) - set(used)
    logits, target = torch.randn(6, 5, generator=torch.Generator().manual_seed(0)), torch.tensor([0, 1, 2, 3, 4, 0])
    knobs = {"margin": 0.9, "lc_weight": 0.1, "smoothing": 0.1}
    base = build_loss(name, **knobs)(logits, target)
    for knob in IGNORED_BY_LOSS[name]:  # a knob the loss ignores changes nothing
        changed = build_loss(name, **{**knobs, knob: {"margin": 0.5, "lc_weight": 0.7, "smoothing": 0.3}[knob]})
        assert torch.equal(changed(logits, target), base)


def test_build_loss_keeps_the_paper_defaults_for_none() -> None:
    pclc = build_loss("pclc", margin=None, lc_weight=None)
    assert (pclc.margin, pclc.lc_weight) == (0.995, 0.05)


def test_build_loss_unknown_name_lists_choices() -> None:
    with pytest.raises(ValueError, match="ce, label_smoothing, lc, pc, pclc"):
        build_loss("focal", margin=0.9, lc_weight=0.1)


def test_build_loss_validates_margin() -> None:
    with pytest.raises(ValueError, match="margin"):
        build_loss("pclc", margin=2.0, lc_weight=0.05)
