"""Which test samples a number is about: one seeded, class-stratified order of a test split.

Files and official test sets are stored in class or difficulty order (a class-sorted export; MNIST's
cleaner half first), so the head of a split is not a sample of it. Every subset a trial scores is a prefix
of one order instead: the evaluated set (`eval_limit`), the AutoAttack subset (`aa_limit`) and the per-epoch
subset (`epoch_eval_samples`). Prefixes of one order nest (the smaller is inside the larger), and the order
depends only on the split's images and labels, never on where they are stored: every trial of every sweep
on the same data set scores the same samples, a class-sorted file and a shuffled copy of it included.

How: each sample gets a key, a salted hash of its label and image bytes (`content_keys`): a random draw
that the storage order cannot change. Within a class, samples are taken in key order; across classes they
interleave at even spacing (`stratified_order`), so any prefix of m samples holds each class's share of m
to within one sample. `_stratified_split` in `pclc.data` holds out a test split by the same keys.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np
import torch

__all__ = ["DESIGN", "SAMPLE_SEED", "SampleDraw", "content_keys", "draw", "stratified_order"]

SAMPLE_SEED = 0  # the salt of every evaluation subset's draw (the held-out split has its own, SPLIT_SEED)
DESIGN = "stratified-v1"  # recorded with every evaluation: runs without it scored the head of the test split
HEAD = "head"  # what a run that predates the design scored: the first samples of the test split


def content_keys(x: torch.Tensor | np.ndarray, y: torch.Tensor | np.ndarray, salt: int) -> np.ndarray:
    """(N,) uint64: a salted hash of each sample's label and image bytes: the same sample gets the same key
    wherever it is stored, and two salts give independent orders."""
    images = x.detach().cpu().contiguous().numpy() if isinstance(x, torch.Tensor) else np.ascontiguousarray(x)
    labels = y.detach().cpu().numpy() if isinstance(y, torch.Tensor) else np.asarray(y)
    rows = images.reshape(len(images), -1)
    prefix = int(salt).to_bytes(8, "little", signed=True)
    keys = np.empty(len(rows), dtype=np.uint64)
    for i, (row, label) in enumerate(zip(rows, labels, strict=True)):
        digest = hashlib.blake2b(prefix + int(label).to_bytes(8, "little", signed=True), digest_size=8)
        digest.update(row.tobytes())
        keys[i] = int.from_bytes(digest.digest(), "little")
    return keys


def stratified_order(labels: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """Positions 0..N-1 in an order whose every prefix is a class-stratified draw: within a class by key,
    the r-th of a class of n at (r + ½) / n of the way, ties between classes broken by key."""
    labels = np.asarray(labels)
    spacing = np.empty(len(labels), dtype=np.float64)
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        ranked = members[np.argsort(keys[members], kind="stable")]
        spacing[ranked] = (np.arange(len(ranked)) + 0.5) / len(ranked)
    return np.lexsort((keys, spacing))  # by spacing, then by key


@dataclass(frozen=True)
class SampleDraw:
    """The samples one trial scores: `evaluated` (test-split indices, in draw order), of which the AutoAttack
    subset is the first `autoattack` and the per-epoch subset the first `epoch`; plus what they cover."""

    evaluated: np.ndarray  # (n,) int64 test-split indices; every prefix a stratified draw
    labels: np.ndarray  # (n,) int64: their labels
    autoattack: int  # the AutoAttack subset: evaluated[:autoattack]
    epoch: int  # the per-epoch signal's subset: evaluated[:epoch] (0 = no signal)
    num_classes: int  # classes of the data set
    present: int  # classes with at least one test sample
    warnings: list[str] = field(default_factory=list)  # limits below the class count, classes a subset misses

    def covered(self, n: int) -> int:
        """Classes among the first `n` evaluated samples."""
        return len(np.unique(self.labels[:n]))

    def coverage(self) -> dict[str, str]:
        """Per subset, its size and the classes it covers of those the test split has: e.g. {"evaluated":
        "80 samples, 10/10 classes", …}; what a trial's tags say (`pclc.contract.samples_tags`)."""
        sizes = {"evaluated": len(self.evaluated), "autoattack": self.autoattack, "epoch": self.epoch}
        return {k: f"{n} samples, {self.covered(n)}/{self.present} classes" for k, n in sizes.items() if n}


def draw(
    x_test: torch.Tensor,
    y_test: torch.Tensor,
    *,
    num_classes: int,
    eval_limit: int | None,
    aa_limit: int | None,
    epoch_samples: int,
    seed: int = SAMPLE_SEED,
) -> SampleDraw:
    """The seeded, class-stratified subsets of a test split a trial scores (module docstring), with a warning
    for each limit smaller than the class count and each class a subset leaves out.

    Example:
        >>> x = torch.arange(40, dtype=torch.float32).reshape(40, 1, 1, 1)
        >>> y = torch.arange(40) // 10  # stored class by class
        >>> d = draw(x, y, num_classes=4, eval_limit=8, aa_limit=4, epoch_samples=4)
        >>> sorted(np.bincount(d.labels, minlength=4).tolist()), d.covered(4)
        ([2, 2, 2, 2], 4)
    """
    labels = y_test.detach().cpu().numpy().astype(np.int64)
    order = stratified_order(labels, content_keys(x_test, labels, seed))
    n = len(order) if eval_limit is None else min(eval_limit, len(order))
    evaluated = order[:n]
    aa = n if aa_limit is None else min(aa_limit, n)
    epoch = min(epoch_samples, n)
    result = SampleDraw(
        evaluated=evaluated,
        labels=labels[evaluated],
        autoattack=aa,
        epoch=epoch,
        num_classes=num_classes,
        present=len(np.unique(labels)),
    )
    counts = np.bincount(labels, minlength=num_classes)
    said: set[int] = set()
    for what, size in (("eval_limit", n), ("aa_limit", aa), ("epoch_eval_samples", epoch)):
        if not size or size in said:
            continue
        said.add(size)
        missing = sorted(set(np.flatnonzero(counts).tolist()) - set(labels[evaluated[:size]].tolist()))
        if not missing:
            continue
        if size < result.present:
            result.warnings.append(
                f"Samples: {what} = {size} is smaller than the {result.present} classes of the test split: "
                f"its subset covers {result.present - len(missing)} of them (missing: {_classes(missing)})"
            )
        else:
            result.warnings.append(
                f"Samples: the {size} samples of {what} miss class(es) {_classes(missing)}: "
                f"too few test samples for a share of one ({', '.join(str(counts[c]) for c in missing[:5])} "
                f"of {len(labels)})"
            )
    empty = np.flatnonzero(counts == 0)
    if len(empty):
        result.warnings.append(
            f"Samples: the test split has no sample of class(es) {_classes(empty.tolist())}: no number is about them"
        )
    return result


def _classes(labels: list[int]) -> str:
    shown = ", ".join(str(c) for c in labels[:10])
    return shown + (f" and {len(labels) - 10} more" if len(labels) > 10 else "")
