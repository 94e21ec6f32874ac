from __future__ import annotations

import os

import pytest
import torch

# Two cores on the CI machine: one torch thread per test process keeps runs predictable.
torch.set_num_threads(1)
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")


@pytest.fixture(autouse=True)
def _isolated_cwd(tmp_path: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test runs in its own folder, so nothing lands in the checkout (mlflow.db, runs/, …)."""
    monkeypatch.chdir(tmp_path)


FAST_TIMEOUT_S = 300  # pyproject's `timeout`: every test, unless it says otherwise
SLOW_TIMEOUT_S = 900  # an end-to-end test (real sweeps, cluster, browser) without its own timeout


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Nothing hangs CI: slow tests get a longer explicit timeout than the global one, never none.

    Files holding slow tests run first, so that under `pytest -n 2 --dist loadfile` (make test) the
    long end-to-end files start early and the short ones fill in around them instead of trailing."""
    for item in items:
        if item.get_closest_marker("slow") and not item.get_closest_marker("timeout"):
            item.add_marker(pytest.mark.timeout(SLOW_TIMEOUT_S))
    slow_files = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow_files)  # stable: the order within a file is kept
