"""More than one machine: a real two-node Ray cluster on this host (ray.cluster_utils.Cluster, one CPU
per node) runs a small sweep, and the trials land on both nodes (the node id is recorded per trial)."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import pytest
import ray
import yaml
from ray.cluster_utils import Cluster
from sweep_util import final_metric_names, runs, tiny_optimize

from sweeps.driver import run_sweep, set_tune_environment


@pytest.mark.slow
def test_two_node_cluster_runs_trials_on_both_nodes(tmp_path: Path) -> None:
    set_tune_environment()  # as `pclc sweep` does: the test calls run_sweep itself (alone, nothing else set it)
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    try:
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address)
        nodes = {n["NodeID"] for n in ray.nodes() if n["Alive"]}
        assert len(nodes) == 2

        # one CPU per trial, two at once: with one CPU per node they can only run side by side
        cfg = tiny_optimize("cluster", tmp_path, num_trials=4, max_concurrent=2)
        result = run_sweep(cfg, out=io.StringIO())

        # the command line joins a running cluster by address (`--address auto` after `ray start`)
        cli_cfg = tiny_optimize("cluster_cli", tmp_path, num_trials=2, trial={"epochs": 2})
        sweep_file = tmp_path / "cluster_cli.yaml"
        sweep_file.write_text(yaml.safe_dump(cli_cfg.model_dump(mode="json")))
        proc = subprocess.run(
            [sys.executable, "-m", "sweeps", str(sweep_file), "--address", cluster.address],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
        assert "2 trials: 2 finished" in proc.stdout
        assert "Started a local Ray instance" not in proc.stdout + proc.stderr
    finally:
        ray.shutdown()
        cluster.shutdown()

    _, children = runs(f"sqlite:///{tmp_path / 'mlflow.db'}", "cluster")
    assert len(children) == 4 and all(c.info.status == "FINISHED" for c in children)
    assert all(set(final_metric_names(cfg.trial)) <= set(c.data.metrics) for c in children)
    assert {c.data.tags["pclc.node_id"] for c in children} == nodes
    assert all(c.data.tags["pclc.node_ip"] for c in children)
    assert len(result.finished) == 4
