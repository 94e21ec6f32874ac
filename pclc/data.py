"""Datasets by name, held whole as tensors: x N×C×H×W, y int64.

Images are kept as their source stores them: 8-bit sources (MNIST-type, CIFAR, SVHN, Tiny ImageNet,
uint8 .npz) as uint8 (pixel = value / 255), a quarter of float32's bytes in the object store, the
cache and device memory; the rest as float32 in [0, 1]. `pixels` makes model inputs, where batches
are cut, on the trial's device; `load_dataset` hands back float32 throughout.
`digits` (scikit-learn's bundled 8×8 digits) and `digits28` (the same images upsampled to MNIST's
28×28, for 28×28 models and attacks at 784 input dimensions) need nothing on disk; the torchvision
sets and Tiny ImageNet read `data_root` and download only when asked; `npz:PATH` reads a user file.
The data sets here are small enough to live on the device, so `batches` slices tensors instead of
running a DataLoader. Held-out splits use `SPLIT_SEED`, never the trial seed: every trial is scored on the same
test set.

One room (~670 lines): the dataset registry; its members share the splits, the storage dtype and the caching.
"""

from __future__ import annotations

import contextlib
import dataclasses
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from pclc.registry import Registry
from pclc.samples import content_keys, stratified_order

__all__ = [
    "DATASETS",
    "SPLIT_SEED",
    "TEST_FRACTION",
    "DataError",
    "Dataset",
    "batches",
    "check_classes_present",
    "check_npz",
    "load_dataset",
    "load_npz",
    "load_stored",
    "npz_num_classes",
    "pixels",
]

SPLIT_SEED = 20210202  # fixed seed of every held-out split (independent of the trial seed)
TEST_FRACTION = 0.2  # share of samples held out when a data set has no test split of its own


class DataError(ValueError):
    """A data set that cannot be loaded; the message says what is wrong and what to do."""


PIXEL_SCALE = 255.0  # a stored uint8 value v is the pixel v / 255, as torchvision's ToTensor reads it


def pixels(x: Tensor) -> Tensor:
    """Model inputs from stored images: uint8 → float32 v / 255 on x's device; float32 as it is (no copy)."""
    return x.float().div_(PIXEL_SCALE) if x.dtype == torch.uint8 else x


@dataclass
class Dataset:
    """A train/test pair held as tensors: x N×C×H×W (uint8 as stored, or float32 in [0, 1]), y int64 labels."""

    name: str
    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    num_classes: int

    def __post_init__(self) -> None:
        for split in ("train", "test"):
            x, y = getattr(self, f"x_{split}"), getattr(self, f"y_{split}")
            if x.dim() != 4 or x.dtype not in (torch.float32, torch.uint8):
                raise DataError(
                    f"{self.name}: x_{split} must be uint8 or float32 N×C×H×W, got {x.dtype} {tuple(x.shape)}"
                )
            if y.dim() != 1 or y.dtype != torch.int64 or len(y) != len(x):
                raise DataError(
                    f"{self.name}: y_{split} must be int64 of length {len(x)}, got {y.dtype} {tuple(y.shape)}"
                )
        if self.x_train.shape[1:] != self.x_test.shape[1:]:
            raise DataError(
                f"{self.name}: train images {tuple(self.x_train.shape[1:])} and test images "
                f"{tuple(self.x_test.shape[1:])} differ in shape"
            )

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(channels, height, width) of one image."""
        c, h, w = self.x_train.shape[1:]
        return int(c), int(h), int(w)

    def to(self, device: torch.device | str) -> Dataset:
        """A copy with every tensor on `device`, images as stored (uint8 stays uint8: `pixels` per batch)."""
        return dataclasses.replace(
            self,
            x_train=self.x_train.to(device),
            y_train=self.y_train.to(device),
            x_test=self.x_test.to(device),
            y_test=self.y_test.to(device),
        )

    def as_float(self) -> Dataset:
        """A copy whose images are float32 pixels in [0, 1] (what `load_dataset` hands back)."""
        return dataclasses.replace(self, x_train=pixels(self.x_train), x_test=pixels(self.x_test))

    def subset_train(self, n: int, seed: int) -> Dataset:
        """A copy keeping `n` training samples, a class-stratified draw salted with `seed` (test set untouched).

        Drawn by content (`pclc.samples`), as the test subsets are: a class-sorted file and a shuffled copy
        keep the same images, each class in its share.
        """
        if n < 1:
            raise ValueError(f"subset size must be >= 1, got {n}")
        if n >= len(self.x_train):
            return self
        labels = self.y_train.cpu().numpy()
        order = stratified_order(labels, content_keys(self.x_train, labels, seed))
        keep = torch.as_tensor(np.sort(order[:n]), device=self.x_train.device)
        return dataclasses.replace(self, x_train=self.x_train[keep], y_train=self.y_train[keep])


def batches(
    x: Tensor, y: Tensor, batch_size: int, *, shuffle: bool, generator: torch.Generator | None = None
) -> Iterator[tuple[Tensor, Tensor]]:
    """(x, y) mini-batches by tensor slicing, x as float32 pixels (`pixels`); the last one may be smaller.

    With `shuffle`, the order is `torch.randperm(len(x), generator=generator)`, so a seeded
    generator gives a reproducible epoch.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if len(x) != len(y):
        raise ValueError(f"x and y differ in length: {len(x)} vs {len(y)}")
    n = len(x)
    if shuffle:
        device = generator.device if generator is not None else torch.device("cpu")
        order = torch.randperm(n, generator=generator, device=device).to(x.device)
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            yield pixels(x[idx]), y[idx.to(y.device)]
    else:
        for start in range(0, n, batch_size):
            yield pixels(x[start : start + batch_size]), y[start : start + batch_size]


# --- helpers shared by the loaders


def _stratified_split(x: Tensor, y: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Train and test indices holding out about `test_fraction` of every class (≥ 1 kept for training).

    Which samples are held out follows their content (`pclc.samples.content_keys` salted with `seed`), not
    their position: a class-sorted file and a shuffled copy of it hold out the same images.
    """
    keys = content_keys(x, y, seed)
    train: list[np.ndarray] = []
    test: list[np.ndarray] = []
    for label in np.unique(y):
        members = np.flatnonzero(y == label)
        members = members[np.argsort(keys[members], kind="stable")]
        n_test = min(int(round(len(members) * test_fraction)), len(members) - 1)
        test.append(members[:n_test])
        train.append(members[n_test:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def _images(array: np.ndarray | Tensor, layout: str) -> Tensor:
    """uint8 images in `layout` ("NHW", "NHWC" or "NCHW") → uint8 N×C×H×W, kept as stored."""
    x = torch.as_tensor(np.asarray(array)) if not isinstance(array, Tensor) else array
    if layout == "NHW":
        x = x.unsqueeze(1)
    elif layout == "NHWC":
        x = x.permute(0, 3, 1, 2)
    return x.contiguous()


def _labels(values: Any) -> Tensor:
    return torch.as_tensor(np.asarray(values), dtype=torch.int64).reshape(-1)


# --- registry of named data sets

DATASETS: Registry[Dataset] = Registry("dataset")


@DATASETS.register("digits")
def digits(**_: Any) -> Dataset:
    """scikit-learn's bundled 8×8 handwritten digits (1797 images, 10 classes), 80/20 stratified.

    Kept float32 (values k/16, which uint8 / 255 cannot hold exactly); it is 0.46 MB in all.
    """
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = torch.from_numpy(bunch.images.astype(np.float32) / 16.0).unsqueeze(1)  # pixel values 0..16
    y = torch.from_numpy(bunch.target.astype(np.int64))
    train, test = _stratified_split(x, bunch.target, TEST_FRACTION, SPLIT_SEED)
    return Dataset("digits", x[train], y[train], x[test], y[test], num_classes=10)


DIGITS28_SIZE = (28, 28)  # MNIST's input size: what lenet5 and cnn3 take


@DATASETS.register("digits28")
def digits28(**_: Any) -> Dataset:
    """`digits` upsampled to 28×28 (bilinear, no antialiasing): the same images, labels and split at
    MNIST's 784 input dimensions, so 28×28 models and attacks run here with nothing to download.

    Kept float32 like `digits` (interpolated values are not multiples of 1/255); a bilinear pixel is a
    convex combination of [0, 1] pixels, so it stays in [0, 1]. 5.6 MB in all.
    """
    small = digits()

    def upsample(x: Tensor) -> Tensor:
        return torch.nn.functional.interpolate(
            x, size=DIGITS28_SIZE, mode="bilinear", align_corners=False, antialias=False
        )

    return Dataset(
        "digits28", upsample(small.x_train), small.y_train, upsample(small.x_test), small.y_test, num_classes=10
    )


# --- torchvision data sets: files on disk under data_root, downloaded only when asked


@dataclass(frozen=True)
class _TorchvisionSpec:
    """Where a torchvision data set keeps its files and how its arrays are laid out."""

    cls: str  # torchvision.datasets class name
    num_classes: int
    files: tuple[str, ...]  # relative to data_root; all present → no download needed
    layout: str  # layout of the dataset's `.data` array
    labels: str  # attribute holding the labels
    split_kw: Callable[[bool], dict[str, Any]]  # train? → constructor keywords


def _train_flag(train: bool) -> dict[str, Any]:
    return {"train": train}


def _svhn_split(train: bool) -> dict[str, Any]:
    return {"split": "train" if train else "test"}


def _mnist_files(folder: str) -> tuple[str, ...]:
    names = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
    return tuple(f"{folder}/raw/{n}" for n in names)


_CIFAR10_FILES = tuple(
    f"cifar-10-batches-py/{n}"
    for n in [
        "data_batch_1",
        "data_batch_2",
        "data_batch_3",
        "data_batch_4",
        "data_batch_5",
        "test_batch",
        "batches.meta",
    ]
)
_CIFAR100_FILES = ("cifar-100-python/train", "cifar-100-python/test", "cifar-100-python/meta")

_TORCHVISION: dict[str, _TorchvisionSpec] = {
    "mnist": _TorchvisionSpec("MNIST", 10, _mnist_files("MNIST"), "NHW", "targets", _train_flag),
    "fashion_mnist": _TorchvisionSpec("FashionMNIST", 10, _mnist_files("FashionMNIST"), "NHW", "targets", _train_flag),
    "kmnist": _TorchvisionSpec("KMNIST", 10, _mnist_files("KMNIST"), "NHW", "targets", _train_flag),
    "cifar10": _TorchvisionSpec("CIFAR10", 10, _CIFAR10_FILES, "NHWC", "targets", _train_flag),
    "cifar100": _TorchvisionSpec("CIFAR100", 100, _CIFAR100_FILES, "NHWC", "targets", _train_flag),
    "svhn": _TorchvisionSpec("SVHN", 10, ("train_32x32.mat", "test_32x32.mat"), "NCHW", "labels", _svhn_split),
}


def _without_checksums(cls: type) -> type:
    """A subclass of a torchvision data set that checks its files exist but not their MD5.

    CIFAR and SVHN refuse files whose MD5 differs from the published archive (a subset, a
    re-packed copy). This keeps torchvision's own parsing and drops only that check; it relies
    on the `train_list`/`test_list`/`meta` (CIFAR) and `split_list` (SVHN) class attributes.
    """
    attrs: dict[str, Any] = {}
    if hasattr(cls, "train_list"):
        attrs["train_list"] = [[f, None] for f, _ in cls.train_list]
        attrs["test_list"] = [[f, None] for f, _ in cls.test_list]
        attrs["meta"] = {**cls.meta, "md5": None}
    if hasattr(cls, "split_list"):
        attrs["split_list"] = {k: [url, f, None] for k, (url, f, _) in cls.split_list.items()}
    return type(f"{cls.__name__}WithoutChecksums", (cls,), attrs)


def _dataset_root(root: Path, own: tuple[str, ...], complete: Callable[[Path], bool]) -> Path:
    """The folder torchvision reads a data set from (/x, holding /x/MNIST/raw/…), given `data_root`: that folder,
    or the data set's own folder inside it.

    `own` is the path from that folder to the data set's files (("MNIST", "raw"), ("cifar-10-batches-py",)).
    A `root` whose last parts are the start of `own` (/x/MNIST, /x/MNIST/raw, /x/cifar-10-batches-py) also
    names /x. The first of root and /x where `complete` holds wins; with neither, /x when root is named as the
    data set's folder (so a download lands in root itself), else root.
    """
    named = [root.parents[depth - 1] for depth in range(len(own), 0, -1) if root.parts[-depth:] == own[:depth]]
    for candidate in [root, *named]:
        if complete(candidate):
            return candidate
    return named[0] if named else root


def _split_tensors(ds: Any, spec: _TorchvisionSpec) -> tuple[Tensor, Tensor]:
    # The whole split at once from the raw arrays: no per-image PIL conversion.
    return _images(ds.data, spec.layout), _labels(getattr(ds, spec.labels))


def _load_torchvision(name: str, data_root: str | Path | None, download: bool) -> Dataset:
    spec = _TORCHVISION[name]
    if data_root is None:
        raise DataError(
            f"dataset {name!r} reads files from data_root, which is not set; "
            f"give a folder (--set data_root=/abs/path) and download=true to fetch it there"
        )
    given = Path(data_root).expanduser().resolve()
    # data_root may be the folder torchvision reads (/x) or the data set's own (/x/MNIST, /x/cifar-10-batches-py)
    own = Path(spec.files[0]).parent.parts  # from the folder torchvision reads to the files: () for SVHN
    root = _dataset_root(given, own, lambda r: all((r / f).is_file() for f in spec.files))
    missing = [f for f in spec.files if not (root / f).is_file()]
    if missing and not download:
        raise DataError(
            f"dataset {name!r} not found under {root} (missing: {', '.join(missing)}); "
            f"pass download=true (--set download=true) to fetch it there, or point data_root at "
            f"the folder that holds it{f' ({own[0]}/) or at {own[0]}/ itself' if own else ''}"
        )

    import torchvision.datasets as tvd

    cls = getattr(tvd, spec.cls)
    try:
        if missing:  # download=True: torchvision fetches and verifies the archives
            parts = [cls(str(root), download=True, **spec.split_kw(train)) for train in (True, False)]
        else:
            try:
                parts = [cls(str(root), download=False, **spec.split_kw(train)) for train in (True, False)]
            except RuntimeError:  # files present but their MD5 differs from the published one
                warnings.warn(
                    f"{name}: the files under {root} differ from torchvision's published checksums; "
                    f"loading them as they are. Delete them and load with download=true if that "
                    f"is not intended.",
                    stacklevel=2,
                )
                unchecked = _without_checksums(cls)
                parts = [unchecked(str(root), download=False, **spec.split_kw(train)) for train in (True, False)]
        (x_train, y_train), (x_test, y_test) = (_split_tensors(p, spec) for p in parts)
    except DataError:
        raise
    except Exception as exc:  # torchvision's parsers raise assorted errors on damaged files
        action = "download" if missing else "read"
        raise DataError(f"could not {action} dataset {name!r} under {root}: {type(exc).__name__}: {exc}") from exc
    return Dataset(name, x_train, y_train, x_test, y_test, spec.num_classes)


def _torchvision_builder(name: str) -> Callable[..., Dataset]:
    def build(*, data_root: str | Path | None = None, download: bool = False, **_: Any) -> Dataset:
        return _load_torchvision(name, data_root, download)

    build.__name__ = build.__qualname__ = name
    build.__doc__ = f"torchvision {_TORCHVISION[name].cls} from data_root (downloaded only with download=True)."
    return build


for _name in _TORCHVISION:
    DATASETS.register(_name)(_torchvision_builder(_name))


# --- Tiny ImageNet: the official archive's folder layout under data_root

TINY_IMAGENET_URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"
TINY_IMAGENET_DIR = "tiny-imagenet-200"


def _jpegs(paths: list[Path]) -> Tensor:
    """uint8 N×3×H×W from JPEG files (grayscale ones made RGB), decoded in threads (PIL frees the GIL)."""
    from concurrent.futures import ThreadPoolExecutor

    from PIL import Image

    def read(path: Path) -> np.ndarray:
        with Image.open(path) as img:
            return np.asarray(img.convert("RGB"), dtype=np.uint8)

    with ThreadPoolExecutor(max_workers=8) as pool:
        arrays = list(pool.map(read, paths))
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        raise DataError(f"images differ in size ({sorted(shapes)[:3]} …); Tiny ImageNet's are all 64×64")
    return _images(np.stack(arrays), "NHWC")


def _tiny_imagenet_missing(base: Path) -> list[str]:
    """What the official layout needs and `base` lacks (empty when complete enough to load)."""
    needed = [base / "wnids.txt", base / "train", base / "val" / "images", base / "val" / "val_annotations.txt"]
    return [str(p) for p in needed if not p.exists()]


@DATASETS.register("tiny_imagenet")
def tiny_imagenet(*, data_root: str | Path | None = None, download: bool = False, **_: Any) -> Dataset:
    """Tiny ImageNet (200 classes, 64×64 RGB): train/<wnid>/images, scored on the official val split.

    Reads `data_root/tiny-imagenet-200` as the official zip unpacks it, or `data_root` itself when it is that
    folder; `download=True` fetches and unpacks that zip there first. Class k is the k-th line of wnids.txt.
    """
    name = "tiny_imagenet"
    if data_root is None:
        raise DataError(
            f"dataset {name!r} reads files from data_root, which is not set; give a folder "
            f"(--set data_root=/abs/path) that holds {TINY_IMAGENET_DIR}/, or download=true to fetch it there"
        )
    given = Path(data_root).expanduser().resolve()
    # data_root may hold tiny-imagenet-200/, or be that folder: by its name, or by holding its files under another
    if _tiny_imagenet_missing(given / TINY_IMAGENET_DIR) and (
        not _tiny_imagenet_missing(given) or given.name == TINY_IMAGENET_DIR
    ):
        base = given
    else:
        base = given / TINY_IMAGENET_DIR
    root = base.parent  # where a download unpacks the zip, which makes tiny-imagenet-200/
    missing = _tiny_imagenet_missing(base)
    if missing and download:
        from torchvision.datasets.utils import download_and_extract_archive

        try:
            download_and_extract_archive(TINY_IMAGENET_URL, download_root=str(root))
        except Exception as exc:  # network and archive errors vary
            raise DataError(f"could not download {TINY_IMAGENET_URL} into {root}: {type(exc).__name__}: {exc}") from exc
        missing = _tiny_imagenet_missing(base)
    if missing:
        raise DataError(
            f"dataset {name!r} not found under {root} (missing: {', '.join(missing)}); unzip the official "
            f"archive {TINY_IMAGENET_URL} in {root} so that {base}/wnids.txt exists, pass download=true "
            f"(--set download=true) to fetch it there, or point data_root at the folder that holds {TINY_IMAGENET_DIR}/ "
            f"or at {TINY_IMAGENET_DIR}/ itself"
        )

    wnids = [w.strip() for w in (base / "wnids.txt").read_text().splitlines() if w.strip()]
    if len(wnids) < 2:
        raise DataError(f"{base / 'wnids.txt'} lists {len(wnids)} class(es); expected one wnid per line (200)")
    label = {w: k for k, w in enumerate(wnids)}
    train_files: list[Path] = []
    train_labels: list[int] = []
    for wnid in wnids:
        files = sorted((base / "train" / wnid / "images").glob("*.JPEG"))
        if not files:
            raise DataError(f"no training images for class {wnid} in {base / 'train' / wnid / 'images'}")
        train_files += files
        train_labels += [label[wnid]] * len(files)
    test_files: list[Path] = []
    test_labels: list[int] = []
    annotations = base / "val" / "val_annotations.txt"
    for number, line in enumerate(annotations.read_text().splitlines(), 1):
        fields = line.split("\t")
        if not line.strip():
            continue
        if len(fields) < 2 or fields[1] not in label:
            raise DataError(f"{annotations}:{number}: expected 'FILE<TAB>WNID…' with a wnid of wnids.txt, got {line!r}")
        path = base / "val" / "images" / fields[0]
        if not path.is_file():
            raise DataError(f"{annotations}:{number} names {fields[0]}, which is not in {path.parent}")
        test_files.append(path)
        test_labels.append(label[fields[1]])
    if not test_files:
        raise DataError(f"{annotations} lists no validation image; it is Tiny ImageNet's test split here")
    try:
        x_train, x_test = _jpegs(train_files), _jpegs(test_files)
    except DataError:
        raise
    except Exception as exc:  # PIL raises assorted errors on damaged files
        raise DataError(f"could not read the Tiny ImageNet images under {base}: {type(exc).__name__}: {exc}") from exc
    return Dataset(name, x_train, _labels(train_labels), x_test, _labels(test_labels), num_classes=len(wnids))


# --- npz: a user file with x, y (and optionally x_test, y_test)


def _npz_images(path: Path, key: str, x: np.ndarray) -> Tensor:
    """Check and convert one image array (N×H×W, N×H×W×C or N×C×H×W; uint8 or float in [0, 1])."""
    where = f"{path}: {key!r}"
    if x.ndim == 3:
        layout = "NHW"
    elif x.ndim == 4:
        # The channel axis is the small one (1 to 4 channels); images are larger than that.
        first, last = x.shape[1] <= 4, x.shape[3] <= 4
        if first == last:
            raise DataError(
                f"{where} has shape {x.shape}: cannot tell the channel axis; expected N×C×H×W or "
                f"N×H×W×C with 1 to 4 channels and images larger than 4×4"
            )
        layout = "NCHW" if first else "NHWC"
    else:
        raise DataError(f"{where} has shape {x.shape}; expected N×H×W, N×H×W×C or N×C×H×W")
    if x.shape[0] == 0:
        raise DataError(f"{where} holds no samples")
    if x.dtype == np.uint8:
        return _images(x, layout)
    if not np.issubdtype(x.dtype, np.floating):
        raise DataError(f"{where} has dtype {x.dtype}; expected uint8 (0–255) or float (0–1)")
    if not np.isfinite(x).all():
        raise DataError(f"{where} contains NaN or inf")
    lo, hi = float(x.min()), float(x.max())
    if lo < 0.0 or hi > 1.0:
        raise DataError(
            f"{where} holds floats in [{lo:g}, {hi:g}], outside [0, 1]; scale to [0, 1] or save uint8 0–255"
        )
    t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    if layout == "NHW":
        t = t.unsqueeze(1)
    elif layout == "NHWC":
        t = t.permute(0, 3, 1, 2).contiguous()
    return t


def _npz_labels(path: Path, key: str, y: np.ndarray, n: int) -> Tensor:
    """Check and convert one label array: integers 0..K-1, one per image."""
    where = f"{path}: {key!r}"
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise DataError(f"{where} has shape {y.shape}; expected one label per sample, shape ({n},)")
    if len(y) != n:
        raise DataError(f"{where} holds {len(y)} labels for {n} images; x and y must have the same length")
    if np.issubdtype(y.dtype, np.floating):
        whole = np.isfinite(y) & (y == np.round(y))
        if not whole.all():
            raise DataError(f"{where} holds non-integer labels, e.g. {y[~whole][0]!r}; expected class indices 0..K-1")
    elif not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"{where} has dtype {y.dtype}; expected integer class indices 0..K-1")
    if (y < 0).any():
        raise DataError(f"{where} holds negative labels, e.g. {y[y < 0][0]!r}; expected class indices 0..K-1")
    return torch.from_numpy(y.astype(np.int64))


@contextlib.contextmanager
def _open_npz(path: Path) -> Iterator[Any]:
    """The archive at `path`, checked to be a readable .npz holding x and y; no array is read yet."""
    if not path.is_file():
        raise DataError(f"npz file {path} does not exist")
    # Our own file handle: np.load leaks the one it opens when the zip turns out to be damaged.
    with open(path, "rb") as handle:
        try:
            archive = np.load(handle, allow_pickle=False)
        except Exception as exc:  # not a zip, pickled, truncated: np.load's errors vary with the damage
            raise DataError(f"{path} is not a readable .npz archive ({type(exc).__name__}: {exc})") from exc
        if not isinstance(archive, np.lib.npyio.NpzFile):
            raise DataError(f"{path} holds a single .npy array, not an .npz archive with x and y arrays")
        with archive:
            keys = set(archive.files)
            missing = sorted({"x", "y"} - keys)
            if missing:
                raise DataError(
                    f"{path} has no {' or '.join(missing)} array (it holds: {', '.join(sorted(keys)) or 'nothing'}); "
                    f"expected x (images) and y (labels), optionally x_test and y_test"
                )
            if ("x_test" in keys) != ("y_test" in keys):
                raise DataError(f"{path} has only one of x_test and y_test; give both or neither")
            yield archive


def _header(archive: Any, key: str) -> tuple[tuple[int, ...], np.dtype]:
    """The shape and dtype of the archive's member `key`, read from its .npy header (the data is not read)."""
    with archive.zip.open(f"{key}.npy") as member:
        version = np.lib.format.read_magic(member)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, dtype = read(member)
    return tuple(shape), dtype


def check_npz(path: str | Path) -> None:
    """A cheap pre-flight for `npz:PATH`: the file is a readable .npz with x and y, whose image arrays are numbers
    of a usable shape (read from the arrays' headers: no image is loaded).

    A sweep calls it before Ray starts, so a missing, truncated or pickled file fails in a second, not after start-up.
    """
    path = Path(path).expanduser()
    with _open_npz(path) as archive:
        for key in ("x", "y", "x_test", "y_test"):
            if key not in archive.files:
                continue
            try:
                shape, dtype = _header(archive, key)
            except Exception as exc:  # a damaged member: the header itself cannot be read
                raise DataError(f"{path}: cannot read its {key!r} array ({type(exc).__name__}: {exc})") from exc
            if dtype.hasobject:
                raise DataError(
                    f"{path}: {key!r} is an object array (dtype {dtype}, stored as pickles, which are not loaded); "
                    f"save numbers, e.g. np.savez(path, {key}=np.asarray({key}, dtype=np.float32), …)"
                )
            if key.startswith("y"):  # its values are checked when read (npz_num_classes, a few bytes a sample)
                continue
            if not (dtype == np.uint8 or np.issubdtype(dtype, np.floating)):
                raise DataError(f"{path}: {key!r} has dtype {dtype}; expected uint8 (0–255) or float (0–1)")
            if len(shape) not in (3, 4):
                raise DataError(f"{path}: {key!r} has shape {shape}; expected N×H×W, N×H×W×C or N×C×H×W")


def _ranges(values: list[int]) -> str:
    """Sorted integers as runs: [3, 4, 5, 9] → '3–5, 9'."""
    runs: list[list[int]] = []
    for v in values:
        if runs and v == runs[-1][1] + 1:
            runs[-1][1] = v
        else:
            runs.append([v, v])
    return ", ".join(str(a) if a == b else f"{a}–{b}" for a, b in runs)


def check_classes_present(path: Path, y_train: Tensor | np.ndarray, y_test: Tensor | np.ndarray | None = None) -> int:
    """The class count K of an `npz:` file, whose training labels must be 0..K-1 with every class present:
    a gap ({0, 1, 2, 50}) would train a 51-class model with 48 classes that never appear. Raises DataError
    naming the missing classes."""
    train = {int(v) for v in np.unique(np.asarray(y_train))}
    seen = train | ({int(v) for v in np.unique(np.asarray(y_test))} if y_test is not None else set())
    k = max(seen) + 1
    missing = sorted(set(range(k)) - train)
    if missing:
        shown = _ranges(sorted(seen))
        raise DataError(
            f"{path}: labels must be 0..K-1 with every class in the training labels; the labels hold {shown}, "
            f"so classes {_ranges(missing)} have no training sample. Relabel them 0..{len(seen) - 1} (e.g. "
            f"np.unique(y, return_inverse=True))"
        )
    return k


def npz_num_classes(path: str | Path) -> int:
    """The class count an `npz:` file's data set will have (its largest label + 1), from the labels alone.

    A sweep calls it before Ray starts, to refuse attacks the class count cannot run (`pclc.attacks.check_classes`).
    """
    path = Path(path).expanduser()
    with _open_npz(path) as archive:
        try:
            labels = [_npz_labels(path, k, archive[k], len(archive[k])) for k in ("y", "y_test") if k in archive.files]
        except DataError:
            raise
        except Exception as exc:  # a damaged member, or an object array (pickles are refused)
            raise DataError(f"{path}: cannot read its labels ({type(exc).__name__}: {exc})") from exc
    if not len(labels[0]):
        raise DataError(f"{path}: 'y' holds no labels")
    return check_classes_present(path, labels[0], labels[1] if len(labels) > 1 else None)


def load_npz(path: str | Path) -> Dataset:
    """A data set from an .npz file with `x`, `y` and optionally `x_test`, `y_test` (images as float32).

    Without a test split, TEST_FRACTION of every class is held out with SPLIT_SEED.

    Example:
        >>> import tempfile
        >>> path = Path(tempfile.mkdtemp()) / "mine.npz"
        >>> np.savez(path, x=np.zeros((10, 8, 8), np.uint8), y=np.arange(10) % 2)
        >>> load_npz(str(path)).input_shape
        (1, 8, 8)
    """
    return _npz_dataset(path).as_float()


def _npz_dataset(path: str | Path) -> Dataset:
    """`load_npz` with the images as stored (uint8 stays uint8)."""
    path = Path(path).expanduser()
    with _open_npz(path) as archive:
        keys = set(archive.files)
        try:
            arrays = {k: archive[k] for k in ("x", "y", "x_test", "y_test") if k in keys}
        except Exception as exc:  # a damaged member, or an object array (pickles are refused)
            raise DataError(f"{path}: cannot read its arrays ({type(exc).__name__}: {exc})") from exc

    x = _npz_images(path, "x", arrays["x"])
    y = _npz_labels(path, "y", arrays["y"], len(x))
    y_test = _npz_labels(path, "y_test", arrays["y_test"], len(arrays["x_test"])) if "x_test" in arrays else None
    check_classes_present(path, y, y_test)
    if "x_test" in arrays:
        x_test = _npz_images(path, "x_test", arrays["x_test"])
        if x_test.shape[1:] != x.shape[1:]:
            raise DataError(
                f"{path}: x_test images {tuple(x_test.shape[1:])} differ from x images {tuple(x.shape[1:])} (C×H×W)"
            )
        x_train, y_train = x, y
    else:
        train, test = _stratified_split(x, y.numpy(), TEST_FRACTION, SPLIT_SEED)
        if len(test) == 0:
            raise DataError(
                f"{path}: too few samples per class ({len(y)} in all) to hold out a test split; "
                f"add x_test and y_test to the file"
            )
        x_train, y_train, x_test, y_test = x[train], y[train], x[test], y[test]
    num_classes = int(max(y_train.max(), y_test.max())) + 1
    if num_classes < 2:
        raise DataError(f"{path}: labels hold a single class (0); a classifier needs at least 2")
    return Dataset(f"npz:{path}", x_train, y_train, x_test, y_test, num_classes)


def load_dataset(name: str, *, data_root: str | Path | None = None, download: bool = False, seed: int = 0) -> Dataset:
    """The data set `name` (a DATASETS name or "npz:/path/file.npz") as tensors on the CPU, images float32.

    `seed` is accepted for API stability but changes nothing: held-out splits use SPLIT_SEED
    so every trial of a sweep is scored on the same test set.

    Example:
        >>> data = load_dataset("digits")
        >>> data.input_shape, data.num_classes
        ((1, 8, 8), 10)
    """
    del seed  # see the docstring: splits are fixed on purpose
    return load_stored(name, data_root=data_root, download=download).as_float()


def load_stored(name: str, *, data_root: str | Path | None = None, download: bool = False) -> Dataset:
    """The data set `name` as its source stores it (uint8 images stay uint8): what a sweep ships and caches.

    Example:
        >>> load_stored("digits").x_train.dtype  # digits is float32 at the source
        torch.float32
    """
    if name.startswith("npz:"):
        if not name[4:]:
            raise DataError("dataset 'npz:' names no file; write npz:/abs/path/to/file.npz")
        check_npz(name[4:])  # the same words as the sweep's pre-flight for a pickled or misshapen array
        return _npz_dataset(name[4:])
    if name not in DATASETS:
        raise DataError(
            f"unknown dataset {name!r}; choose one of: {', '.join(DATASETS.names())}, or npz:/path/to/file.npz"
        )
    return DATASETS.create(name, data_root=data_root, download=download)
