"""The thin Ray Tune trainable: sampled params → TrialConfig → `pclc.experiment.run_trial`.

It only reads the config and reports: every epoch goes to MLflow (per-epoch metrics) and to Tune
(with a checkpoint every `checkpoint_every` epochs, at ASHA's rungs and at the last epoch, so a retried
or resumed trial continues from its last checkpoint); the final
evaluation goes to MLflow (metrics, evaluation.json, per-sample outcomes.json, weights) before Tune
hears of it, so a kill at any point leaves nothing half-recorded that a retry would duplicate. Metrics the tracking
server could not take (it was down) wait in the trial's output folder (`PENDING_FILE`).
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import socket
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import ray
import torch
from ray import tune

from pclc import contract as C
from pclc import metrics as M
from pclc.config import TrialConfig, make_config
from pclc.gpu import check_gpus_usable, cuda_info
from pclc.train import load_checkpoint, save_checkpoint
from sweeps.config import LABELS, REFERENCE, SEARCH_TRIAL, VARIANT
from sweeps.tracking import TrackingTarget, TrialRun

if TYPE_CHECKING:
    from pclc.experiment import Evaluation

CHECKPOINT_FILE = "state.pt"
PENDING_FILE = "mlflow_pending.json"  # in the trial's output folder: metrics MLflow has not taken yet
GRID_KEY = "trial"  # ablation and confirmation: Tune grid-searches over override dicts under this key
LABEL_TAGS = {VARIANT: C.VARIANT, REFERENCE: C.REFERENCE, SEARCH_TRIAL: C.SEARCH_TRIAL}  # override label → run tag

RunTrial = Callable[
    ..., dict[str, float]
]  # pclc.experiment.run_trial's signature: (cfg, reporter, *, prepared, resume)


@dataclass(frozen=True)
class TrialSetup:
    """What every trial of a sweep shares, besides the prepared data (sent once via the object store)."""

    base: dict[str, Any]  # the base TrialConfig as a dict
    outputs_root: str  # absolute folder; each trial writes metrics.json (+ weights) to <root>/<trial_id>
    threads: int  # torch threads: the trial's CPU share
    target: TrackingTarget
    searched: tuple[str, ...] = ()  # the TrialConfig fields this sweep varies
    run_fn: RunTrial | None = None  # default pclc.experiment.run_trial; tests inject faults here
    extra_tags: dict[str, str] = field(default_factory=dict)
    experiment_path: str = ""  # <storage_path>/<name>: named in errors when the storage is full
    skip_recorded_failures: bool = False  # resumed sweep: a deterministic failure is not re-run (`--retry-failed`)
    checkpoint_epochs: tuple[int, ...] = ()  # the scheduler's rungs: trials checkpoint there besides checkpoint_every


class RecordedFailure(RuntimeError):
    """The trial failed before for a reason that would repeat; a resume does not run it again."""


def _deterministic(exc: BaseException) -> bool:
    # Failures a re-run would repeat: a diverging loss, a config the library refuses, unreadable data.
    from pclc.config import ConfigError
    from pclc.data import DataError
    from pclc.train import NonFiniteLossError

    return isinstance(exc, (NonFiniteLossError, ConfigError, DataError))


def trial_config(setup: TrialSetup, config: dict[str, Any], trial_id: str) -> TrialConfig:
    """The TrialConfig of this trial: base ← sampled params, with its own absolute output folder."""
    sampled = config.get(GRID_KEY, config)  # ablation, confirmation: one grid point's overrides under GRID_KEY
    values = {**setup.base, **{k: v for k, v in sampled.items() if k not in LABELS}}
    values["out_dir"] = str(Path(setup.outputs_root) / trial_id)
    values["threads"] = setup.base.get("threads") or setup.threads
    return make_config(values, source=f"trial {trial_id}")


def _node_tags() -> dict[str, str]:
    ctx = ray.get_runtime_context()
    return {
        "pclc.node_id": ctx.get_node_id(),
        "pclc.node_ip": ray.util.get_node_ip_address(),
        "pclc.hostname": socket.gethostname(),
        "pclc.pid": str(os.getpid()),
    }


def assigned_gpu_ids() -> list[str]:
    """The GPUs Ray assigned to this worker (it also sets CUDA_VISIBLE_DEVICES to them); [] for none."""
    ids = ray.get_runtime_context().get_accelerator_ids().get("GPU", [])
    return [str(i) for i in ids]


def trial_device(preference: str, *, gpu_ids: list[str]) -> str:
    """The device preference a trial runs with: `auto` means the CPU when Ray gave it no GPU.

    Ray no longer hides the GPUs from a worker that asked for none, so `auto` alone would pick a GPU
    nobody reserved (a CPU sweep on a GPU node). An explicit choice stays as it is.
    """
    return "cpu" if preference == "auto" and not gpu_ids else preference


def gpu_share() -> float:
    """The fraction of a GPU Ray gave this trial (0 when it asked for none)."""
    return float(ray.get_runtime_context().get_assigned_resources().get("GPU", 0.0))


def clocked(metrics: dict[str, float], *, final: bool = False) -> dict[str, float]:
    """`metrics` with Tune's `training_iteration` set from the trial's own epoch, as an uninterrupted trial counts
    it: epoch k is report k, the final evaluation report epochs + 1.

    Tune counts reports from the iteration the experiment snapshot knew; a trial resumed from a newer checkpoint
    (`restoring_from_storage`: the named one was gone) would report epoch 5 as iteration 3. ASHA's clock is
    `epoch` (`sweeps.driver.build_scheduler`), true either way; this keeps Tune's own count, what the searcher
    and the result files show, on the same clock (Tune keeps a `training_iteration` the trial reports).
    """
    from ray.tune.result import TRAINING_ITERATION

    if M.EPOCH not in metrics:
        return metrics
    return {**metrics, TRAINING_ITERATION: int(metrics[M.EPOCH]) + (1 if final else 0)}


def _load_resume() -> dict[str, Any] | None:
    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as folder:
        return load_checkpoint(Path(folder) / CHECKPOINT_FILE)  # weights_only=True


def trainable(config: dict[str, Any], *, prepared: Any, setup: TrialSetup) -> None:
    """One Tune trial. `prepared` (data + substitute) comes from `tune.with_parameters`."""
    logging.getLogger("ray.train._internal.storage").setLevel(logging.WARNING)  # one line per checkpoint
    trial_id = tune.get_context().get_trial_id()
    cfg = trial_config(setup, config, trial_id)
    torch.set_num_threads(cfg.threads or 1)
    gpu_ids = assigned_gpu_ids()
    device = trial_device(cfg.device, gpu_ids=gpu_ids)
    cuda = cuda_info()
    on_gpu = cuda.available and device in ("auto", "cuda")
    tags = {
        **_node_tags(),
        **setup.extra_tags,
        C.SEARCHED: json.dumps(list(setup.searched)),
        **cuda.tags(device=torch.device("cuda" if on_gpu else "cpu")),
    }
    for label, value in config.get(GRID_KEY, {}).items():
        if label in LABEL_TAGS:
            tags[LABEL_TAGS[label]] = str(value)
    out = Path(cfg.out_dir)  # type: ignore[arg-type]
    run = TrialRun.open(
        setup.target,
        trial_id=trial_id,
        params=cfg.to_dict(),
        tags=tags,
        buffer_path=out / PENDING_FILE,
        keep_recorded_failure=setup.skip_recorded_failures,
    )
    if run.recorded_failure is not None:
        raise RecordedFailure(
            f"not re-run: it failed before for a reason that would repeat ({run.recorded_failure}); "
            "resume with --retry-failed to run it again"
        )

    done = run.finished_metrics()
    if done is not None:  # an earlier attempt finished and logged everything; only Tune missed it
        tune.report(clocked(done, final=True))
        return

    run_fn = setup.run_fn
    if run_fn is None:
        from pclc.experiment import run_trial as run_fn
    reporter = TuneReporter(
        run,
        weights=out / C.WEIGHTS_FILE if cfg.save_weights else None,
        checkpoint_dest=f"{setup.experiment_path}/trial_{trial_id}" if setup.experiment_path else "the storage_path",
        gpu_share=gpu_share(),
    )
    try:
        # A trial Ray gave a GPU that torch cannot use fails now, not after hours of training on 2 threads.
        check_gpus_usable(
            gpu_ids=gpu_ids, cuda_available=cuda.available, driver=cuda.driver, torch_cuda=cuda.torch_cuda
        )
        with _naming(out, "writing the trial's outputs under"):
            run_fn(
                cfg,
                reporter,
                prepared=prepared,
                resume=_load_resume(),  # a corrupt checkpoint fails here too
                device=device,
                checkpoint_at=setup.checkpoint_epochs,
                signal_at=setup.checkpoint_epochs,  # the scheduler's rungs: where it reads the signal
            )
    except Exception as exc:  # not SystemExit: that is Tune stopping the trial (ASHA), not a failure
        # Tune may retry (the run reopens); the driver gives the final word when retries run out.
        try:
            run.fail(f"{type(exc).__name__}: {exc}", deterministic=_deterministic(exc))
        except Exception as tracking_exc:  # MLflow unreachable: keep the trial's own error
            print(f"pclc trial: warning: cannot record the failure in MLflow: {tracking_exc}", flush=True)
        raise


# ------------------------------------------------------------------ restore from whatever is on storage
def newest_checkpoint_on_storage(checkpoint: tune.Checkpoint) -> tune.Checkpoint | None:
    """`checkpoint` if it exists, else the newest `checkpoint_*` beside it on the same storage, else None.

    Tune's experiment snapshot can name a checkpoint that `num_to_keep` deleted after the snapshot was
    written; a driver killed in that window would otherwise fail the trial on every resume.
    """
    import pyarrow.fs

    fs, path = checkpoint.filesystem, checkpoint.path
    if fs.get_file_info(path).type != pyarrow.fs.FileType.NotFound:
        return checkpoint
    parent = path.rstrip("/").rsplit("/", 1)[0]
    try:
        found = fs.get_file_info(pyarrow.fs.FileSelector(parent, allow_not_found=True))
    except OSError:
        return None
    names = sorted(
        (
            info.path
            for info in found
            if info.type == pyarrow.fs.FileType.Directory
            and info.base_name.startswith("checkpoint_")
            and (fs.get_file_info(f"{info.path}/{CHECKPOINT_FILE}").type == pyarrow.fs.FileType.File)
        ),
        key=lambda p: p.rsplit("/", 1)[-1],
    )
    return tune.Checkpoint(names[-1], filesystem=fs) if names else None


def restoring_from_storage(fn: Callable[..., Any]) -> type:
    """The function trainable as a Tune class, restoring from the newest checkpoint that still exists
    (or from scratch when none is left) instead of failing the trial on every resume."""
    from ray.tune.trainable.function_trainable import wrap_function

    trainable_cls = wrap_function(fn)

    class RestoreFromStorage(trainable_cls):  # type: ignore[misc, valid-type]
        def restore(self, checkpoint_path: Any) -> Any:
            result = checkpoint_path
            checkpoint = getattr(result, "checkpoint", None)
            if checkpoint is not None:
                found = newest_checkpoint_on_storage(checkpoint)
                if found is None:  # nothing left to resume from: the trial starts over (MLflow skips logged epochs)
                    print(
                        f"pclc trial: checkpoint {checkpoint.path} is gone and none is left: starting over", flush=True
                    )
                    return None
                if found is not checkpoint:
                    print(f"pclc trial: checkpoint {checkpoint.path} is gone: resuming from {found.path}", flush=True)
                    result.checkpoint = found
            return super().restore(result)

    RestoreFromStorage.__name__ = RestoreFromStorage.__qualname__ = trainable_cls.__name__
    return RestoreFromStorage


class StorageFullError(OSError):
    """A write failed for lack of space; the message names the path (Python's own often does not)."""


@contextlib.contextmanager
def _naming(path: Path | str, doing: str = "writing") -> Iterator[None]:
    """Give a failed write a message that names the path: 'No space left on device' alone says not where."""
    try:
        yield
    except StorageFullError:
        raise
    except Exception as exc:  # an OSError, or Ray's wrapping of one
        if getattr(exc, "errno", None) != errno.ENOSPC and "no space left" not in str(exc).lower():
            raise
        raise StorageFullError(errno.ENOSPC, f"No space left on device while {doing} {path}") from exc


class TuneReporter:
    """A trial's reporter: each epoch to MLflow, then to Tune with a checkpoint; the final evaluation to
    MLflow (metrics, evaluation.json, outcomes.json, weights), then to Tune, so a kill never leaves half a
    record."""

    def __init__(self, run: TrialRun, *, weights: Path | None, checkpoint_dest: str, gpu_share: float) -> None:
        self.run, self.weights, self.checkpoint_dest = run, weights, checkpoint_dest
        self.gpu_share = gpu_share
        self.last_epoch: dict[str, float] = {}

    def _priced(self, metrics: dict[str, float]) -> dict[str, float]:
        """run_trial counts a whole GPU; the trial holds the share Ray gave it."""
        if metrics.get(M.GPU_HOURS):
            return {**metrics, M.GPU_HOURS: metrics[M.GPU_HOURS] * self.gpu_share}
        return metrics

    def on_epoch(self, metrics: dict[str, float], state: dict[str, Any] | None) -> None:
        metrics = self._priced(metrics)
        self.run.log_epoch(metrics)
        self.last_epoch = dict(metrics)
        if state is None:  # between checkpoints (`checkpoint_every`): a resume starts from the last one
            tune.report(clocked(metrics))
            return
        with tempfile.TemporaryDirectory(prefix="pclc-ckpt-") as folder:
            with _naming(Path(folder) / CHECKPOINT_FILE):
                save_checkpoint(state, Path(folder) / CHECKPOINT_FILE)
            with _naming(self.checkpoint_dest, "saving the checkpoint into"):
                tune.report(clocked(metrics), checkpoint=tune.Checkpoint.from_directory(folder))

    def on_final(self, evaluation: Evaluation) -> None:
        evaluation = replace(evaluation, metrics=self._priced(evaluation.metrics))
        outcomes = evaluation.outcomes.to_json() if evaluation.outcomes is not None else None
        self.run.log_final(evaluation.metrics, evaluation.to_dict(), self.weights, outcomes=outcomes)
        # Tune gets the last per-epoch values too (e.g. epoch_robust_acc for ASHA) under the final ones
        last_epoch = self.last_epoch or self.run.logged_at(int(evaluation.metrics[M.EPOCH]))
        tune.report(clocked({**last_epoch, **evaluation.metrics}, final=True))
