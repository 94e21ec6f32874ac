"""Eight trials logging at once, on a real local Ray, to the SQLite store and to an `mlflow server`:
afterwards every parameter and every metric step each trial reported is in MLflow, once, all FINISHED."""

from __future__ import annotations

import functools
import io
from collections.abc import Iterator
from pathlib import Path

import pytest
import sweep_util
from ray import cloudpickle
from sweep_util import (
    MlflowServer,
    assert_mlflow_holds_every_report,
    local_ray,  # noqa: F401  (a fixture)
    tiny_optimize,
)

from sweeps.driver import run_sweep

cloudpickle.register_pickle_by_value(sweep_util)  # Ray workers cannot import the tests folder

TRIALS = 8


@pytest.fixture(params=["sqlite", "server"])
def tracking_uri(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'mlflow.db'}"
        return
    server = MlflowServer(tmp_path)
    server.start()
    try:
        yield server.uri
    finally:
        server.stop()


@pytest.mark.slow
def test_eight_trials_logging_at_once_lose_nothing_and_duplicate_nothing(
    local_ray: None, tracking_uri: str, tmp_path: Path
) -> None:
    notes_dir = tmp_path / "notes"
    notes_dir.mkdir()
    # a quarter CPU each: all eight run side by side on two cores, each writing to the store every epoch
    cfg = tiny_optimize(
        "parallel",
        tmp_path,
        num_trials=TRIALS,
        max_concurrent=TRIALS,
        resources={"cpu": 0.25},
        trial={"epochs": 2},
        max_retries=0,
    )
    # after its first epoch each trial waits for 4 to have reported one: the overlap asserted below is an event,
    # not a race that a loaded machine loses (Ray then starts the eight trials seconds apart)
    run_fn = functools.partial(sweep_util.noting_reports, notes_dir=str(notes_dir), together=4)
    result = run_sweep(cfg, tracking_uri=tracking_uri, run_fn=run_fn, out=io.StringIO())

    assert result.failed == [] and len(result.finished) == TRIALS
    assert_mlflow_holds_every_report(tracking_uri, "parallel", notes_dir, cfg.trial)

    # they really overlapped: some trial reported an epoch while another was between its first and last report
    spans = []
    for path in notes_dir.glob("*.jsonl"):
        times = [n["time"] for n in sweep_util.notes(path) if "time" in n]
        spans.append((min(times), max(times)))
    spans.sort()
    overlapping = max(sum(1 for s in spans if s[0] <= start <= s[1]) for start, _ in spans)
    assert overlapping >= 4, spans
