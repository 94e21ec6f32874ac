"""Where a sweep lives on storage: the experiment folder, what the driver records there, and a probe
that the folder takes files. No Ray import: the CLI checks all of it before Ray starts."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

from pclc.files import write_atomic
from sweeps.config import SweepConfig

METADATA_FILE = "pclc_sweep.json"  # in the Ray experiment folder: where this sweep is tracked
CONFIG_COPY = "pclc_sweep.yaml"  # the resolved sweep file the experiment was started with


def storage_root(cfg: SweepConfig, storage_path: str | None) -> str:
    """The absolute folder (or URI) under which Ray keeps the sweep's experiment."""
    root = storage_path or cfg.storage_path or str(Path.cwd() / "ray_results")
    return root if "://" in root else str(Path(root).expanduser().resolve())


class StorageError(ValueError):
    """The storage folder cannot be written (read-only, under a file, full): found before Ray starts."""


def check_storage(root: str) -> None:
    """Create `root` and write (then remove) a small probe file there, so that an unwritable or full
    storage folder is one clear error before any trial trains, not a failure an hour in."""
    if "://" in root:
        return  # remote storage: Ray checks it itself
    path = Path(root)
    probe = path / f".pclc-write-probe-{os.getpid()}"
    try:
        path.mkdir(parents=True, exist_ok=True)
        with open(probe, "wb") as f:
            f.write(b"\0" * 65536)  # a checkpoint's worth, so a nearly full disk shows too
            f.flush()
            os.fsync(f.fileno())
    except OSError as exc:
        raise StorageError(
            f"storage_path {root} cannot be written ({exc.strerror or exc}): choose a writable folder "
            "with --storage-path or `storage_path` in the sweep file"
        ) from None
    finally:
        with contextlib.suppress(OSError):
            probe.unlink(missing_ok=True)


def experiment_path(root: str, name: str) -> str:
    """<storage root>/<sweep name>: the Ray experiment folder."""
    return f"{root.rstrip('/')}/{name}"


def read_metadata(exp_path: str) -> dict[str, Any]:
    """What the driver recorded about a sweep it started (its tracking URI, parent run), or {}."""
    path = Path(exp_path) / METADATA_FILE
    if "://" in exp_path or not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def write_local(exp_path: str, name: str, text: str) -> None:
    """Write `name` into the experiment folder; nothing on remote storage (the parent run in MLflow holds the same)."""
    if "://" in exp_path:
        return  # remote storage: the parent run in MLflow holds the same information
    write_atomic(Path(exp_path) / name, text)
