"""Per-sample outcomes of an evaluation: which test samples it scored and, per sample, whether each
accuracy it reports (clean, every attack × eps, every worst case) left that sample correct.

Why: a sweep's conclusion compares configurations on the same samples over several seeds with paired
tests (McNemar, paired differences); averages alone cannot be paired. The writers (a trial's
`outcomes.json`, `pclc evaluate`'s `finalist/outcomes.json`, named in `pclc.contract`) and the reader
(`analysis.load.fetch_outcomes`) share this one format.

Format (version 2), compact JSON::

    {"version": 2, "dataset": "digits", "indices": [0, 1, …],        # rows of the dataset's test split
     "labels": [3, 7, …],                                            # each scored sample's label
     "samples": "stratified-v1",                                      # how they were drawn (pclc.samples)
     "headlines": {"robust_acc": "robust_acc/worst/eps=0.1", …},      # headline metric → the key it reports
     "outcomes": {"clean_acc": {"scored": "<base64>", "correct": "<base64>"},
                  "robust_acc/fgsm/eps=0.1": {…}, "robust_acc/worst/eps=0.1": {…}, …}}

Each bit string is `numpy.packbits` of one bool per sample in `indices` order, first sample in the
most significant bit of the first byte, the last byte padded with zero bits, then base64. A `correct`
bit is 1 only where the sample was scored. A quickstart trial (256 samples, 24 keys) takes about 5 kB.
Version 1 (no labels, no `samples`) is still read: its samples were the head of the test split
(`samples` = "head", `labels` None).
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from pclc.samples import DESIGN, HEAD

VERSION = 2  # bump when the layout changes; `from_dict` refuses any version it does not know
READS = (1, 2)  # the versions `from_dict` reads: 1 predates labels and the sample design (pclc.samples.HEAD)


class OutcomesError(ValueError):
    """An outcomes payload this version cannot read: the message says what is wrong."""


@dataclass(frozen=True, eq=False)
class Outcomes:
    """Per-sample scored/correct flags of every accuracy an evaluation reports, keyed by metric name.

    `accuracy(key)` recomputes the metric exactly as it was logged (`pclc.evaluate` derives its
    accuracies from this object), so a paired test on these bits agrees with the logged numbers.

    Example:
        >>> o = Outcomes(dataset="digits", indices=[0, 1, 2], scored={"clean_acc": [1, 1, 1]},
        ...              correct={"clean_acc": [1, 0, 1]})
        >>> o.accuracy("clean_acc") == Outcomes.from_json(o.to_json()).accuracy("clean_acc")
        True
    """

    dataset: str  # the pclc.data name whose test split `indices` index
    indices: np.ndarray  # (N,) int64 (given as any int sequence): the test samples, in every flag vector's order
    scored: Mapping[str, np.ndarray]  # metric key → (N,) bool: the samples that accuracy is over
    correct: Mapping[str, np.ndarray]  # metric key → (N,) bool: still correct (False where not scored)
    headlines: Mapping[str, str] = field(default_factory=dict)  # e.g. robust_acc → robust_acc/worst/eps=0.1
    labels: np.ndarray | None = None  # (N,) int64: each sample's label (None: written before labels were kept)
    samples: str = DESIGN  # how `indices` were drawn (pclc.samples.DESIGN); HEAD: the first N of the split

    def __post_init__(self) -> None:
        indices = np.asarray(self.indices, dtype=np.int64).reshape(-1)
        if self.labels is not None:
            labels = np.asarray(self.labels, dtype=np.int64).reshape(-1)
            if len(labels) != len(indices):
                raise OutcomesError(f"{len(labels)} labels for {len(indices)} samples")
            object.__setattr__(self, "labels", labels)
        if set(self.scored) != set(self.correct):
            raise OutcomesError(
                f"scored and correct name different keys: {sorted(self.scored)} vs {sorted(self.correct)}"
            )
        scored, correct = {}, {}
        for key in self.correct:  # the writer's order: clean first, then as the evaluation ran
            s, c = _flags(self.scored[key]), _flags(self.correct[key])
            if len(s) != len(indices) or len(c) != len(indices):
                raise OutcomesError(f"{key}: {len(s)} scored and {len(c)} correct flags for {len(indices)} samples")
            scored[key], correct[key] = s, c & s
        unknown = {h: k for h, k in self.headlines.items() if k not in correct}
        if unknown:
            raise OutcomesError(f"headlines {unknown} name keys without outcomes; keys: {sorted(correct)}")
        object.__setattr__(self, "indices", indices)
        object.__setattr__(self, "scored", scored)
        object.__setattr__(self, "correct", correct)
        object.__setattr__(self, "headlines", dict(self.headlines))

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(self.correct)

    def at(
        self,
        *,
        dataset: str,
        indices: Sequence[int] | np.ndarray,
        labels: Sequence[int] | np.ndarray | None = None,
        samples: str = DESIGN,
    ) -> Outcomes:
        """The same outcomes, named as the samples `indices` of `dataset`'s test split (with their labels,
        drawn as `samples` says)."""
        return Outcomes(
            dataset=dataset,
            indices=np.asarray(indices),
            scored=self.scored,
            correct=self.correct,
            headlines=self.headlines,
            labels=None if labels is None else np.asarray(labels),
            samples=samples,
        )

    def per_class(self, key: str) -> dict[int, tuple[int, int]]:
        """label → (still correct, scored) under `key` (a metric key or a headline); empty without labels."""
        key = self.headlines.get(key, key)
        if self.labels is None or key not in self.correct:
            return {}
        scored, correct = self.scored[key], self.correct[key]
        return {
            int(c): (int(correct[self.labels == c].sum()), int(scored[self.labels == c].sum()))
            for c in np.unique(self.labels[scored])
        }

    def accuracy(self, key: str) -> float:
        """The accuracy `key` (a metric key or a headline) over its scored samples, as logged.

        torch's float32 mean of the bools, then `.item()`: the very computation of the logged metric,
        so the two are equal (==), not merely close.
        """
        key = self.headlines.get(key, key)
        if key not in self.correct:
            raise KeyError(
                f"no outcomes for {key!r}; keys: {sorted(self.correct)}, headlines: {sorted(self.headlines)}"
            )
        return torch.from_numpy(self.correct[key][self.scored[key]]).float().mean().item()

    def metrics(self) -> dict[str, float]:
        """Every accuracy these outcomes hold, by metric name: each key, then each headline."""
        return {k: self.accuracy(k) for k in (*self.correct, *self.headlines)}

    # ------------------------------------------------------------------ the artifact
    def to_dict(self) -> dict[str, Any]:
        return {
            "version": VERSION,
            "dataset": self.dataset,
            "indices": self.indices.tolist(),
            "labels": None if self.labels is None else self.labels.tolist(),
            "samples": self.samples,
            "headlines": dict(self.headlines),
            "outcomes": {k: {"scored": _pack(self.scored[k]), "correct": _pack(self.correct[k])} for k in self.correct},
        }

    def to_json(self) -> str:
        """The artifact's text: compact JSON (no indentation: the index list stays one line)."""
        return json.dumps(self.to_dict(), separators=(",", ":"))

    @classmethod
    def from_dict(cls, payload: Any) -> Outcomes:
        """Inverse of `to_dict`; an unknown version or a malformed payload raises `OutcomesError`."""
        if not isinstance(payload, dict):
            raise OutcomesError(f"an outcomes payload is a JSON object, not {type(payload).__name__}")
        version = payload.get("version")
        if version not in READS:
            raise OutcomesError(
                f"outcomes format version {version!r} is not one this pclc reads (versions {READS}): "
                "read it with the pclc version that wrote it, or evaluate the run again"
            )
        try:
            indices = np.asarray(payload["indices"], dtype=np.int64)
            n = len(indices)
            flags = payload["outcomes"]
            scored = {k: _unpack(v["scored"], n, f"{k}/scored") for k, v in flags.items()}
            correct = {k: _unpack(v["correct"], n, f"{k}/correct") for k, v in flags.items()}
            return cls(
                dataset=str(payload["dataset"]),
                indices=indices,
                scored=scored,
                correct=correct,
                headlines=dict(payload.get("headlines", {})),
                labels=payload.get("labels") if version >= 2 else None,
                samples=str(payload.get("samples", HEAD)) if version >= 2 else HEAD,
            )
        except (KeyError, TypeError, AttributeError, ValueError) as exc:
            if isinstance(exc, OutcomesError):
                raise
            raise OutcomesError(
                f"malformed outcomes payload (version {VERSION}): {type(exc).__name__}: {exc}"
            ) from None

    @classmethod
    def from_json(cls, text: str) -> Outcomes:
        try:
            payload = json.loads(text)
        except ValueError as exc:
            raise OutcomesError(f"outcomes artifact is not JSON: {exc}") from None
        return cls.from_dict(payload)


def _flags(values: Any) -> np.ndarray:
    """(N,) bool from a bool array, list or CPU tensor."""
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    return np.asarray(values, dtype=bool).reshape(-1).copy()


def _pack(flags: np.ndarray) -> str:
    return base64.b64encode(np.packbits(flags, bitorder="big").tobytes()).decode("ascii")


def _unpack(text: str, n: int, what: str) -> np.ndarray:
    """`n` flags from `_pack`'s text; a byte count or padding that does not fit `n` samples is refused."""
    try:
        raw = np.frombuffer(base64.b64decode(text, validate=True), dtype=np.uint8)
    except (binascii.Error, TypeError) as exc:
        raise OutcomesError(f"{what}: not base64 ({exc})") from None
    if len(raw) != (n + 7) // 8:
        raise OutcomesError(f"{what}: {len(raw)} bytes of flags for {n} samples (expected {(n + 7) // 8})")
    bits = np.unpackbits(raw, bitorder="big")
    if bits[n:].any():
        raise OutcomesError(f"{what}: padding bits after sample {n} are set: the flags belong to more samples")
    return bits[:n].astype(bool)
