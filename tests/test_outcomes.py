"""pclc.outcomes: the per-sample artifact's encoding (bit order, odd lengths, versions) and its accuracies."""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest
import torch

from pclc import metrics as M
from pclc.outcomes import VERSION, Outcomes, OutcomesError


def _outcomes(n: int, *, seed: int = 0) -> Outcomes:
    rng = np.random.default_rng(seed)
    subset = rng.random(n) < 0.4  # an AutoAttack-like subset: fewer samples scored than evaluated
    subset[0] = True  # never empty (an accuracy over no sample is NaN, which equals nothing)
    everyone = np.ones(n, dtype=bool)
    worst = M.robust_key(M.WORST, 0.1)
    return Outcomes(
        dataset="digits",
        indices=np.arange(100, 100 + n),
        scored={M.CLEAN_ACC: everyone, M.robust_key("fgsm", 0.1): everyone, worst: subset},
        correct={
            M.CLEAN_ACC: rng.random(n) < 0.9,
            M.robust_key("fgsm", 0.1): rng.random(n) < 0.5,
            worst: rng.random(n) < 0.3,
        },
        headlines={M.ROBUST_ACC: worst},
    )


def test_bits_are_packed_first_sample_in_the_high_bit_padded_with_zeros() -> None:
    flags = [True, False, True, True, False, False, False, False, True, True]  # 10 samples: 2 bytes
    o = Outcomes(dataset="digits", indices=range(10), scored={"clean_acc": [True] * 10}, correct={"clean_acc": flags})
    packed = base64.b64decode(o.to_dict()["outcomes"]["clean_acc"]["correct"])
    assert packed == bytes([0b10110000, 0b11000000])
    assert base64.b64decode(o.to_dict()["outcomes"]["clean_acc"]["scored"]) == bytes([0xFF, 0b11000000])


@pytest.mark.parametrize("n", [1, 7, 8, 9, 255, 256, 257])
def test_round_trip_keeps_every_flag_index_and_accuracy(n: int) -> None:
    o = _outcomes(n, seed=n)
    back = Outcomes.from_json(o.to_json())
    assert back.dataset == "digits" and back.indices.tolist() == list(range(100, 100 + n))
    assert back.keys == o.keys and back.headlines == o.headlines
    for key in o.keys:
        assert back.scored[key].dtype == bool and len(back.scored[key]) == n
        assert np.array_equal(back.scored[key], o.scored[key]) and np.array_equal(back.correct[key], o.correct[key])
    assert back.metrics() == o.metrics()
    assert back.to_json() == o.to_json()


def test_accuracy_is_the_float32_mean_over_the_scored_samples_as_logged() -> None:
    o = _outcomes(97)
    worst = M.robust_key(M.WORST, 0.1)
    by_hand = torch.from_numpy(o.correct[worst][o.scored[worst]]).float().mean().item()
    assert o.accuracy(worst) == by_hand == o.accuracy(M.ROBUST_ACC)  # the headline names its key
    assert o.accuracy(worst) != float(o.correct[worst].mean())  # over the scored samples, not all of them
    assert set(o.metrics()) == {*o.keys, M.ROBUST_ACC}
    with pytest.raises(KeyError, match="robust_acc/pgd_ce/eps=0.1"):
        o.accuracy(M.robust_key("pgd_ce", 0.1))


def test_correct_bits_outside_the_scored_samples_are_dropped() -> None:
    o = Outcomes(dataset="d", indices=range(4), scored={"k": [1, 1, 0, 0]}, correct={"k": [1, 0, 1, 0]})
    assert o.correct["k"].tolist() == [True, False, False, False] and o.accuracy("k") == 0.5


def test_a_small_artifact_for_a_quickstart_trial() -> None:
    n, subset = 256, np.arange(256) < 96
    keys = [M.CLEAN_ACC] + [
        M.robust_key(a, e)
        for e in (0.05, 0.1, 0.2)
        for a in ("fgsm", "pgd_ce", "pgd_cw", "mim", "transfer", M.WORST, M.WORST_CLASSIC)
    ]
    keys += [M.robust_key("autoattack", 0.1), M.robust_key(M.WORST_AA, 0.1)]
    o = Outcomes(
        dataset="digits",
        indices=range(n),
        scored={k: subset if "eps=0.1" in k else np.ones(n, bool) for k in keys},
        correct={k: np.ones(n, bool) for k in keys},
    )
    assert len(keys) == 24 and len(o.to_json()) < 5000  # bits, not floats: a few kB


@pytest.mark.parametrize("version", [None, 0, VERSION + 1, "1"])
def test_an_unknown_version_is_refused_naming_it(version: object) -> None:
    payload = _outcomes(9).to_dict()
    payload["version"] = version
    with pytest.raises(OutcomesError, match=rf"version {version!r} is not one this pclc reads \(versions \(1, 2\)\)"):
        Outcomes.from_dict(payload)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda p: p["outcomes"]["clean_acc"].update(correct=p["outcomes"]["clean_acc"]["correct"][:-4]), "bytes"),
        (lambda p: p.update(indices=p["indices"][:-1]), "2 bytes of flags for 8 samples"),
        (lambda p: p["outcomes"]["clean_acc"].update(correct=base64.b64encode(bytes([0, 0x40])).decode()), "padding"),
        (lambda p: p["outcomes"]["clean_acc"].update(scored="not base64!"), "not base64"),
        (lambda p: p["outcomes"]["clean_acc"].pop("scored"), "malformed outcomes payload"),
        (lambda p: p.update(headlines={M.ROBUST_ACC: "robust_acc/nothing/eps=0.1"}), "headlines"),
    ],
)
def test_a_damaged_payload_is_refused_with_what_is_wrong(damage, message: str) -> None:
    payload = json.loads(_outcomes(9).to_json())
    damage(payload)
    with pytest.raises(OutcomesError, match=message):
        Outcomes.from_dict(payload)


def test_not_json_or_not_an_object_is_refused() -> None:
    with pytest.raises(OutcomesError, match="not JSON"):
        Outcomes.from_json("{")
    with pytest.raises(OutcomesError, match="JSON object, not list"):
        Outcomes.from_json("[]")


def test_at_names_the_dataset_indices_and_checks_their_count() -> None:
    o = _outcomes(5).at(dataset="mnist", indices=[7, 3, 9, 1, 0])
    assert o.dataset == "mnist" and o.indices.tolist() == [7, 3, 9, 1, 0]
    with pytest.raises(OutcomesError, match="for 4 samples"):
        o.at(dataset="mnist", indices=range(4))
