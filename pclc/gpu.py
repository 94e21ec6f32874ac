"""What this node's GPU stack is and how a trial may use it: driver and CUDA versions, the fail-fast
check for a trial that was given a GPU it cannot use, IEEE fp32 for attacks, native bf16.

Knows nothing of Ray: the caller says which GPUs it was given (`check_gpus_usable(gpu_ids=…)`).
`python -m pclc.gpu` prints this node's versions and exits 2 when its driver is too old for torch's CUDA
(cluster/setup_node.sh runs it on every node).
"""

from __future__ import annotations

import contextlib
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

NONE = "none"  # the tag value for "no such thing here" (no driver, a CPU-only torch, a trial on the CPU)
DRIVER_FILE = Path("/proc/driver/nvidia/version")
# Oldest driver branch each CUDA major release runs on (NVIDIA's minor-version compatibility table).
MIN_DRIVER = {11: 450, 12: 525, 13: 580}


class GPUUnavailableError(RuntimeError):
    """A trial was given a GPU but torch cannot use CUDA: fail now, not after hours on the CPU."""


@dataclass(frozen=True)
class CudaInfo:
    """The node's GPU stack as a trial sees it; each field is a version or name, or "none"."""

    torch_cuda: str  # torch.version.cuda: the CUDA the wheel was built for ("none": a CPU-only build)
    driver: str  # the NVIDIA kernel driver ("none": none found)
    available: bool  # torch.cuda.is_available()

    def tags(self, *, device: torch.device) -> dict[str, str]:
        """MLflow tags for a trial on `device`: torch's CUDA, the driver, and the GPU name ("none" off a GPU)."""
        name = torch.cuda.get_device_name(device) if device.type == "cuda" and self.available else NONE
        return {"pclc.torch_cuda": self.torch_cuda, "pclc.nvidia_driver": self.driver, "pclc.gpu_name": name}


def nvidia_driver_version() -> str | None:
    """The NVIDIA driver version from /proc/driver/nvidia/version, else nvidia-smi; None if neither has one."""
    try:
        found = re.search(r"Kernel Module(?: for \S+)?\s+(\d+(?:\.\d+)+)", DRIVER_FILE.read_text())
        if found:
            return found.group(1)
    except OSError:
        pass
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    try:
        out = subprocess.run(
            [smi, "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    first = out.stdout.strip().splitlines()[:1]
    return first[0].strip() if out.returncode == 0 and first and first[0].strip() else None


def cuda_info() -> CudaInfo:
    """This process's view: torch's CUDA build, the node's driver, whether CUDA works."""
    return CudaInfo(
        torch_cuda=torch.version.cuda or NONE,
        driver=nvidia_driver_version() or NONE,
        available=torch.cuda.is_available(),
    )


def required_driver(torch_cuda: str) -> int | None:
    """The oldest driver branch torch's CUDA `torch_cuda` ("13.0") runs on; None if unknown or no CUDA."""
    try:
        return MIN_DRIVER.get(int(torch_cuda.split(".")[0]))
    except ValueError:
        return None


def driver_problem(*, driver: str, torch_cuda: str) -> str | None:
    """Why this driver cannot run torch's CUDA, in words; None when it can (or nothing is known)."""
    need = required_driver(torch_cuda)
    if need is None or driver == NONE:
        return None
    try:
        major = int(driver.split(".")[0])
    except ValueError:
        return None
    if major >= need:
        return None
    return (
        f"NVIDIA driver {driver} is too old for torch {torch.__version__}, built for CUDA {torch_cuda}: "
        f"it needs a driver >= {need} (use a newer AMI or driver, or a torch wheel built for an older CUDA)"
    )


def check_gpus_usable(
    *, gpu_ids: Sequence[str | int], cuda_available: bool, driver: str, torch_cuda: str, who: str = "this trial"
) -> None:
    """Raise GPUUnavailableError when GPUs were assigned (`gpu_ids`) but CUDA is unusable; else nothing.

    Pure: the caller passes what it was given and what it found, so the decision is testable anywhere.
    """
    if not gpu_ids or cuda_available:
        return
    given = ", ".join(str(i) for i in gpu_ids)
    if torch_cuda == NONE:
        why = f"this torch ({torch.__version__}) is a CPU-only build (torch.version.cuda is None); install a CUDA wheel"
    elif driver == NONE:
        why = (
            f"no NVIDIA driver found (no {DRIVER_FILE}, no nvidia-smi); torch is built for CUDA {torch_cuda}, "
            f"which needs a driver >= {required_driver(torch_cuda) or '?'}"
        )
    else:
        why = driver_problem(driver=driver, torch_cuda=torch_cuda) or (
            f"NVIDIA driver {driver}, torch built for CUDA {torch_cuda}; the driver is new enough, "
            "so check `nvidia-smi` and CUDA_VISIBLE_DEVICES on this node"
        )
    raise GPUUnavailableError(
        f"{who} was given GPU {given} but torch.cuda.is_available() is False: {why}. "
        "Refusing to train on the CPU while a GPU is reserved"
    )


def bf16_native() -> bool:
    """True when the current CUDA GPU does bf16 in hardware (Ampere and later; not a T4)."""
    if not torch.cuda.is_available():
        return False
    try:
        return bool(torch.cuda.is_bf16_supported(including_emulation=False))
    except TypeError:  # an older torch without the argument: count compute capability >= 8.0 as native
        return torch.cuda.get_device_capability()[0] >= 8


def _precision_flags() -> list[tuple[object, str]]:
    """(owner, attribute) of the fp32 precision settings for CUDA matmuls and cuDNN convolutions."""
    matmul, conv = torch.backends.cuda.matmul, getattr(torch.backends.cudnn, "conv", None)
    if hasattr(matmul, "fp32_precision") and conv is not None and hasattr(conv, "fp32_precision"):
        return [(matmul, "fp32_precision"), (conv, "fp32_precision")]
    return [(matmul, "allow_tf32"), (torch.backends.cudnn, "allow_tf32")]  # torch before the fp32_precision API


@contextlib.contextmanager
def fp32_precision() -> Iterator[None]:
    """IEEE fp32 (no TF32) for CUDA matmuls and cuDNN convolutions inside; the previous settings after,
    also on an exception. Attacks and evaluation read small differences (SPSA's finite differences,
    the masking checks) that TF32's 10-bit mantissa would blur."""
    flags = _precision_flags()
    before = [getattr(owner, name) for owner, name in flags]
    try:
        for owner, name in flags:
            setattr(owner, name, "ieee" if name == "fp32_precision" else False)
        yield
    finally:
        for (owner, name), value in zip(flags, before):
            setattr(owner, name, value)


def main() -> int:
    """Print this node's GPU stack; exit 2 when its driver cannot run torch's CUDA."""
    info = cuda_info()
    print(
        f"torch {torch.__version__} (CUDA {info.torch_cuda}), NVIDIA driver {info.driver}, "
        f"CUDA usable: {info.available}"
    )
    problem = driver_problem(driver=info.driver, torch_cuda=info.torch_cuda)
    if problem:
        print(f"pclc.gpu: {problem}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
