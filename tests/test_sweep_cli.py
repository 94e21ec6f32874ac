"""The shipped quickstart through the command line (`python -m sweeps … --smoke-test`): the file, the
CLI, a local Ray started by the command, MLflow, and the closing summary, end to end."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from sweep_util import runs

QUICKSTART = Path(__file__).parents[1] / "sweeps/configs/quickstart.yaml"


@pytest.mark.slow
def test_quickstart_smoke_test_runs_from_the_command_line(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "sweeps", str(QUICKSTART), "--smoke-test"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    assert "sweep quickstart-smoke: 2 trials: 2 finished, 0 failed" in out
    assert "best configurations by robust_acc (max):" in out
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"  # the embedded default: <cwd>/mlflow.db
    assert f"MLflow UI: mlflow ui --backend-store-uri {uri}" in out
    assert (tmp_path / "ray_results" / "quickstart-smoke").is_dir()
    parent, children = runs(uri, "quickstart-smoke")
    assert parent.info.status == "FINISHED" and len(children) == 2
    assert all(c.info.status == "FINISHED" and c.data.params["epochs"] == "2" for c in children)
