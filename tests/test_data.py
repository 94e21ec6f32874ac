"""Data loading through the real code: bundled digits, tiny files in each torchvision on-disk
format (idx, CIFAR pickles, SVHN .mat), and user .npz files, valid and malformed."""

from __future__ import annotations

import pickle
import struct
import warnings
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch

from pclc.data import (
    DATASETS,
    SPLIT_SEED,
    DataError,
    Dataset,
    batches,
    load_dataset,
    load_npz,
    load_stored,
    pixels,
)

TORCHVISION_SETS = ["mnist", "fashion_mnist", "kmnist", "cifar10", "cifar100", "svhn"]


# --- digits


@pytest.fixture(scope="module")
def digits() -> Dataset:
    return load_dataset("digits")


def test_digits_shapes_and_range(digits: Dataset) -> None:
    assert digits.input_shape == (1, 8, 8)
    assert digits.num_classes == 10
    assert len(digits.x_train) + len(digits.x_test) == 1797
    assert len(digits.x_test) == pytest.approx(0.2 * 1797, abs=10)
    for x, y in [(digits.x_train, digits.y_train), (digits.x_test, digits.y_test)]:
        assert x.dtype == torch.float32 and y.dtype == torch.int64
        assert x.min() == 0.0 and x.max() == 1.0  # raw values 0..16, divided by 16
    # no image is in both splits
    train = {tuple(r) for r in digits.x_train.flatten(1).tolist()}
    assert not any(tuple(r) in train for r in digits.x_test.flatten(1).tolist())


def test_digits_split_is_stratified(digits: Dataset) -> None:
    train_counts = torch.bincount(digits.y_train, minlength=10).float()
    test_counts = torch.bincount(digits.y_test, minlength=10).float()
    share = test_counts / (train_counts + test_counts)
    assert ((share - 0.2).abs() < 0.01).all(), share


def test_digits_split_is_fixed_whatever_the_trial_seed(digits: Dataset) -> None:
    other = load_dataset("digits", seed=123)
    assert torch.equal(digits.x_test, other.x_test) and torch.equal(digits.y_test, other.y_test)
    assert torch.equal(digits.x_train, other.x_train)


def test_digits28_is_digits_at_28x28(digits: Dataset) -> None:
    big = load_dataset("digits28")
    assert big.input_shape == (1, 28, 28) and big.num_classes == 10
    assert load_stored("digits28").x_train.dtype == torch.float32  # stored as digits is
    assert torch.equal(big.y_train, digits.y_train) and torch.equal(big.y_test, digits.y_test)
    for x28, x8 in [(big.x_train, digits.x_train), (big.x_test, digits.x_test)]:
        assert len(x28) == len(x8)
        assert x28.min() >= 0.0 and x28.max() <= 1.0
        # same images, same order: pooled back to 8×8, an image lies nearest its own original (a few
        # of digits' near-duplicates aside)
        pooled = torch.nn.functional.adaptive_avg_pool2d(x28, 8).flatten(1)
        nearest = torch.cdist(pooled, x8.flatten(1)).argmin(dim=1)
        assert (nearest == torch.arange(len(x8))).float().mean() > 0.95


def test_to_and_subset_train(digits: Dataset) -> None:
    moved = digits.to("cpu")
    assert moved.x_train.device.type == "cpu" and moved.num_classes == 10
    a, b, c = digits.subset_train(100, seed=1), digits.subset_train(100, seed=1), digits.subset_train(100, seed=2)
    assert len(a.x_train) == 100 and torch.equal(a.x_train, b.x_train) and not torch.equal(a.x_train, c.x_train)
    assert torch.equal(a.x_test, digits.x_test)
    assert digits.subset_train(10**6, seed=0) is digits


# --- batches


def test_batches_cover_every_sample_once() -> None:
    x = torch.arange(10).float().view(10, 1, 1, 1)
    y = torch.arange(10)
    plain = list(batches(x, y, 4, shuffle=False))
    assert [len(xb) for xb, _ in plain] == [4, 4, 2]
    assert torch.equal(torch.cat([yb for _, yb in plain]), y)
    shuffled = list(batches(x, y, 4, shuffle=True, generator=torch.Generator().manual_seed(0)))
    ys = torch.cat([yb for _, yb in shuffled])
    assert sorted(ys.tolist()) == list(range(10)) and not torch.equal(ys, y)
    assert all(torch.equal(xb.flatten().long(), yb) for xb, yb in shuffled)  # pairs stay together
    again = torch.cat([yb for _, yb in batches(x, y, 4, shuffle=True, generator=torch.Generator().manual_seed(0))])
    assert torch.equal(ys, again)


def test_batches_refuse_bad_arguments() -> None:
    with pytest.raises(ValueError, match="batch_size"):
        next(batches(torch.zeros(3, 1, 1, 1), torch.zeros(3), 0, shuffle=False))
    with pytest.raises(ValueError, match="length"):
        next(batches(torch.zeros(3, 1, 1, 1), torch.zeros(2), 2, shuffle=False))


# --- torchvision sets: tiny files in the real on-disk formats

MNIST_FOLDERS = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST", "kmnist": "KMNIST"}


def write_idx(path: Path, array: np.ndarray) -> None:
    """The idx format: magic (0, 0, type 0x08 = uint8, ndim), big-endian int32 dims, raw bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


@pytest.mark.parametrize("name", list(MNIST_FOLDERS))
def test_mnist_family_reads_raw_idx_files(tmp_path: Path, name: str) -> None:
    rng = np.random.default_rng(0)
    raw = tmp_path / MNIST_FOLDERS[name] / "raw"
    images = {s: rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8) for s, n in [("train", 6), ("t10k", 4)]}
    labels = {"train": np.array([0, 1, 2, 9, 3, 3]), "t10k": np.array([9, 8, 7, 0])}
    for split in ("train", "t10k"):
        write_idx(raw / f"{split}-images-idx3-ubyte", images[split])
        write_idx(raw / f"{split}-labels-idx1-ubyte", labels[split])

    data = load_dataset(name, data_root=tmp_path)
    assert data.name == name and data.num_classes == 10 and data.input_shape == (1, 28, 28)
    assert torch.equal(data.x_train, torch.from_numpy(images["train"]).float().unsqueeze(1) / 255)
    assert torch.equal(data.x_test, torch.from_numpy(images["t10k"]).float().unsqueeze(1) / 255)
    assert data.y_train.tolist() == labels["train"].tolist() and data.y_test.dtype == torch.int64
    assert data.y_test.tolist() == labels["t10k"].tolist()


def write_pickle(path: Path, obj: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(obj, protocol=2))


def cifar_rows(n: int, seed: int) -> np.ndarray:
    """n images as CIFAR stores them: 3072 bytes each, the R plane, then G, then B, row-major."""
    return np.random.default_rng(seed).integers(0, 256, size=(n, 3072), dtype=np.uint8)


def test_cifar10_reads_python_pickle_batches(tmp_path: Path) -> None:
    # torchvision checks these files' MD5 against the published archive, which tiny files cannot
    # match: pclc warns and parses them with torchvision's own reader, the check left out.
    folder = tmp_path / "cifar-10-batches-py"
    train_rows = [cifar_rows(2, seed=i) for i in range(1, 6)]
    for i, rows in enumerate(train_rows, start=1):
        write_pickle(folder / f"data_batch_{i}", {"data": rows, "labels": [i, i - 1], "batch_label": f"b{i}"})
    test_rows = cifar_rows(3, seed=9)
    write_pickle(folder / "test_batch", {"data": test_rows, "labels": [7, 8, 9]})
    write_pickle(folder / "batches.meta", {"label_names": [f"c{i}" for i in range(10)]})

    with pytest.warns(UserWarning, match="checksums"):
        data = load_dataset("cifar10", data_root=tmp_path)
    assert data.num_classes == 10 and data.input_shape == (3, 32, 32)
    expected = np.concatenate(train_rows).reshape(10, 3, 32, 32) / 255.0
    assert torch.allclose(data.x_train, torch.from_numpy(expected).float())
    assert data.x_train[3, 1, 2, 5].item() == pytest.approx(train_rows[1][1, 1024 + 2 * 32 + 5] / 255)
    assert data.y_train.tolist() == [1, 0, 2, 1, 3, 2, 4, 3, 5, 4]
    assert data.y_test.tolist() == [7, 8, 9] and len(data.x_test) == 3


def test_cifar100_reads_fine_labels(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-100-python"
    train_rows, test_rows = cifar_rows(4, seed=1), cifar_rows(2, seed=2)
    write_pickle(folder / "train", {"data": train_rows, "fine_labels": [99, 0, 50, 7], "coarse_labels": [1, 2, 3, 4]})
    write_pickle(folder / "test", {"data": test_rows, "fine_labels": [3, 98], "coarse_labels": [0, 0]})
    write_pickle(folder / "meta", {"fine_label_names": [f"f{i}" for i in range(100)]})

    with pytest.warns(UserWarning, match="checksums"):
        data = load_dataset("cifar100", data_root=tmp_path)
    assert data.num_classes == 100
    assert data.y_train.tolist() == [99, 0, 50, 7] and data.y_test.tolist() == [3, 98]
    assert torch.allclose(data.x_test, torch.from_numpy(test_rows.reshape(2, 3, 32, 32) / 255.0).float())


def test_svhn_reads_mat_files_and_maps_label_10_to_0(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    mats = {}
    for split, labels in [("train", [10, 1, 5]), ("test", [2, 10])]:
        x = rng.integers(0, 256, size=(32, 32, 3, len(labels)), dtype=np.uint8)  # H×W×C×N, as SVHN ships
        scipy.io.savemat(tmp_path / f"{split}_32x32.mat", {"X": x, "y": np.array(labels, np.uint8)[:, None]})
        mats[split] = x

    with pytest.warns(UserWarning, match="checksums"):
        data = load_dataset("svhn", data_root=tmp_path)
    assert data.num_classes == 10 and data.input_shape == (3, 32, 32)
    assert data.y_train.tolist() == [0, 1, 5] and data.y_test.tolist() == [2, 0]
    expected = torch.from_numpy(mats["train"].transpose(3, 2, 0, 1) / 255.0).float()  # → N×C×H×W
    assert torch.allclose(data.x_train, expected)
    assert data.x_train[2, 1, 4, 7].item() == pytest.approx(mats["train"][4, 7, 1, 2] / 255)


def write_torchvision(name: str, parent: Path) -> int:
    """Tiny files of torchvision set `name` in its on-disk format under `parent` (the folder torchvision reads,
    e.g. parent/MNIST/raw/…, parent/cifar-10-batches-py/…, parent/train_32x32.mat); returns the training size."""
    rng = np.random.default_rng(11)
    if name in MNIST_FOLDERS:
        raw = parent / MNIST_FOLDERS[name] / "raw"
        for split, n in (("train", 3), ("t10k", 2)):
            write_idx(raw / f"{split}-images-idx3-ubyte", rng.integers(0, 256, size=(n, 28, 28)))
            write_idx(raw / f"{split}-labels-idx1-ubyte", np.arange(n))
        return 3
    if name == "cifar10":
        folder = parent / "cifar-10-batches-py"
        for i in range(1, 6):
            write_pickle(folder / f"data_batch_{i}", {"data": cifar_rows(1, seed=i), "labels": [i]})
        write_pickle(folder / "test_batch", {"data": cifar_rows(2, seed=9), "labels": [7, 8]})
        write_pickle(folder / "batches.meta", {"label_names": [f"c{i}" for i in range(10)]})
        return 5
    if name == "cifar100":
        folder = parent / "cifar-100-python"
        write_pickle(folder / "train", {"data": cifar_rows(4, seed=1), "fine_labels": [9, 0, 5, 7]})
        write_pickle(folder / "test", {"data": cifar_rows(2, seed=2), "fine_labels": [3, 98]})
        write_pickle(folder / "meta", {"fine_label_names": [f"f{i}" for i in range(100)]})
        return 4
    assert name == "svhn"
    parent.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", 3), ("test", 2)):
        x = rng.integers(0, 256, size=(32, 32, 3, n), dtype=np.uint8)
        scipy.io.savemat(parent / f"{split}_32x32.mat", {"X": x, "y": np.arange(1, n + 1, dtype=np.uint8)[:, None]})
    return 3


# data_root as each set's own folder (what a user points at after unpacking), besides the folder above it
OWN_FOLDERS = {
    **{name: [folder, f"{folder}/raw"] for name, folder in MNIST_FOLDERS.items()},
    "cifar10": ["cifar-10-batches-py"],
    "cifar100": ["cifar-100-python"],
    "svhn": [],  # its .mat files sit in the folder torchvision reads: it has no folder of its own
}


@pytest.mark.parametrize("name", TORCHVISION_SETS)
def test_data_root_may_be_the_sets_own_folder_or_the_one_above(tmp_path: Path, name: str) -> None:
    parent = tmp_path / "data"
    n_train = write_torchvision(name, parent)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tiny CIFAR / SVHN files cannot match torchvision's checksums
        above = load_dataset(name, data_root=parent)
        assert len(above.x_train) == n_train
        for own in OWN_FOLDERS[name]:
            inside = load_dataset(name, data_root=parent / own)
            assert torch.equal(inside.x_train, above.x_train) and torch.equal(inside.y_test, above.y_test), own
    # a folder of the set's name that does not hold it is not taken for it: the error names it
    if OWN_FOLDERS[name]:
        empty = tmp_path / "elsewhere" / OWN_FOLDERS[name][0]
        empty.mkdir(parents=True)
        with pytest.raises(DataError, match="download=true") as err:
            load_dataset(name, data_root=empty)
        assert str(empty.parent) in str(err.value) and f"{OWN_FOLDERS[name][0].split('/')[0]}/ itself" in str(err.value)


@pytest.mark.parametrize("name", TORCHVISION_SETS)
def test_missing_files_without_download_say_what_to_do(tmp_path: Path, name: str) -> None:
    with pytest.raises(DataError, match="download=true") as err:
        load_dataset(name, data_root=tmp_path, download=False)
    assert str(tmp_path) in str(err.value)


@pytest.mark.parametrize("name", TORCHVISION_SETS)
def test_torchvision_sets_need_a_data_root(name: str) -> None:
    with pytest.raises(DataError, match="data_root"):
        load_dataset(name)


def test_damaged_file_is_a_data_error(tmp_path: Path) -> None:
    raw = tmp_path / "MNIST" / "raw"
    for split in ("train", "t10k"):
        write_idx(raw / f"{split}-images-idx3-ubyte", np.zeros((2, 28, 28)))
        write_idx(raw / f"{split}-labels-idx1-ubyte", np.zeros(2))
    (raw / "train-images-idx3-ubyte").write_bytes(b"\x00\x00\x08\x07garbage")  # 7 dimensions: invalid
    with pytest.raises(DataError, match="could not read dataset 'mnist'"):
        load_dataset("mnist", data_root=tmp_path)


def test_unknown_dataset_lists_choices_and_npz() -> None:
    with pytest.raises(DataError, match="digits.*npz:"):
        load_dataset("imagenet")
    assert set(DATASETS.names()) == {"digits", "digits28", "tiny_imagenet", *TORCHVISION_SETS}


# --- npz files


def npz(tmp_path: Path, **arrays: np.ndarray) -> Path:
    path = tmp_path / "data.npz"
    np.savez(path, **arrays)
    return path


LABELS = np.arange(20) % 4  # 4 classes, 5 each


@pytest.mark.parametrize(
    ("layout", "shape"),
    [("NHW", (20, 6, 5)), ("NHWC", (20, 6, 5, 3)), ("NCHW", (20, 3, 6, 5))],
)
@pytest.mark.parametrize("dtype", ["uint8", "float32"])
def test_npz_layouts_and_dtypes_load(tmp_path: Path, layout: str, shape: tuple[int, ...], dtype: str) -> None:
    rng = np.random.default_rng(0)
    raw = rng.integers(0, 256, size=shape, dtype=np.uint8)
    x = raw if dtype == "uint8" else (raw / 255.0).astype(np.float32)
    path = npz(tmp_path, x=x, y=LABELS)
    data = load_dataset(f"npz:{path}")
    channels = 1 if layout == "NHW" else 3
    assert data.input_shape == (channels, 6, 5) and data.num_classes == 4
    assert len(data.x_train) == 16 and len(data.x_test) == 4  # one of each class held out
    assert sorted(data.y_test.tolist()) == [0, 1, 2, 3]
    as_nchw = raw[:, None] if layout == "NHW" else raw.transpose(0, 3, 1, 2) if layout == "NHWC" else raw
    expected = torch.from_numpy(as_nchw / 255.0).float().flatten(1)
    # Every loaded image is one of the file's images (pixels in place), with its label, each once.
    loaded = torch.cat([data.x_train, data.x_test]).flatten(1)
    labels = torch.cat([data.y_train, data.y_test])
    found = [int(torch.cdist(img[None], expected).argmin()) for img in loaded]
    assert sorted(found) == list(range(20))
    assert torch.allclose(loaded, expected[found], atol=1e-6)
    assert labels.tolist() == LABELS[found].tolist()
    assert data.x_train.min() >= 0 and data.x_train.max() <= 1


def test_npz_split_is_fixed(tmp_path: Path) -> None:
    path = npz(tmp_path, x=np.random.default_rng(1).random((20, 4, 4)), y=LABELS)
    a, b = load_npz(path), load_dataset(f"npz:{path}", seed=5)
    assert torch.equal(a.x_test, b.x_test) and SPLIT_SEED == 20210202


def test_npz_with_its_own_test_split(tmp_path: Path) -> None:
    path = npz(
        tmp_path,
        x=np.zeros((6, 8, 8), np.uint8),
        y=np.array([0, 1, 2, 0, 1, 2]),
        x_test=np.full((2, 8, 8), 255, np.uint8),
        y_test=np.array([[2], [1]]),  # N×1 labels are accepted too
    )
    data = load_npz(path)
    assert len(data.x_train) == 6 and len(data.x_test) == 2
    assert data.x_test.min() == 1.0 and data.y_test.tolist() == [2, 1]
    assert data.num_classes == 3


GOOD_X = np.zeros((20, 8, 8), np.uint8)


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"y": LABELS}, "has no x array"),
        ({"x": GOOD_X}, "has no y array"),
        ({"x": GOOD_X, "y": LABELS, "x_test": GOOD_X}, "only one of x_test and y_test"),
        ({"x": np.zeros((20, 64), np.uint8), "y": LABELS}, r"shape \(20, 64\); expected N×H×W"),
        ({"x": np.zeros((20, 3, 8, 8, 1), np.uint8), "y": LABELS}, "expected N×H×W"),
        ({"x": np.zeros((20, 8, 8, 8), np.uint8), "y": LABELS}, "cannot tell the channel axis"),
        ({"x": GOOD_X, "y": LABELS[:19]}, "19 labels for 20 images"),
        ({"x": GOOD_X, "y": np.zeros((20, 2), np.int64)}, "one label per sample"),
        ({"x": GOOD_X, "y": LABELS + 0.5}, "non-integer labels"),
        ({"x": GOOD_X, "y": np.array(["a"] * 20)}, "expected integer class indices"),
        ({"x": GOOD_X, "y": LABELS - 1}, "negative labels"),
        ({"x": np.full((20, 8, 8), 2.0), "y": LABELS}, r"outside \[0, 1\]"),
        ({"x": np.full((20, 8, 8), -0.1), "y": LABELS}, r"outside \[0, 1\]"),
        ({"x": np.full((20, 8, 8), np.nan), "y": LABELS}, "NaN or inf"),
        ({"x": np.full((20, 8, 8), np.inf), "y": LABELS}, "NaN or inf"),
        ({"x": np.zeros((20, 8, 8), np.int32), "y": LABELS}, "dtype int32; expected uint8"),
        ({"x": np.zeros((0, 8, 8), np.uint8), "y": np.zeros(0, np.int64)}, "no samples"),
        ({"x": GOOD_X, "y": np.zeros(20, np.int64)}, "single class"),
        ({"x": GOOD_X[:2], "y": np.array([0, 1])}, "too few samples per class"),
        ({"x": GOOD_X, "y": LABELS, "x_test": np.zeros((2, 9, 9), np.uint8), "y_test": [0, 1]}, "differ from x"),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_malformed_npz_names_the_problem(tmp_path: Path, arrays: dict[str, np.ndarray], message: str) -> None:
    path = npz(tmp_path, **arrays)
    with pytest.raises(DataError, match=message) as err:
        load_dataset(f"npz:{path}")
    assert str(path) in str(err.value)


def test_npz_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        load_dataset(f"npz:{tmp_path / 'nope.npz'}")
    with pytest.raises(DataError, match="names no file"):
        load_dataset("npz:")


def test_npz_not_an_archive(tmp_path: Path) -> None:
    path = tmp_path / "text.npz"
    path.write_text("x,y\n1,2\n")
    with pytest.raises(DataError, match="not a readable .npz archive"):
        load_npz(path)


def test_npz_truncated(tmp_path: Path) -> None:
    good = npz(tmp_path, x=np.random.default_rng(0).integers(0, 256, (20, 8, 8), dtype=np.uint8), y=LABELS)
    cut = tmp_path / "cut.npz"
    cut.write_bytes(good.read_bytes()[:300])
    with pytest.raises(DataError, match="not a readable .npz archive|cannot read its arrays"):
        load_npz(cut)


def test_npy_instead_of_npz(tmp_path: Path) -> None:
    path = tmp_path / "x.npy"
    np.save(path, GOOD_X)
    with pytest.raises(DataError, match="single .npy array"):
        load_npz(path)


def test_npz_object_array_is_refused(tmp_path: Path) -> None:
    path = npz(tmp_path, x=GOOD_X, y=np.array([{"label": 1}] * 20, dtype=object))
    with pytest.raises(DataError, match="cannot read its arrays"):
        load_npz(path)


# --- images kept as stored: uint8 in the object store and the cache, float pixels per batch


def test_8bit_sources_are_kept_uint8_and_batches_make_the_float_pixels(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    images = rng.integers(0, 256, size=(6, 28, 28), dtype=np.uint8)
    raw = tmp_path / "MNIST" / "raw"
    for split in ("train", "t10k"):
        write_idx(raw / f"{split}-images-idx3-ubyte", images)
        write_idx(raw / f"{split}-labels-idx1-ubyte", np.arange(6) % 3)
    stored = load_stored("mnist", data_root=tmp_path)
    assert stored.x_train.dtype == torch.uint8 and torch.equal(stored.x_train[:, 0], torch.from_numpy(images))
    as_float = load_dataset("mnist", data_root=tmp_path)
    assert as_float.x_train.dtype == torch.float32 and torch.equal(stored.as_float().x_train, as_float.x_train)
    # batches cut from the uint8 tensor are exactly the float ones, shuffled or not
    for shuffle in (False, True):
        a, b = (
            list(batches(d.x_train, d.y_train, 4, shuffle=shuffle, generator=torch.Generator().manual_seed(1)))
            for d in (stored, as_float)
        )
        assert len(a) == len(b) == 2
        for (xa, ya), (xb, yb) in zip(a, b):
            assert xa.dtype == torch.float32 and torch.equal(xa, xb) and torch.equal(ya, yb)
    assert load_stored("digits").x_train.dtype == torch.float32  # values k/16: kept float at the source


def test_pixels_equal_torchvision_to_tensor_for_every_byte() -> None:
    from PIL import Image
    from torchvision.transforms.functional import to_tensor

    every = np.arange(256, dtype=np.uint8).reshape(16, 16)
    rgb = np.stack([every, every[::-1], every.T], axis=-1)
    expected = to_tensor(Image.fromarray(rgb))  # what a torchvision pipeline feeds a model
    stored = torch.from_numpy(rgb).permute(2, 0, 1).unsqueeze(0).contiguous()
    assert torch.equal(pixels(stored)[0], expected)
    same = torch.rand(2, 1, 3, 3)
    assert pixels(same) is same  # float images pass through untouched


# --- Tiny ImageNet: the official folder layout with real JPEG files

TINY_WNIDS = ["n01443537", "n01629819", "n01641577"]


def write_tiny_imagenet(root: Path, per_class: int = 4, val_per_class: int = 2) -> None:
    """The layout of tiny-imagenet-200.zip, unpacked: wnids.txt, train/<wnid>/images, val/images + annotations."""
    from PIL import Image

    base = root / "tiny-imagenet-200"
    rng = np.random.default_rng(7)
    (base / "val" / "images").mkdir(parents=True)
    (base / "wnids.txt").write_text("\n".join(TINY_WNIDS) + "\n")
    annotations = []
    for k, wnid in enumerate(TINY_WNIDS):
        folder = base / "train" / wnid / "images"
        folder.mkdir(parents=True)
        (base / "train" / wnid / f"{wnid}_boxes.txt").write_text("")
        for i in range(per_class):
            array = rng.integers(0, 256, size=(64, 64, 3), dtype=np.uint8)
            image = Image.fromarray(array) if i else Image.fromarray(array[..., 0], mode="L")  # some are grayscale
            image.save(folder / f"{wnid}_{i}.JPEG", format="JPEG")
        for i in range(val_per_class):
            name = f"val_{k * val_per_class + i}.JPEG"
            Image.fromarray(rng.integers(0, 256, size=(64, 64, 3), dtype=np.uint8)).save(base / "val" / "images" / name)
            annotations.append(f"{name}\t{wnid}\t0\t0\t63\t63")
    (base / "val" / "val_annotations.txt").write_text("\n".join(annotations) + "\n")


def test_tiny_imagenet_reads_the_official_layout(tmp_path: Path) -> None:
    from PIL import Image

    write_tiny_imagenet(tmp_path)
    stored = load_stored("tiny_imagenet", data_root=tmp_path)
    assert stored.name == "tiny_imagenet" and stored.num_classes == 3 and stored.input_shape == (3, 64, 64)
    assert stored.x_train.dtype == torch.uint8 and len(stored.x_train) == 12 and len(stored.x_test) == 6
    assert stored.y_train.tolist() == [0] * 4 + [1] * 4 + [2] * 4  # class k: the k-th line of wnids.txt
    assert stored.y_test.tolist() == [0, 0, 1, 1, 2, 2]  # from val_annotations.txt
    base = tmp_path / "tiny-imagenet-200"
    decoded = np.array(Image.open(base / "train" / TINY_WNIDS[1] / "images" / f"{TINY_WNIDS[1]}_2.JPEG").convert("RGB"))
    assert torch.equal(stored.x_train[6], torch.from_numpy(decoded).permute(2, 0, 1))
    gray = stored.x_train[0]  # a grayscale JPEG becomes three equal channels
    assert torch.equal(gray[0], gray[1]) and torch.equal(gray[1], gray[2])
    as_float = load_dataset("tiny_imagenet", data_root=tmp_path)
    assert as_float.x_test.dtype == torch.float32 and torch.equal(as_float.x_test, stored.x_test.float() / 255)


def test_tiny_imagenet_data_root_may_be_its_own_folder(tmp_path: Path) -> None:
    write_tiny_imagenet(tmp_path)
    above = load_stored("tiny_imagenet", data_root=tmp_path)
    inside = load_stored("tiny_imagenet", data_root=tmp_path / "tiny-imagenet-200")
    assert torch.equal(inside.x_train, above.x_train) and torch.equal(inside.y_test, above.y_test)
    # unpacked under another name, the folder holding wnids.txt, train/ and val/ is it too
    renamed = tmp_path / "tiny"
    (tmp_path / "tiny-imagenet-200").rename(renamed)
    assert torch.equal(load_stored("tiny_imagenet", data_root=renamed).x_test, above.x_test)
    # an empty folder of its name: the error names the files it lacks there, not one level further down
    empty = tmp_path / "other" / "tiny-imagenet-200"
    empty.mkdir(parents=True)
    with pytest.raises(DataError) as err:
        load_stored("tiny_imagenet", data_root=empty)
    assert f"{empty / 'wnids.txt'}," in str(err.value) and "tiny-imagenet-200/ itself" in str(err.value)


def test_tiny_imagenet_missing_files_say_where_to_put_them(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="data_root"):
        load_dataset("tiny_imagenet")
    with pytest.raises(DataError) as err:
        load_dataset("tiny_imagenet", data_root=tmp_path)
    message = str(err.value)
    assert str(tmp_path / "tiny-imagenet-200" / "wnids.txt") in message and "download=true" in message
    assert "http://cs231n.stanford.edu/tiny-imagenet-200.zip" in message


def test_tiny_imagenet_bad_annotation_is_named(tmp_path: Path) -> None:
    write_tiny_imagenet(tmp_path, per_class=1, val_per_class=1)
    annotations = tmp_path / "tiny-imagenet-200" / "val" / "val_annotations.txt"
    annotations.write_text(annotations.read_text() + "val_0.JPEG\tn99999999\t0\t0\t1\t1\n")
    with pytest.raises(DataError, match=r"val_annotations.txt:4: .*n99999999"):
        load_dataset("tiny_imagenet", data_root=tmp_path)
