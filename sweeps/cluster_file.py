"""What a `ray up` cluster file offers trials: how many worker nodes at most, and each one's CPUs and GPUs.

Read by `pclc sweep CONFIG --dry-run --cluster FILE` to say how many trials run at once on that cluster,
and so its wall time and GPU-hours. A node type's `resources` wins; an AWS node type that leaves them to
Ray's provider (`resources: {}`) is looked up by its instance type; a `local` provider's nodes must say
theirs (`--num-cpus` / `--num-gpus` in the worker start command) or be named in `available_node_types`.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

# vCPUs and GPUs of the AWS instance types GPU sweeps use (what Ray's AWS provider fills `resources` with)
AWS_INSTANCES: dict[str, tuple[int, int]] = {
    "g4dn.xlarge": (4, 1),
    "g4dn.2xlarge": (8, 1),
    "g4dn.4xlarge": (16, 1),
    "g4dn.8xlarge": (32, 1),
    "g4dn.12xlarge": (48, 4),
    "g4dn.16xlarge": (64, 1),
    "g4dn.metal": (96, 8),
    "g5.xlarge": (4, 1),
    "g5.2xlarge": (8, 1),
    "g5.4xlarge": (16, 1),
    "g5.8xlarge": (32, 1),
    "g5.12xlarge": (48, 4),
    "g5.16xlarge": (64, 1),
    "g5.24xlarge": (96, 4),
    "g5.48xlarge": (192, 8),
    "g6.xlarge": (4, 1),
    "g6.2xlarge": (8, 1),
    "g6.4xlarge": (16, 1),
    "g6.12xlarge": (48, 4),
    "g6.48xlarge": (192, 8),
    "p3.2xlarge": (8, 1),
    "p3.8xlarge": (32, 4),
    "p3.16xlarge": (64, 8),
    "p4d.24xlarge": (96, 8),
    "p5.48xlarge": (192, 8),
}


class ClusterFileError(ValueError):
    """A cluster file the dry run cannot size; the message names the file and what is missing."""


@dataclass(frozen=True)
class NodeType:
    name: str
    max_workers: int
    cpus: float
    gpus: float
    what: str  # e.g. "g5.2xlarge", or "resources" when the file gives them


@dataclass(frozen=True)
class Capacity:
    """The worker nodes a cluster file may start (the head runs no trials in the shipped files)."""

    source: str
    max_workers: int  # the file's cluster-wide cap
    node_types: tuple[NodeType, ...]

    def slots(self, cpu: float, gpu: float) -> int:
        """Trials that fit at once with every worker up: per node type, its nodes × the trials one node holds,
        the cluster-wide `max_workers` filled with the roomiest nodes first."""
        per_node = []
        for t in self.node_types:
            fit = math.floor(t.cpus / cpu + 1e-9) if cpu > 0 else math.inf
            if gpu > 0:
                fit = min(fit, math.floor(t.gpus / gpu + 1e-9))
            per_node += [int(fit)] * t.max_workers
        return sum(sorted(per_node, reverse=True)[: self.max_workers])

    def describe(self) -> str:
        parts = [f"{t.max_workers} × {t.name} ({t.what}: {t.cpus:g} CPU, {t.gpus:g} GPU)" for t in self.node_types]
        return f"{self.source}: up to {self.max_workers} workers: " + ", ".join(parts)


def _start_flag(commands: Any, flag: str) -> float | None:
    found = re.search(rf"{flag}[= ](\d+(?:\.\d+)?)", " ".join(map(str, commands or [])))
    return float(found[1]) if found else None


def read_capacity(path: str | Path) -> Capacity:
    """The worker capacity of a `ray up` cluster file; ClusterFileError naming what it cannot tell."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ClusterFileError(f"cluster file {path}: cannot read it ({exc})") from None
    if not isinstance(data, dict):
        raise ClusterFileError(f"cluster file {path}: not a Ray cluster file (no mapping at the top)")
    provider = (data.get("provider") or {}).get("type")
    head = data.get("head_node_type")
    types: list[NodeType] = []
    for name, spec in (data.get("available_node_types") or {}).items():
        if name == head:
            continue
        resources = {k.upper(): v for k, v in (spec.get("resources") or {}).items()}
        instance = (spec.get("node_config") or {}).get("InstanceType")
        if "CPU" in resources or "GPU" in resources:
            cpus, gpus, what = float(resources.get("CPU", 0)), float(resources.get("GPU", 0)), "resources"
        elif provider == "aws" and instance in AWS_INSTANCES:
            (cpus, gpus), what = AWS_INSTANCES[instance], instance
        else:
            raise ClusterFileError(
                f"cluster file {path}: node type {name!r} ({instance or 'no InstanceType'}) does not say its CPUs "
                f"and GPUs; give them as `resources: {{CPU: 8, GPU: 1}}` in available_node_types.{name}"
            )
        types.append(NodeType(name, int(spec.get("max_workers", data.get("max_workers", 0))), cpus, gpus, what))
    if not types and provider == "local":  # a fixed list of machines, sized by their `ray start` flags
        workers = len((data.get("provider") or {}).get("worker_ips") or [])
        commands = data.get("worker_start_ray_commands")
        cpus, gpus = _start_flag(commands, "--num-cpus"), _start_flag(commands, "--num-gpus")
        if cpus is None:
            raise ClusterFileError(
                f"cluster file {path}: its {workers} worker machines do not say their CPUs and GPUs; add "
                "`--num-cpus N --num-gpus M` to worker_start_ray_commands' `ray start`"
            )
        types.append(NodeType("worker", workers, cpus, gpus or 0.0, "ray start"))
    if not types:
        raise ClusterFileError(f"cluster file {path}: no worker node type (available_node_types besides the head)")
    cap = int(data.get("max_workers", sum(t.max_workers for t in types)))
    return Capacity(str(path), cap, tuple(types))
