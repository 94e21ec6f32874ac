"""The samples a number is about (pclc.samples): every subset a trial scores is a seeded, class-stratified draw
of the test split, nested, the same for every trial, whatever order the file stores its images in."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from pclc.config import make_config
from pclc.data import load_stored
from pclc.experiment import Silent, draw_subsets, prepare, run_trial
from pclc.outcomes import Outcomes
from pclc.samples import DESIGN, HEAD, draw
from tests.test_data import write_idx, write_tiny_imagenet

pytestmark = pytest.mark.timeout(300)


def image_hashes(x: torch.Tensor) -> list[str]:
    """One sha256 per image, of its bytes: the same image wherever it is stored."""
    return [hashlib.sha256(img.contiguous().numpy().tobytes()).hexdigest() for img in x.cpu()]


@pytest.fixture(scope="module")
def digits_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """scikit-learn's real digits as uint8 .npz files: one stored class by class (all 0s, then all 1s, …),
    and a shuffled copy of the same images."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = (bunch.images * 15).astype(np.uint8)  # 0..16 → 0..240, exact in uint8
    y = bunch.target.astype(np.int64)
    folder = tmp_path_factory.mktemp("digits-npz")
    by_class = np.argsort(y, kind="stable")
    shuffled = np.random.default_rng(3).permutation(len(y))
    paths = folder / "sorted.npz", folder / "shuffled.npz"
    np.savez(paths[0], x=x[by_class], y=y[by_class])
    np.savez(paths[1], x=x[shuffled], y=y[shuffled])
    return paths


def subsets(path: Path, **limits: int | None):
    cfg = make_config({"dataset": f"npz:{path}", **limits})
    data = load_stored(cfg.dataset)
    return data, draw_subsets(cfg, data)


LIMITS = {"eval_limit": 120, "aa_limit": 60, "epoch_eval_samples": 30}


def test_a_sorted_file_and_a_shuffled_copy_score_the_same_images(digits_files: tuple[Path, Path]) -> None:
    (sorted_data, a), (shuffled_data, b) = (subsets(p, **LIMITS) for p in digits_files)
    # the same held-out test split, as a set of images, and the same evaluated images in the same order
    assert sorted(image_hashes(sorted_data.x_test)) == sorted(image_hashes(shuffled_data.x_test))
    first = image_hashes(sorted_data.x_test[torch.as_tensor(a.evaluated)])
    second = image_hashes(shuffled_data.x_test[torch.as_tensor(b.evaluated)])
    assert first == second and len(set(first)) > 100
    assert a.labels.tolist() == b.labels.tolist()
    # the training split holds the same images too
    assert sorted(image_hashes(sorted_data.x_train)) == sorted(image_hashes(shuffled_data.x_train))


@pytest.mark.parametrize("limits", [LIMITS, {"eval_limit": 300, "aa_limit": 100, "epoch_eval_samples": 40}])
def test_every_class_is_in_every_subset_in_proportion_on_a_sorted_file(
    digits_files: tuple[Path, Path], limits: dict[str, int]
) -> None:
    data, drawn = subsets(digits_files[0], **limits)
    assert data.y_test.tolist() == sorted(data.y_test.tolist())  # the test split keeps the file's class order
    shares = np.bincount(data.y_test.numpy(), minlength=10) / len(data.y_test)
    for n in (drawn.epoch, drawn.autoattack, len(drawn.evaluated)):
        counts = np.bincount(drawn.labels[:n], minlength=10)
        expected = shares * n
        assert (np.abs(counts - expected) <= 0.5 * expected).all(), (n, counts, expected)
        assert (np.abs(counts - expected) < 1.5).all()  # at most a sample off each class's share
    assert drawn.warnings == []
    assert drawn.coverage() == {
        "evaluated": f"{limits['eval_limit']} samples, 10/10 classes",
        "autoattack": f"{limits['aa_limit']} samples, 10/10 classes",
        "epoch": f"{limits['epoch_eval_samples']} samples, 10/10 classes",
    }


def test_subsets_nest_and_are_the_same_for_every_trial(digits_files: tuple[Path, Path]) -> None:
    path = digits_files[0]
    data, drawn = subsets(path, **LIMITS)
    evaluated = drawn.evaluated.tolist()
    assert len(set(evaluated)) == len(evaluated) == 120
    # per-epoch ⊂ AutoAttack ⊂ evaluated: prefixes of one order
    assert set(evaluated[: drawn.epoch]) <= set(evaluated[: drawn.autoattack]) <= set(evaluated)
    # another trial (seed, loss, limits) draws the same samples: larger limits extend, smaller ones cut
    for other in ({"seed": 7, "loss": "ce"}, {"eval_limit": 200, "aa_limit": 30, "epoch_eval_samples": 60}):
        _, again = subsets(path, **{**LIMITS, **other})
        n = min(len(again.evaluated), len(drawn.evaluated))
        assert again.evaluated[:n].tolist() == evaluated[:n]
    # the draw is not the head of the split, nor in the split's order
    assert evaluated != sorted(evaluated)
    assert drawn.epoch == 30 and drawn.autoattack == 60
    # and the AutoAttack subset of the attack runner is that prefix
    from pclc.attacks import AttackSuite

    mask = AttackSuite(attacks=("fgsm",), eps=(0.1,), aa_limit=60).aa_subset(120)
    assert mask[:60].all() and not mask[60:].any()


def test_limits_below_the_class_count_are_said_once() -> None:
    y = torch.arange(100) // 10  # stored class by class
    x = torch.arange(100, dtype=torch.uint8).reshape(100, 1, 1, 1)
    drawn = draw(x, y, num_classes=10, eval_limit=40, aa_limit=6, epoch_samples=6)
    assert len(drawn.warnings) == 1, drawn.warnings  # one warning for the two subsets of 6
    assert "aa_limit = 6 is smaller than the 10 classes" in drawn.warnings[0]
    assert drawn.covered(6) == 6 and drawn.covered(40) == 10
    # a class too small for a share of one in a subset is named; a class with no test sample too
    y = torch.cat([torch.zeros(95, dtype=torch.int64), torch.ones(5, dtype=torch.int64)])
    drawn = draw(x, y, num_classes=3, eval_limit=4, aa_limit=None, epoch_samples=0)
    assert any("miss class(es) 1" in w for w in drawn.warnings), drawn.warnings
    assert any("no sample of class(es) 2" in w for w in drawn.warnings), drawn.warnings


def test_a_trial_records_the_labels_and_coverage_of_what_it_scored(
    digits_files: tuple[Path, Path], tmp_path: Path
) -> None:
    """Real trials, one per file: the outcomes name the same images with their labels, and metrics.json says
    which samples and classes each subset covered."""
    scored = []
    for i, path in enumerate(digits_files):
        cfg = make_config(
            {
                "dataset": f"npz:{path}",
                "epochs": 1,
                "warmup_epochs": 0,
                "train_limit": 200,
                "eval_limit": 40,
                "aa_limit": 20,
                "epoch_eval_samples": 10,
                "attacks": ["fgsm", "apgd_ce"],
                "eps": [0.1],
                "headline_eps": 0.1,
                "aa_steps": 2,
                "threads": 1,
                "out_dir": str(tmp_path / f"run{i}"),
            }
        )
        prepared = prepare(cfg)
        run_trial(cfg, Silent(), prepared=prepared)
        outcomes = Outcomes.from_json((tmp_path / f"run{i}" / "outcomes.json").read_text())
        assert outcomes.samples == DESIGN and outcomes.labels is not None
        assert outcomes.labels.tolist() == prepared.data.y_test[torch.as_tensor(outcomes.indices)].tolist()
        assert sorted(set(outcomes.labels.tolist())) == list(range(10))
        payload = json.loads((tmp_path / f"run{i}" / "metrics.json").read_text())
        assert payload["samples"] == {
            "design": DESIGN,
            "evaluated": "40 samples, 10/10 classes",
            "autoattack": "20 samples, 10/10 classes",
            "epoch": "10 samples, 10/10 classes",  # 10 samples: one of each class
        }
        per_class = outcomes.per_class("clean_acc")
        assert sum(n for _, n in per_class.values()) == 40 and set(per_class) == set(range(10))
        scored.append(image_hashes(prepared.data.x_test[torch.as_tensor(outcomes.indices)]))
    assert scored[0] == scored[1]


def test_old_outcomes_read_as_the_head_of_the_split() -> None:
    new = Outcomes(
        dataset="d", indices=[4, 9], scored={"clean_acc": [1, 1]}, correct={"clean_acc": [1, 0]}, labels=[2, 3]
    )
    payload = new.to_dict()
    assert payload["version"] == 2 and payload["labels"] == [2, 3] and payload["samples"] == DESIGN
    old = {k: v for k, v in payload.items() if k not in ("labels", "samples")} | {"version": 1}
    read = Outcomes.from_dict(old)
    assert read.samples == HEAD and read.labels is None and read.per_class("clean_acc") == {}
    assert Outcomes.from_json(new.to_json()).per_class("clean_acc") == {2: (1, 1), 3: (0, 1)}


def test_torchvision_files_draw_the_same_images_whatever_their_order(tmp_path: Path) -> None:
    """MNIST's idx files, written class-sorted and shuffled: the same evaluated images, in the same order."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(200, 28, 28), dtype=np.uint8)
    labels = np.arange(200) % 10
    drawn = []
    for name, order in (("sorted", np.argsort(labels, kind="stable")), ("shuffled", rng.permutation(200))):
        raw = tmp_path / name / "MNIST" / "raw"
        for split in ("train", "t10k"):
            write_idx(raw / f"{split}-images-idx3-ubyte", images[order])
            write_idx(raw / f"{split}-labels-idx1-ubyte", labels[order])
        data = load_stored("mnist", data_root=tmp_path / name)
        d = draw(data.x_test, data.y_test, num_classes=10, eval_limit=50, aa_limit=20, epoch_samples=10)
        assert sorted(np.bincount(d.labels, minlength=10).tolist()) == [5] * 10
        drawn.append(image_hashes(data.x_test[torch.as_tensor(d.evaluated)]))
    assert drawn[0] == drawn[1]


def test_tiny_imagenet_draws_the_same_images_whatever_the_annotation_order(tmp_path: Path) -> None:
    write_tiny_imagenet(tmp_path, per_class=2, val_per_class=4)
    annotations = tmp_path / "tiny-imagenet-200" / "val" / "val_annotations.txt"
    drawn = []
    for lines in (annotations.read_text().splitlines(), annotations.read_text().splitlines()[::-1]):
        annotations.write_text("\n".join(lines) + "\n")
        data = load_stored("tiny_imagenet", data_root=tmp_path)
        d = draw(data.x_test, data.y_test, num_classes=3, eval_limit=6, aa_limit=3, epoch_samples=3)
        assert sorted(d.labels[:3].tolist()) == [0, 1, 2]
        drawn.append(image_hashes(data.x_test[torch.as_tensor(d.evaluated)]))
    assert drawn[0] == drawn[1]
