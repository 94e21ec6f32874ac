"""The sweep command's own choices: `--dry-run` starts nothing, and without `--address` a sweep starts its
own Ray. (The shipped quickstart's `--smoke-test` through the command line, with its closing summary and
its runs in MLflow, is the journey in test_journey.py.)"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

QUICKSTART = Path(__file__).parents[1] / "sweeps/configs/quickstart.yaml"


@pytest.mark.slow
def test_dry_run_prints_the_trial_count_resources_and_an_estimate_and_starts_nothing(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "sweeps", str(QUICKSTART), "--dry-run", "--set", "resources.gpu=0.25"]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = dict(line.split(": ", 1) for line in proc.stdout.splitlines() if ": " in line)
    # quickstart.yaml: 4 search trials, then (the best + 2 references) × 5 fresh seeds at most
    assert lines["trials"] == "19"
    assert lines["resources per trial"] == "1 CPU, 0.25 GPU" and lines["trials at once"] == "2"
    per_trial = float(re.match(r"([0-9.]+) s \(10 epochs", lines["per trial"])[1])
    wall = float(re.match(r"([0-9.]+) s", lines["estimated wall time"])[1])
    gpu_hours = float(lines["estimated GPU-hours"])
    # 19 trials, 2 at a time: 9.5 waves (plus preparation); each printed figure rounded to its last digit
    assert per_trial > 0 and wall + 0.05 >= 9 * (per_trial - 0.005)
    assert gpu_hours == pytest.approx(19 * per_trial * 0.25 / 3600, rel=0.02, abs=2e-3)
    assert "15 of the trials confirm the best and the references on fresh seeds" in lines["note"]
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no mlflow.db, no ray_results: nothing started


def test_without_address_a_sweep_starts_its_own_ray_and_joins_no_other(tmp_path: Path) -> None:
    # `ray.init(None)` joins whatever cluster this machine names (RAY_ADDRESS, a `ray start` left running),
    # even one that is gone; `pclc sweep` without --address promises a private local Ray instead.
    probe = (
        "from sweeps.driver import ray_session\n"
        "with ray_session(None, num_cpus=1):\n"
        "    import ray; print('cpus', ray.cluster_resources()['CPU'])\n"
    )
    env = {**os.environ, "RAY_ADDRESS": "127.0.0.1:9", "RAY_gcs_server_port_wait_time_s": "3"}  # nothing there
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0 and "cpus 1.0" in proc.stdout, proc.stderr[-3000:]


def test_a_private_local_ray_runs_its_trials_at_the_commands_own_priority() -> None:
    """Ray starts workers at niceness 15: beside any other busy process a trial then gets a few % of a core (the
    quickstart took 39 min instead of 5 beside a benchmark). `pclc sweep` without --address runs them at 0."""
    probe = (
        "import os\n"
        "from sweeps.driver import ray_session\n"
        "with ray_session(None, num_cpus=1):\n"
        "    import ray\n"
        "    print('nice', ray.get(ray.remote(lambda: os.nice(0)).remote()))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "RAY_worker_niceness"}  # the suite's conftest sets it
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0 and "nice 0" in proc.stdout, proc.stdout[-2000:] + proc.stderr[-3000:]


REPO = Path(__file__).parents[1]
GRID = REPO / "sweeps/configs/mnist_lenet5_grid.yaml"
# the 1000-trial grid's base trial, shrunk to digits so that its one measured epoch runs here in seconds
ON_DIGITS = [
    f"trial.{k}={v}"
    for k, v in {
        "dataset": "digits",
        "model": "small_cnn",
        "eval_limit": 64,
        "aa_limit": 32,
        "epoch_eval_samples": 32,
        "attack_steps": 3,
        "epochs": 2,
        "warmup_epochs": 1,
    }.items()
]


@pytest.mark.timeout(60)
def test_cluster_files_say_how_many_trials_fit_at_once(tmp_path: Path) -> None:
    from sweeps.cluster_file import ClusterFileError, read_capacity

    aws = read_capacity(REPO / "ray_cluster.yaml")  # 4 × g5.2xlarge: 8 vCPU, 1 A10G each
    assert aws.max_workers == 4 and [(t.cpus, t.gpus, t.what) for t in aws.node_types] == [(8, 1, "g5.2xlarge")]
    assert aws.slots(cpu=2, gpu=0.25) == 16  # the shipped {cpu: 2, gpu: 0.25}: 4 a GPU
    assert aws.slots(cpu=1, gpu=0) == 32 and aws.slots(cpu=4, gpu=0.25) == 8  # CPUs bind first
    with pytest.raises(ClusterFileError, match=r"--num-cpus N --num-gpus M"):
        read_capacity(REPO / "ray_cluster_local.yaml")  # own machines: sized only by their `ray start` flags
    local = (REPO / "ray_cluster_local.yaml").read_text()
    sized = local.replace(
        "ray start --address=$RAY_HEAD_IP:6379", "ray start --address=$RAY_HEAD_IP:6379 --num-cpus 16 --num-gpus 2"
    )
    (tmp_path / "local.yaml").write_text(sized)
    assert read_capacity(tmp_path / "local.yaml").slots(cpu=2, gpu=0.25) == 2 * 8  # 2 machines × 8
    mixed = {
        "max_workers": 3,
        "head_node_type": "head",
        "provider": {"type": "gcp"},
        "available_node_types": {
            "head": {"resources": {"CPU": 0}},
            "big": {"max_workers": 1, "resources": {"CPU": 32, "GPU": 4}},
            "small": {"max_workers": 5, "resources": {"CPU": 8, "GPU": 1}},
        },
    }
    (tmp_path / "mixed.yaml").write_text(json.dumps(mixed))
    assert read_capacity(tmp_path / "mixed.yaml").slots(cpu=1, gpu=0.5) == 8 + 2 + 2  # max_workers 3: big first
    mixed["available_node_types"]["small"] = {"max_workers": 1, "node_config": {"InstanceType": "z9.huge"}}
    (tmp_path / "mixed.yaml").write_text(json.dumps(mixed))
    with pytest.raises(ClusterFileError, match=r"node type 'small' \(z9.huge\) does not say its CPUs and GPUs"):
        read_capacity(tmp_path / "mixed.yaml")


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_dry_run_of_the_1000_trial_grid_on_the_cluster_file_prints_its_cost(tmp_path: Path) -> None:
    sets = [arg for s in ON_DIGITS for arg in ("--set", s)]
    cmd = [sys.executable, "-m", "sweeps", str(GRID), "--dry-run", "--cluster", str(REPO / "ray_cluster.yaml"), *sets]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = dict(line.split(": ", 1) for line in proc.stdout.splitlines() if ": " in line)
    assert lines["trials"] == "1010"  # 10 ξ × 10 λ × 10 seeds, and CE on the same 10 seeds
    assert lines["cluster holds"] == "16 trials at once" and lines["trials at once"] == "16"
    per_trial = float(re.match(r"([0-9.]+) s", lines["per trial"])[1])
    wall = float(re.match(r"([0-9.]+) s", lines["estimated wall time"])[1])
    # ceil(1010 / 16) waves; each printed figure is rounded to its last digit, so allow half of one
    assert wall + 0.05 >= 64 * (per_trial - 0.005)
    assert float(lines["estimated GPU-hours"]) == pytest.approx(1010 * per_trial * 0.25 / 3600, rel=0.01, abs=1e-3)
    assert "the cluster holds 16 of max_concurrent 64: the rest wait" in lines["note"]
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing started
    alone = subprocess.run(
        [sys.executable, "-m", "sweeps", str(GRID), "--cluster", str(REPO / "ray_cluster.yaml")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert alone.returncode != 0 and "--cluster FILE sizes a --dry-run" in alone.stderr
    assert "Traceback" not in alone.stderr and sorted(p.name for p in tmp_path.iterdir()) == []
