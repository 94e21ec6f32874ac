"""Trials and the GPUs Ray hands out, on this CPU machine: a local Ray that declares a GPU gives a trial
GPU 0 (CUDA_VISIBLE_DEVICES, accelerator ids) while torch has no CUDA, which is what a GPU node with too
old a driver looks like to a trial. Also: `device: auto` without a Ray GPU, and ASHA's rung epochs."""

from __future__ import annotations

import io
import math
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import ray
import torch
from sweep_util import history, runs, tiny_optimize

from sweeps.driver import build_scheduler, run_sweep
from sweeps.trainable import trial_device


# ------------------------------------------------------------------ what needs no Ray
def test_auto_means_cpu_for_a_trial_given_no_gpu() -> None:
    assert trial_device("auto", gpu_ids=[]) == "cpu"
    assert trial_device("auto", gpu_ids=["0"]) == "auto"
    assert trial_device("cuda", gpu_ids=["1"]) == "cuda" and trial_device("cpu", gpu_ids=["0"]) == "cpu"


@pytest.mark.parametrize(
    ("epochs", "grace", "factor"), [(40, 5, 2.0), (120, 10, 3.0), (4, 1, 2.0), (12, 3, 1.5), (3, 2, 2.0)]
)
def test_rung_epochs_are_the_epochs_ray_asha_decides_at(tmp_path: Path, epochs: int, grace: int, factor: float) -> None:
    cfg = tiny_optimize(
        "rungs",
        tmp_path,
        trial={"epochs": epochs, "warmup_epochs": 1},
        scheduler={"type": "asha", "grace_period": grace, "reduction_factor": factor},
    )
    bracket = build_scheduler(cfg)._brackets[0]  # type: ignore[union-attr]
    # A trial is recorded at a rung by the first epoch that reaches the rung's milestone.
    assert cfg.rung_epochs() == tuple(sorted(math.ceil(milestone) for milestone, _ in bracket._rungs))
    assert tiny_optimize("none", tmp_path).rung_epochs() == ()


# ------------------------------------------------------------------ a trial given a GPU torch cannot use
@pytest.fixture(scope="module")
def ray_with_a_gpu() -> Iterator[None]:
    """A private local Ray that declares one GPU: Ray assigns it to trials as on a GPU node."""
    ray.init(address="local", num_cpus=2, num_gpus=1, include_dashboard=False, configure_logging=False)
    yield
    ray.shutdown()


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine where torch has no usable CUDA")
def test_a_trial_given_a_gpu_it_cannot_use_fails_at_once_naming_driver_and_cuda(
    ray_with_a_gpu: None, tmp_path: Path
) -> None:
    cfg = tiny_optimize(
        "no_cuda",
        tmp_path,
        num_trials=1,
        max_concurrent=1,
        max_retries=0,
        resources={"cpu": 1, "gpu": 0.5},
        trial={"epochs": 50},
    )
    started = time.monotonic()
    result = run_sweep(cfg, out=io.StringIO())
    assert time.monotonic() - started < 240  # 50 epochs on the CPU would take far longer

    assert len(result.failed) == 1 and not result.finished
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    _, children = runs(uri, "no_cuda")
    (child,) = children
    reason = child.data.tags["pclc.failure_reason"]
    assert child.info.status == "FAILED" and reason.startswith("GPUUnavailableError")
    assert "given GPU 0" in reason and "torch.cuda.is_available() is False" in reason
    assert f"CUDA {torch.version.cuda}" in reason and ("NVIDIA driver" in reason or "CPU-only" in reason)
    assert history(uri, child, "epoch") == []  # it failed before training, not after
    tags = child.data.tags
    assert tags["pclc.torch_cuda"] == (torch.version.cuda or "none") and tags["pclc.gpu_name"] == "none"
    assert tags["pclc.nvidia_driver"]  # "none" here; the driver's version on a GPU node
