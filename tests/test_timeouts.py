"""Nothing hangs CI: every collected test runs under a timeout (pytest-timeout), longer for slow ones."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import FAST_TIMEOUT_S, SLOW_TIMEOUT_S

REPO = Path(__file__).resolve().parents[1]


def test_every_test_has_a_timeout(request: pytest.FixtureRequest) -> None:
    assert request.config.getini("timeout") == str(FAST_TIMEOUT_S)
    for item in request.session.items:
        marker = item.get_closest_marker("timeout")
        if item.get_closest_marker("slow"):
            assert marker is not None, item.nodeid
            assert 0 < marker.args[0] <= SLOW_TIMEOUT_S, item.nodeid


@pytest.mark.timeout(120)
def test_a_hanging_test_is_stopped(tmp_path: Path) -> None:
    hang = tmp_path / "test_hang.py"
    hang.write_text("import time, pytest\n\n@pytest.mark.timeout(2)\ndef test_hang():\n    time.sleep(60)\n")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            str(hang),
            "-c",
            str(REPO / "pyproject.toml"),
            "--rootdir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=100,
    )
    assert proc.returncode == 1 and "Timeout" in proc.stdout + proc.stderr, proc.stdout[-2000:]
