"""Limits a sweep can set that nothing can meet, and tracking stores that cannot answer: found before Ray starts
(a server that does not answer or a SQLite file in a missing folder is one clear error, exit 2, not a failure
after the first trial trained).

The sweep file's schema (`sweeps.config`) says what each field may hold; this module says what the
sweep as a whole can get: no more confirmed configurations than the search can find, no more GPUs per
trial than a machine holds, a tracking database that answers within seconds. No Ray import here.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Protocol

from pclc.contract import database_problem, sqlite_problem

__all__ = [
    "MAX_GPUS_PER_TRIAL",
    "TrackingStoreError",
    "check_tracking_store",
    "database_problem",
    "distinct_configurations",
    "limit_problems",
    "local_gpu_problem",
]


class SweepConfig(Protocol):
    """What these checks read of a sweep (`sweeps.config.SweepConfig`, which imports this module: named here, not
    imported, so the two make no circle)."""

    mode: str
    num_trials: int | None
    space: dict[str, Any]
    confirm: Any
    resources: Any


# The most GPUs one trial may reserve: a trial runs on one machine, and none holds more (an 8- or 16-GPU
# node is the largest sold); Ray would leave a trial asking for more pending for ever.
MAX_GPUS_PER_TRIAL = 16


def distinct_configurations(cfg: SweepConfig) -> float:
    """How many distinct configurations an optimize sweep's search can try: its trials, fewer when every
    searched dimension (the seed aside) is discrete; `math.inf` never (num_trials bounds it)."""
    sizes: list[float] = []
    for name, param in cfg.space.items():
        if name == "seed":  # configurations differing only in seed are one configuration
            continue
        if param.type == "choice":
            sizes.append(len({repr(v) for v in param.values or []}))
        elif param.type == "int":
            sizes.append(int(param.high) - int(param.low) + 1)  # type: ignore[arg-type]
        else:
            sizes.append(math.inf)
    return min(float(cfg.num_trials or 0), math.prod(sizes))


def limit_problems(cfg: SweepConfig) -> list[str]:
    """One line per limit the sweep sets that cannot be met (the sweep file's other checks come first)."""
    out: list[str] = []
    if cfg.mode == "optimize" and cfg.confirm.top and cfg.num_trials:
        most = distinct_configurations(cfg)
        if cfg.confirm.top > most:
            out.append(
                f"confirm.top = {cfg.confirm.top}: the search can find at most {int(most)} distinct configuration(s) "
                f"({cfg.num_trials} trials over `space`); set confirm.top to {int(most)} or fewer, or search more"
            )
    if cfg.resources.gpu > MAX_GPUS_PER_TRIAL:
        out.append(
            f"resources.gpu = {cfg.resources.gpu:g}: a trial runs on one machine and none holds more than "
            f"{MAX_GPUS_PER_TRIAL} GPUs; give a share of one GPU (0.25) or a few whole ones"
        )
    return out


def local_gpu_problem(cfg: SweepConfig, gpus_here: int) -> str | None:
    """A local Ray (no --address) offers this machine's `gpus_here` GPUs: a trial asking for more would wait for
    ever. None when the sweep fits, or when it asks for no GPU."""
    if cfg.resources.gpu <= gpus_here or cfg.resources.gpu == 0:
        return None
    return (
        f"resources.gpu = {cfg.resources.gpu:g}: this machine has {gpus_here} GPU(s) and, without --address, the "
        f"sweep runs on a local Ray here; set resources.gpu to {gpus_here} or less"
        + (" (0: CPU only)" if gpus_here == 0 else "")
        + ", or give --address to run on a cluster"
    )


class TrackingStoreError(ValueError):
    """The MLflow tracking store cannot be reached or created; found before Ray starts."""


def check_tracking_store(uri: str, *, timeout: float = 5.0) -> None:
    """Fail fast when `uri` cannot work: a server that does not answer, a SQLite file in a missing folder.

    Only connection failures count: any HTTP answer (even 401/404 from a proxy) means a server is there.
    """
    if uri.startswith("sqlite:///"):
        db = Path(uri.removeprefix("sqlite:///"))
        if not db.parent.is_dir():
            raise TrackingStoreError(
                f"tracking URI {uri}: folder {db.parent} does not exist; create it or point --tracking-uri elsewhere"
            )
        if db.exists() and (problem := sqlite_problem(db)):
            raise TrackingStoreError(f"tracking URI {uri}: {problem}")
        if not os.access(db if db.exists() else db.parent, os.W_OK):
            raise TrackingStoreError(f"tracking URI {uri}: {db if db.exists() else db.parent} is not writable")
        return
    if uri.startswith(("http://", "https://")):
        import http.client
        import urllib.error
        import urllib.request

        try:
            with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout):
                return
        except urllib.error.HTTPError:
            return  # something answered
        except (urllib.error.URLError, OSError, http.client.HTTPException, ValueError) as exc:  # incl. bad host names
            reason = getattr(exc, "reason", exc)
            raise TrackingStoreError(
                f"MLflow tracking server {uri} cannot be reached ({reason}); start it "
                f"(mlflow server --host 127.0.0.1 --port PORT) or check --tracking-uri"
            ) from None
    if problem := database_problem(uri, timeout=timeout):
        raise TrackingStoreError(problem)
