"""A sweep's shared preparation (data + transfer substitute) on a worker, cached in shared storage.

On a cluster the driver runs on the CPU head; training the substitute there would take hours while
the GPU workers wait. So `pclc.experiment.prepare` runs as a Ray task with one trial's resources,
and its result is kept under `<cache_dir>/prepared/` (else `<storage root>/pclc_prepared/`), named
by a hash of exactly the config fields that decide it: a resumed sweep, and any later sweep on the
same data and substitute, reads it back instead of preparing again. The driver reads and writes
the cache (it is the one that looks there next time), atomically: tmp file, then rename.
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import torch

from pclc.config import TrialConfig
from pclc.data import Dataset
from pclc.experiment import Prepared, substitute_key
from pclc.files import atomic_file
from pclc.samples import DESIGN

__all__ = [
    "CACHE_FORMAT",
    "Preparation",
    "cache_file",
    "preparation_key",
    "prepare_for_sweep",
    "prepare_on_cluster",
    "read_cache",
    "write_cache",
]

CACHE_FORMAT = 1  # bump when the cached payload or `prepare` itself changes: old entries are then not read
STORAGE_FOLDER = "pclc_prepared"  # under the storage root, beside the sweeps' experiment folders
CACHE_DIR_FOLDER = "prepared"  # under `cache_dir`, beside the substitutes `train_substitute` caches


@dataclass(frozen=True)
class Preparation:
    """A sweep's `Prepared`, with where it was computed and where it is kept."""

    prepared: Prepared
    node_id: str  # the Ray node whose worker ran `prepare` (as recorded in the cache when read from it)
    from_cache: bool
    path: Path | None  # the cache file; None when there is nowhere to keep it


def preparation_key(trial: TrialConfig, *, gpu: float = 0.0) -> dict[str, Any]:
    """Exactly the fields that decide `prepare(trial)`: the data, its subset, and the substitute's training."""
    # data_root too: another folder may hold another copy (a subset, a re-packed archive) under the same name
    key: dict[str, Any] = {
        "format": CACHE_FORMAT,
        "dataset": trial.dataset,
        "data_root": trial.data_root,
        "train_limit": trial.train_limit,
        "samples": DESIGN,  # held-out splits and train_limit draw by content since stratified-v1: older caches differ
    }
    if trial.dataset.startswith("npz:"):  # a user file: a new file under the same name is new data
        path = Path(trial.dataset[4:])
        stat = path.stat() if path.is_file() else None
        key["npz"] = [stat.st_size, stat.st_mtime_ns] if stat else None
    key["substitute"] = None
    if "transfer" in trial.attacks:
        key["substitute"] = substitute_key(trial)
        key["substitute"]["on_gpu"] = gpu > 0  # device "auto" trains it on the worker's GPU
    return key


def cache_file(trial: TrialConfig, key: dict[str, Any], *, storage_root: str | None) -> Path | None:
    """Where the preparation for `key` is kept: under cache_dir, else a local storage root, else nowhere."""
    if trial.cache_dir:
        folder = Path(trial.cache_dir) / CACHE_DIR_FOLDER
    elif storage_root and "://" not in storage_root:
        folder = Path(storage_root) / STORAGE_FOLDER
    else:
        return None  # remote storage (s3://…) and no cache_dir: prepared again by each sweep
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
    name = "".join(c if c.isalnum() or c in "-_" else "_" for c in trial.dataset.removeprefix("npz:"))[-40:]
    return folder / f"{name}-{digest}.pt"


def write_cache(path: Path, key: dict[str, Any], prepared: Prepared, node_id: str) -> None:
    """Keep `prepared` at `path`: tensors and plain values only (read back with weights_only=True)."""
    d = prepared.data
    payload = {
        "key": json.dumps(key, sort_keys=True),
        "node_id": node_id,
        "name": d.name,
        "num_classes": d.num_classes,
        "x_train": d.x_train,
        "y_train": d.y_train,
        "x_test": d.x_test,
        "y_test": d.y_test,
        "substitute": prepared.substitute_state,
    }
    with atomic_file(path) as f:  # two sweeps may write at once: each renames a whole file of its own
        torch.save(payload, f)


def read_cache(path: Path, key: dict[str, Any]) -> tuple[Prepared, str] | None:
    """(prepared, node id) kept at `path` for exactly `key`, or None (absent, another key, unreadable)."""
    if not path.is_file():
        return None
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        if payload["key"] != json.dumps(key, sort_keys=True):
            return None
        data = Dataset(
            payload["name"],
            payload["x_train"],
            payload["y_train"],
            payload["x_test"],
            payload["y_test"],
            num_classes=int(payload["num_classes"]),
        )
        return Prepared(data=data, substitute_state=payload["substitute"]), str(payload["node_id"])
    except Exception as exc:  # truncated or foreign file: prepare again and overwrite it
        print(f"pclc sweep: warning: ignoring the unreadable preparation cache {path} ({exc})", file=sys.stderr)
        return None


def _prepare_task(values: dict[str, Any], threads: int) -> tuple[Prepared, str]:
    """Runs in a Ray worker: the preparation, and the node it ran on."""
    import ray

    from pclc.config import make_config
    from pclc.experiment import prepare

    torch.set_num_threads(threads)
    return prepare(make_config(values, source="sweep preparation")), ray.get_runtime_context().get_node_id()


def prepare_on_cluster(trial: TrialConfig, *, cpu: float, gpu: float, storage_root: str | None = None) -> Preparation:
    """The preparation of `trial`: from the cache, else run as a Ray task with `cpu` and `gpu` (then cached).

    Example:
        >>> prep = prepare_on_cluster(cfg.trial, cpu=4, gpu=0.5, storage_root="/shared/ray_results")  # doctest: +SKIP
        >>> prep.from_cache, prep.node_id  # doctest: +SKIP
    """
    import ray
    from ray.exceptions import RayTaskError

    key = preparation_key(trial, gpu=gpu)
    path = cache_file(trial, key, storage_root=storage_root)
    cached = read_cache(path, key) if path is not None else None
    if cached is not None:
        return Preparation(prepared=cached[0], node_id=cached[1], from_cache=True, path=path)

    task = ray.remote(num_cpus=cpu, num_gpus=gpu, max_retries=1)(_prepare_task)
    try:
        prepared, node_id = ray.get(task.remote(trial.model_dump(), max(1, math.floor(cpu))))
    except RayTaskError as exc:  # a bad data folder or file: the library's own message, not a Ray traceback
        from pclc.config import ConfigError
        from pclc.data import DataError

        if isinstance(exc.cause, (DataError, ConfigError)):
            raise exc.cause from None
        raise
    if path is not None:
        try:
            write_cache(path, key, prepared, node_id)
        except OSError as exc:  # the sweep can go on without it; the next one prepares again
            print(f"pclc sweep: warning: cannot keep the preparation at {path} ({exc})", file=sys.stderr)
            path = None
    return Preparation(prepared=prepared, node_id=node_id, from_cache=False, path=path)


def prepare_for_sweep(cfg: Any, *, storage_root: str, out: TextIO | None = None) -> Prepared:
    """`prepare_on_cluster` for a sweep file (`SweepConfig`) with one trial's resources; says what it did."""
    prep = prepare_on_cluster(cfg.trial, cpu=cfg.resources.cpu, gpu=cfg.resources.gpu, storage_root=storage_root)
    if prep.from_cache:
        said = f"read from {prep.path}"
    else:
        kept = f"kept at {prep.path}" if prep.path else "not kept (set cache_dir)"
        said = f"prepared on node {prep.node_id[:12]}, {kept}"
    print(f"pclc sweep: data and substitute {said}", file=out or sys.stdout)
    return prep.prepared
