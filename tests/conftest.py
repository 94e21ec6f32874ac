from __future__ import annotations

import os

import pytest
import torch

# Two cores on the CI machine: one torch thread per test process keeps runs predictable.
# PCLC_TEST_THREADS runs the suite under another thread count (what a test asserts must not depend on it).
torch.set_num_threads(int(os.environ.get("PCLC_TEST_THREADS", "1")))
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
# Ray starts its workers at niceness 15, so one other busy process on a 2-core machine leaves a trial ~4 %
# of a core and a 1-minute test takes 25. At the test's own priority a busy machine slows every part of a
# test alike. Inherited by the Rays the tests start here (in-process, `pclc sweep` subprocesses, local
# `ray start`), not by nodes that `ray up` starts over SSH.
os.environ.setdefault("RAY_worker_niceness", "0")


@pytest.fixture(autouse=True)
def _isolated_cwd(tmp_path: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test runs in its own folder, so nothing lands in the checkout (mlflow.db, runs/, …)."""
    monkeypatch.chdir(tmp_path)


FAST_TIMEOUT_S = 300  # pyproject's `timeout`: every test, unless it says otherwise
SLOW_TIMEOUT_S = 900  # an end-to-end test (real sweeps, cluster, browser) without its own timeout


# The suite's longest files, longest first (`pytest --durations`, summed per file, on the 2-core CI machine):
# a hint for the order only; a file missing here just starts later.
LONGEST_FILES = (
    "test_kill_points.py",
    "test_cluster_two_nodes.py",
    "test_faults.py",
    "test_concurrency.py",
    "test_sweeps.py",
    "test_benchmarks.py",
    "test_journey.py",
    "test_sweep_resume.py",
    "test_postgres.py",
    "test_sweep_cluster.py",
    "test_finalists.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Nothing hangs CI: slow tests get a longer explicit timeout than the global one, never none.

    Files run longest first, so that under `pytest -n 2 --dist loadfile` (make test) the long end-to-end
    files start early and the short ones fill in around them instead of trailing (with xdist's
    `--no-loadscope-reorder`, which make test passes: by default it orders files by their test count)."""
    for item in items:
        if item.get_closest_marker("slow") and not item.get_closest_marker("timeout"):
            item.add_marker(pytest.mark.timeout(SLOW_TIMEOUT_S))
    order = {name: i for i, name in enumerate(LONGEST_FILES)}
    items.sort(key=lambda item: order.get(item.path.name, len(order)))  # stable: the order within a file is kept
