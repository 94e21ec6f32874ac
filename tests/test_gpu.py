"""pclc.gpu on a CPU machine: the fail-fast decision for a trial given a GPU it cannot use, the driver
read from where Linux and nvidia-smi keep it, IEEE fp32 inside attacks (and restored after), native bf16."""

from __future__ import annotations

import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from pclc import gpu
from pclc.gpu import GPUUnavailableError, check_gpus_usable, fp32_precision


# ------------------------------------------------------------------ a trial given a GPU it cannot use
def test_a_trial_given_no_gpu_never_fails_the_check() -> None:
    check_gpus_usable(gpu_ids=[], cuda_available=False, driver="none", torch_cuda="13.0")
    check_gpus_usable(gpu_ids=["0"], cuda_available=True, driver="580.65.06", torch_cuda="13.0")


def test_an_old_driver_is_named_with_torchs_cuda_and_the_driver_it_needs() -> None:
    with pytest.raises(GPUUnavailableError) as err:
        check_gpus_usable(gpu_ids=["1"], cuda_available=False, driver="550.54.15", torch_cuda="13.0")
    message = str(err.value)
    assert "given GPU 1" in message and "torch.cuda.is_available() is False" in message
    assert "NVIDIA driver 550.54.15" in message and "CUDA 13.0" in message and ">= 580" in message


@pytest.mark.parametrize(
    ("driver", "torch_cuda", "says"),
    [
        ("none", "13.0", "no NVIDIA driver found"),
        ("none", "none", "CPU-only build"),
        ("580.82.07", "13.0", "check `nvidia-smi` and CUDA_VISIBLE_DEVICES"),  # new enough: something else is wrong
        ("535.183.06", "12.6", "check `nvidia-smi`"),  # a CUDA 12 wheel runs on 535
    ],
)
def test_every_reason_is_said_in_words(driver: str, torch_cuda: str, says: str) -> None:
    with pytest.raises(GPUUnavailableError) as err:
        check_gpus_usable(gpu_ids=[0], cuda_available=False, driver=driver, torch_cuda=torch_cuda)
    assert "given GPU 0" in str(err.value) and says in str(err.value)
    if torch_cuda != "none":
        assert f"CUDA {torch_cuda}" in str(err.value)


# ------------------------------------------------------------------ the driver version
@pytest.mark.parametrize(
    "text",
    [
        "NVRM version: NVIDIA UNIX x86_64 Kernel Module  550.54.15  Tue Mar  5 22:23:56 UTC 2024\nGCC version: gcc 11\n",
        "NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  550.54.15  Release Build  (dvs-builder@U16)\n",
    ],
)
def test_driver_read_from_proc(text: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "version").write_text(text)
    monkeypatch.setattr(gpu, "DRIVER_FILE", tmp_path / "version")
    assert gpu.nvidia_driver_version() == "550.54.15"
    assert gpu.main() == 2  # the node check `cluster/setup_node.sh` runs: this torch wants >= 580


def test_driver_read_from_nvidia_smi_else_none(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gpu, "DRIVER_FILE", tmp_path / "missing")
    monkeypatch.setenv("PATH", str(tmp_path))
    assert gpu.nvidia_driver_version() is None
    smi = tmp_path / "nvidia-smi"
    smi.write_text('#!/bin/sh\n[ "$1" = --query-gpu=driver_version ] && echo 580.82.07\n')
    smi.chmod(smi.stat().st_mode | stat.S_IXUSR)
    assert gpu.nvidia_driver_version() == "580.82.07"


def test_this_cpu_machine_reports_none_for_the_gpu() -> None:
    info = gpu.cuda_info()
    assert info.torch_cuda == (torch.version.cuda or "none") and info.available is torch.cuda.is_available()
    tags = info.tags(device=torch.device("cpu"))
    assert tags == {"pclc.torch_cuda": info.torch_cuda, "pclc.nvidia_driver": info.driver, "pclc.gpu_name": "none"}
    if not torch.cuda.is_available():
        assert gpu.bf16_native() is False


# ------------------------------------------------------------------ IEEE fp32 inside, restored after
def _settings() -> tuple[object, ...]:
    return tuple(getattr(owner, name) for owner, name in gpu._precision_flags())


@pytest.fixture
def tf32_everywhere() -> Iterator[tuple[object, ...]]:
    """Matmuls and convolutions set to TF32 (a user's choice the context must put back), reset after."""
    flags = gpu._precision_flags()
    before = _settings()
    for owner, name in flags:
        setattr(owner, name, "tf32" if name == "fp32_precision" else True)
    yield _settings()
    for (owner, name), value in zip(flags, before):
        setattr(owner, name, value)


def test_fp32_precision_is_ieee_inside_and_restored_after(tf32_everywhere: tuple[object, ...]) -> None:
    ieee = ("ieee", "ieee") if hasattr(torch.backends.cuda.matmul, "fp32_precision") else (False, False)
    with fp32_precision():
        assert _settings() == ieee
        with fp32_precision():  # nested (an attack inside the evaluation): still IEEE, and the outer one survives
            assert _settings() == ieee
        assert _settings() == ieee
    assert _settings() == tf32_everywhere


def test_fp32_precision_is_restored_after_an_exception(tf32_everywhere: tuple[object, ...]) -> None:
    with pytest.raises(RuntimeError, match="mid-attack"), fp32_precision():
        raise RuntimeError("mid-attack")
    assert _settings() == tf32_everywhere


def test_the_default_settings_come_back_too() -> None:
    before = _settings()
    with fp32_precision():
        pass
    assert _settings() == before
