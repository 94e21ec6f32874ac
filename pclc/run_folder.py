"""One run, one folder: where `pclc train` writes, and how an interrupted run is found again.

A default folder is made new for each run (`runs/train-…-<time>-<pid>-<random>`, created with
`exist_ok=False`, so two runs started in the same second never share one); an explicit `out_dir`
that already holds a run is refused unless the caller overwrites it (its files removed first) or
resumes it. The last epoch's checkpoint (`checkpoint.pt`, written atomically by `pclc.train`) stays
in the folder until the run has written its results, so Ctrl-C or a kill loses at most one epoch.
"""

from __future__ import annotations

import os
import secrets
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from pclc.contract import OUTCOMES_ARTIFACT, WEIGHTS_FILE
from pclc.files import TMP_SUFFIX

CHECKPOINT = "checkpoint.pt"  # the last finished epoch's Trainer state, with the run's config
METRICS = "metrics.json"
# Every file a run writes into its folder: what "holds a run" means, and what an overwrite removes.
RUN_FILES = (METRICS, OUTCOMES_ARTIFACT, WEIGHTS_FILE, CHECKPOINT)
# Config fields that may differ between an interrupted run and its resume: where it writes, nothing it computes.
NOT_COMPARED = ("out_dir",)


class RunFolderError(ValueError):
    """An output folder that this run must not write into (another run's), or nothing to resume."""


def run_stem(dataset: str, model: str, loss: str) -> str:
    """The name every default folder of this dataset/model/loss starts with."""
    return f"train-{dataset.replace(':', '_').replace('/', '_')}-{model}-{loss}"


def new_run_folder(parent: str | Path, stem: str) -> Path:
    """A folder under `parent` no other run has: time, process id and a random suffix, made with
    `exist_ok=False` (a collision, however unlikely, draws again rather than sharing)."""
    parent = Path(parent)
    parent.mkdir(parents=True, exist_ok=True)
    while True:
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        folder = parent / f"{stem}-{stamp}-{os.getpid()}-{secrets.token_hex(3)}"
        try:
            folder.mkdir(exist_ok=False)
            return folder
        except FileExistsError:
            continue


def run_files(folder: str | Path) -> list[str]:
    """The run files `folder` holds (none for a missing or foreign folder)."""
    folder = Path(folder)
    return [name for name in RUN_FILES if (folder / name).is_file()]


def claim(folder: str | Path, *, overwrite: bool = False) -> None:
    """Take an explicit `out_dir` for a new run: refused when it holds another run's files, unless `overwrite`,
    which removes them first (so no file of the old run can stand beside the new run's)."""
    folder = Path(folder)
    present = run_files(folder)
    if not present:
        return
    if not overwrite:
        state = "an interrupted run" if present == [CHECKPOINT] else "a run"
        raise RunFolderError(
            f"out_dir {folder} already holds {state} ({', '.join(present)}); pass --overwrite to replace it"
            + (", --resume to continue it" if CHECKPOINT in present else "")
            + ", or choose another out_dir"
        )
    for name in present:
        (folder / name).unlink(missing_ok=True)
    for tmp in folder.glob(f".*{TMP_SUFFIX}"):  # a writer's temporaries left by a kill
        tmp.unlink(missing_ok=True)


def comparable(config: dict[str, Any]) -> dict[str, Any]:
    """A resolved config less the fields a resume may change."""
    return {k: v for k, v in config.items() if k not in NOT_COMPARED}


def resumable(folder: str | Path, config: dict[str, Any]) -> str | None:
    """Why `folder` cannot resume a run of `config`, or None when it can: it must hold a checkpoint, no
    results yet, and the checkpoint must be of the same config."""
    from pclc.train import CheckpointError, load_checkpoint  # torch: only when a folder is read

    folder = Path(folder)
    if (folder / METRICS).is_file():
        return f"the run in {folder} has finished ({METRICS} is there); nothing to resume"
    if not (folder / CHECKPOINT).is_file():
        return f"{folder} holds no {CHECKPOINT}: no epoch of a run there finished"
    try:
        saved = load_checkpoint(folder / CHECKPOINT).get("config")
    except CheckpointError as exc:
        return str(exc)
    if saved is None:
        return f"{folder / CHECKPOINT} does not say which config it trained"
    changed = sorted(k for k in comparable(config) if comparable(saved).get(k) != config[k])
    if changed:
        shown = ", ".join(f"{k}: {saved.get(k)!r} → {config[k]!r}" for k in changed[:5])
        return f"{folder / CHECKPOINT} is a run of another config ({shown}); resume with the same settings"
    return None


def find_interrupted(parent: str | Path, stem: str, config: dict[str, Any]) -> Path | None:
    """The newest default folder under `parent` whose run of `config` was interrupted (see `resumable`)."""
    candidates = sorted(Path(parent).glob(f"{stem}-*"), key=lambda p: _mtime(p / CHECKPOINT), reverse=True)
    return next((p for p in candidates if p.is_dir() and resumable(p, config) is None), None)


def discard_if_empty(folder: Path) -> None:
    """Remove a folder this run made and left empty (a refused run leaves no folder behind), and its parent
    `runs/` when that is empty too."""
    for made in (folder, folder.parent):
        try:
            made.rmdir()
        except OSError:
            return


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return -time.time()


class CheckpointKeeper:
    """A `pclc.experiment.Reporter` that keeps each checkpoint `run_trial` hands over in `folder/checkpoint.pt`
    (atomically, with the run's config), then passes every report on to `inner`."""

    def __init__(self, inner: Any, folder: str | Path, config: dict[str, Any]) -> None:
        self.inner, self.path, self.config = inner, Path(folder) / CHECKPOINT, config

    def on_epoch(self, metrics: dict[str, float], state: dict[str, Any] | None) -> None:
        if state is not None:
            from pclc.train import save_checkpoint

            save_checkpoint({**state, "config": self.config}, self.path)
        self.inner.on_epoch(metrics, state)

    def on_final(self, evaluation: Any) -> None:
        self.inner.on_final(evaluation)

    def finished(self) -> None:
        """The run's results are written: its checkpoint is no longer needed to finish it."""
        self.path.unlink(missing_ok=True)
