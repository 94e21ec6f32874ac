"""Bad input through the `pclc` command: one clear message naming the problem, exit code 2, no
traceback unless `--debug`, found before Ray starts or anything trains, and nothing recorded lost.

Most cases call `sweeps.cli.main` in-process (cheap); a few run the real command in a subprocess to
prove the exit code, the absent traceback and that Ray was never even imported.
The field-level messages of sweep files are tested in test_sweep_config.py; here every one of those
cases also goes through the command, plus the malformed fields that file does not cover.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from test_sweep_config import BAD, _ablation, _optimize

from pclc.train import CheckpointError, Trainer, load_checkpoint, save_checkpoint, seed_everything
from sweeps.cli import main
from sweeps.config import read_sweep_file

QUICKSTART = Path(__file__).parents[1] / "sweeps/configs/quickstart.yaml"
RECORDED = ("mlflow.db", "mlartifacts")  # what earlier sweeps left in the cwd: must survive a refused command


# --------------------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def recorded_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real MLflow store with one run in it, as an earlier sweep would have left it."""
    from mlflow.tracking import MlflowClient

    folder = tmp_path_factory.mktemp("recorded")
    client = MlflowClient(f"sqlite:///{folder / 'mlflow.db'}")
    exp = client.create_experiment("earlier", artifact_location=(folder / "mlartifacts").as_uri())
    run = client.create_run(exp)
    client.log_metric(run.info.run_id, "robust_acc", 0.5)
    client.set_terminated(run.info.run_id)
    return folder


@pytest.fixture
def cwd(tmp_path: Path, recorded_store: Path) -> Path:
    """The test's cwd (conftest chdirs into tmp_path), holding a copy of the recorded store."""
    shutil.copy(recorded_store / "mlflow.db", tmp_path / "mlflow.db")
    return tmp_path


def _digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def refused(argv: list[str], capsys: pytest.CaptureFixture[str], folder: Path) -> str:
    """Run `pclc ARGV` in-process; assert exit 2, one message, no traceback, the folder untouched."""
    before = _digest(folder)
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "Traceback" not in err
    assert err.startswith(f"pclc {argv[0]}: error: "), err
    assert err.count(": error: ") == 1 and "Warning" not in err, err  # one message, nothing else
    after = _digest(folder)
    # nothing recorded is lost or changed; the only thing that may appear is the sweep file we wrote
    assert {k: v for k, v in after.items() if k in before} == before
    assert not [k for k in after if k not in before and not k.endswith(".yaml")], after
    for made in ("ray_results", "runs", "reports"):
        assert not (folder / made).exists()
    return err


def write_yaml(folder: Path, data: Any, name: str = "sweep.yaml") -> Path:
    path = folder / name
    path.write_text(yaml.safe_dump(data))
    return path


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def truncated_npz(folder: Path) -> Path:
    path = folder / "data.npz"
    rng = np.random.default_rng(0)
    np.savez(path, x=rng.random((40, 8, 8), dtype=np.float32), y=np.arange(40) % 4)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return path


RUNNER = (
    "import sys\n"
    "from sweeps.cli import main\n"
    "if sys.argv[1] == '-m-sweeps':\n"  # the cluster command, `python -m sweeps …`
    "    from sweeps.__main__ import main as sweeps_main\n"
    "    rc = sweeps_main(sys.argv[2:])\n"
    "else:\n"
    "    rc = main(sys.argv[1:])\n"
    "print('ray imported:', 'ray' in sys.modules, file=sys.stderr)\n"
    "sys.exit(rc)\n"
)


def pclc(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """The real command (what the `pclc` console script runs), reporting whether Ray was imported."""
    return subprocess.run([sys.executable, "-c", RUNNER, *args], cwd=cwd, capture_output=True, text=True, timeout=300)


# --------------------------------------------------------------------------- sweep files


@pytest.mark.parametrize(("data", "expected"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_every_known_malformed_sweep_field_exits_2_from_the_command(
    cwd: Path, capsys: pytest.CaptureFixture[str], data: dict[str, Any], expected: list[str]
) -> None:
    err = refused(["sweep", str(write_yaml(cwd, data))], capsys, cwd)
    for text in expected:
        assert text in err, f"{text!r} missing from:\n{err}"


def _list_not_mapping(key: str) -> dict[str, Any]:
    return {**_optimize(), key: ["a"]}


# Malformed fields test_sweep_config.py does not cover: wrong types, unknown keys in nested parts,
# missing required parts of a space entry, and ablation-only fields of the wrong shape.
MORE_BAD: list[tuple[str, Any, list[str]]] = [
    ("file is a list", ["name", "t"], ["must hold a mapping", "list"]),
    ("file is empty", None, ["name", "required"]),
    ("name not a string", _optimize(name=3), ["name = 3", "string"]),
    ("mode wrong type", _optimize(mode=1), ["mode = 1", "'optimize' or 'ablation'"]),
    ("trial not a mapping", _optimize(trial="digits"), ["trial = 'digits'", "dictionary"]),
    ("trial epochs wrong type", _optimize(trial={"epochs": "many"}), ["trial.epochs = 'many'", "integer"]),
    ("trial epochs zero", _optimize(trial={"epochs": 0}), ["trial.epochs = 0", "greater than or equal to 1"]),
    ("trial margin zero", _optimize(trial={"margin": 0}), ["trial.margin = 0", "greater than 0"]),
    ("trial eps zero", _optimize(trial={"eps": [0.0, 0.1]}), ["trial.eps", "0.0", "(0, 1]"]),
    ("trial headline eps off the grid", _optimize(trial={"headline_eps": 0.3}), ["trial", "not in the eps grid"]),
    ("trial unknown substitute", _optimize(trial={"substitute_model": "vgg99"}), ["trial.substitute_model", "vgg99"]),
    (
        "objective unknown key",
        _optimize(objective=[{"metric": "robust_acc", "goal": "max"}]),
        ["objective.0.goal", "unknown key", "metric", "mode"],
    ),
    ("objective wrong type", _optimize(objective=3), ["objective", "3"]),
    ("objective listed twice", _optimize(objective=["robust_acc", "robust_acc"]), ["objective", "listed twice"]),
    ("space not a mapping", _list_not_mapping("space"), ["space", "dictionary"]),
    (
        "space entry without type",
        {**_optimize(), "space": {"margin": {"low": 0.9, "high": 0.99}}},
        ["space.margin.type", "required"],
    ),
    (
        "space entry without high",
        {**_optimize(), "space": {"margin": {"type": "uniform", "low": 0.9}}},
        ["space.margin", "needs both low and high"],
    ),
    (
        "space bound wrong type",
        _optimize(space={"margin": {"type": "uniform", "low": "a", "high": 0.99}}),
        ["space.margin.low = 'a'", "number"],
    ),
    (
        "space int with fractional bounds",
        _optimize(space={"warmup_epochs": {"type": "int", "low": 0.5, "high": 2}}),
        ["space.warmup_epochs", "whole-number bounds"],
    ),
    (
        "space choice with low",
        _optimize(space={"loss": {"type": "choice", "values": ["pc"], "low": 0}}),
        ["space.loss", "not low/high"],
    ),
    (
        "space log on a float",
        _optimize(space={"margin": {"type": "uniform", "low": 0.9, "high": 0.99, "log": True}}),
        ["space.margin", "use type loguniform"],
    ),
    ("initial_points not a list", _optimize(initial_points={"margin": 0.95}), ["initial_points", "list"]),
    (
        "more initial points than trials",
        _optimize(num_trials=1, initial_points=[{"margin": 0.95}, {"margin": 0.96}]),
        ["initial_points", "2 points but num_trials = 1"],
    ),
    (
        "initial point wrong type",
        _optimize(initial_points=[{"margin": "high"}]),
        ["initial_points[0].margin = 'high'", "outside the space"],
    ),
    ("num_trials wrong type", _optimize(num_trials="four"), ["num_trials = 'four'", "integer"]),
    ("sampler_seed wrong type", _optimize(sampler_seed="x"), ["sampler_seed = 'x'", "integer"]),
    ("variants in optimize", _optimize(variants=[{"loss": "pc"}]), ["variants", "only for mode ablation"]),
    ("variants not a list", _ablation(variants="pc"), ["variants", "list"]),
    (
        "variant with seed",
        _ablation(variants=[{"loss": "pc", "seed": 3}]),
        ["variants[0].seed", "given once, in `seeds`"],
    ),
    (
        "variant empty grid",
        _ablation(variants=[{"loss": "pc", "margin": []}]),
        ["variants[0].margin = []", "at least one"],
    ),
    ("variant unknown loss", _ablation(variants=[{"loss": "hinge"}]), ["variants (hinge)", "loss"]),
    ("seeds wrong type", _ablation(seeds="abc"), ["seeds", "list"]),
    ("seeds empty", _ablation(seeds=[]), ["seeds = []", "distinct"]),
    ("resources not a mapping", _optimize(resources=4), ["resources = 4", "dictionary"]),
    ("resources unknown key", _optimize(resources={"memory": 4}), ["resources.memory", "unknown key", "cpu, gpu"]),
    ("cuda without gpu", _optimize(trial={"device": "cuda"}), ["trial.device = 'cuda'", "resources.gpu = 0"]),
    ("max_concurrent wrong type", _optimize(max_concurrent="two"), ["max_concurrent = 'two'", "integer"]),
    ("max_retries wrong type", _optimize(max_retries="x"), ["max_retries = 'x'", "integer"]),
    (
        "scheduler unknown key",
        _optimize(scheduler={"type": "asha", "patience": 2}),
        ["scheduler.patience", "unknown key", "grace_period"],
    ),
    (
        "scheduler grace zero",
        _optimize(scheduler={"type": "asha", "grace_period": 0}),
        ["scheduler.grace_period = 0", "greater than or equal to 1"],
    ),
    (
        "scheduler reduction one",
        _optimize(scheduler={"type": "asha", "reduction_factor": 1}),
        ["scheduler.reduction_factor = 1", "greater than 1"],
    ),
    ("storage_path wrong type", _optimize(storage_path=["a"]), ["storage_path", "string"]),
    ("tracking_uri relative path", _optimize(tracking_uri="mlruns"), ["tracking_uri", "no file store"]),
]


@pytest.mark.parametrize(("data", "expected"), [b[1:] for b in MORE_BAD], ids=[b[0] for b in MORE_BAD])
def test_more_malformed_sweep_fields_are_named_and_exit_2(
    cwd: Path, capsys: pytest.CaptureFixture[str], data: Any, expected: list[str]
) -> None:
    path = write_yaml(cwd, data)
    with pytest.raises(ValueError):  # the loader refuses it: the command below can never start a sweep
        read_sweep_file(path)
    err = refused(["sweep", str(path)], capsys, cwd)
    assert str(path) in err
    for text in expected:
        assert text in err, f"{text!r} missing from:\n{err}"


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("trial.dataset=imagenet", ["trial.dataset", "unknown dataset 'imagenet'", "digits"]),
        ("trial.model=resnet1000", ["trial.model", "unknown model 'resnet1000'", "small_cnn"]),
        ("trial.attacks=[fgsm, deepfool]", ["trial.attacks", "deepfool", "pgd_ce"]),
        ("trial.margin=0", ["trial.margin = 0", "greater than 0"]),
        ("trial.margin=1.01", ["trial.margin = 1.01", "less than or equal to 1"]),
        ("trial.lc_weight=-0.5", ["trial.lc_weight = -0.5", "greater than or equal to 0"]),
        ("trial.eps=[0.1, 1.2]", ["trial.eps", "1.2", "pixel range (0, 1]"]),
        ("trial.eps=[-0.1, 0.1]", ["trial.eps", "-0.1", "pixel range (0, 1]"]),
        ("trials.epochs=2", ["trials", "unknown key"]),
        ("trial=3", ["trial = 3"]),
        ("max_concurrent", ["expected key=value"]),
    ],
)
def test_bad_set_overrides_on_the_shipped_quickstart(
    cwd: Path, capsys: pytest.CaptureFixture[str], override: str, expected: list[str]
) -> None:
    err = refused(["sweep", str(QUICKSTART), "--set", override], capsys, cwd)
    for text in expected:
        assert text in err, f"{text!r} missing from:\n{err}"


def test_set_through_a_non_mapping_is_refused(cwd: Path, capsys: pytest.CaptureFixture[str]) -> None:
    err = refused(["sweep", str(QUICKSTART), "--set", "name.x=1"], capsys, cwd)
    assert "--set name.x: name is not a mapping" in err


# --------------------------------------------------------------------------- pclc train


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("attacks=[fgsm, deepfool]", "unknown attack(s) ['deepfool']"),
        ("margin=0", "margin = 0"),
        ("margin=-0.5", "margin = -0.5"),
        ("margin=1.0001", "margin = 1.0001"),
        ("lc_weight=-1", "lc_weight = -1"),
        ("eps=[0]", "outside the pixel range (0, 1]"),
        ("eps=[0.1, 255]", "outside the pixel range (0, 1]"),
        ("masking_eps=2", "masking_eps = 2"),
        ("substitute_model=vgg99", "unknown model 'vgg99'"),
        ("dataset=npz:", "npz"),
    ],
)
def test_bad_train_values_exit_2_before_training(
    cwd: Path, capsys: pytest.CaptureFixture[str], override: str, expected: str
) -> None:
    err = refused(["train", "--set", override], capsys, cwd)
    assert expected in err


def test_truncated_npz_is_a_data_error_for_train_and_sweep(cwd: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = cwd / "data"
    folder.mkdir()
    path = truncated_npz(folder)
    err = refused(
        ["train", "--set", f"dataset=npz:{path}", "--set", "epochs=1", "--set", "warmup_epochs=0"], capsys, cwd
    )
    assert f"{path} is not a readable .npz archive" in err
    # the sweep checks the file before Ray starts (the driver would load it only after ray.init)
    err = refused(["sweep", str(QUICKSTART), "--set", f"trial.dataset=npz:{path}"], capsys, cwd)
    assert f"{path} is not a readable .npz archive" in err
    err = refused(["sweep", str(QUICKSTART), "--set", f"trial.dataset=npz:{folder / 'gone.npz'}"], capsys, cwd)
    assert f"npz file {folder / 'gone.npz'} does not exist" in err


# --------------------------------------------------------------------------- checkpoints


def _real_checkpoint(path: Path) -> None:
    from pclc.config import make_config
    from pclc.models import create_model

    cfg = make_config({"epochs": 2, "warmup_epochs": 1})
    model = create_model("small_cnn", input_shape=(1, 8, 8), num_classes=10)
    save_checkpoint(Trainer(cfg, model, torch.device("cpu"), seed_everything(0)).state_dict(), path)


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty", "missing", "a folder"])
def test_corrupt_checkpoint_is_a_checkpoint_error_naming_the_file(tmp_path: Path, damage: str) -> None:
    path = tmp_path / "checkpoint.pt"
    _real_checkpoint(path)
    assert load_checkpoint(path)["epoch"] == 0  # the undamaged file loads
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif damage == "garbage":
        path.write_bytes(b"\x00not a checkpoint" * 50)
    elif damage == "empty":
        path.write_bytes(b"")
    elif damage == "missing":
        path.unlink()
    else:
        path.unlink()
        path.mkdir()
    with pytest.raises(CheckpointError, match=str(path)) as err:
        load_checkpoint(path)
    assert isinstance(err.value, ValueError)  # the CLI's user errors: exit 2, one line
    assert ("does not exist" if damage in ("missing", "a folder") else "corrupt") in str(err.value)


# --------------------------------------------------------------------------- the tracking store


def test_unreachable_tracking_server_fails_fast_before_ray(cwd: Path, capsys: pytest.CaptureFixture[str]) -> None:
    uri = f"http://127.0.0.1:{closed_port()}"
    err = refused(["sweep", str(QUICKSTART), "--tracking-uri", uri], capsys, cwd)
    assert f"MLflow tracking server {uri} cannot be reached" in err
    # the same URI written in the sweep file
    path = write_yaml(cwd, {**yaml.safe_load(QUICKSTART.read_text()), "tracking_uri": uri})
    err = refused(["sweep", str(path)], capsys, cwd)
    assert "cannot be reached" in err
    err = refused(["analyze", "--experiment", "earlier", "--tracking-uri", uri], capsys, cwd)
    assert f"cannot read the MLflow tracking store at {uri}" in err


def test_resume_probes_the_store_the_sweep_began_with(cwd: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Neither --tracking-uri nor the sweep file names a store: the one the sweep recorded is probed.
    uri = f"http://127.0.0.1:{closed_port()}"
    recorded = cwd / "store" / "quickstart"
    recorded.mkdir(parents=True)
    (recorded / "pclc_sweep.json").write_text(json.dumps({"tracking_uri": uri}))
    err = refused(["sweep", str(QUICKSTART), "--resume", "--storage-path", str(cwd / "store")], capsys, cwd)
    assert uri in err and "cannot be reached" in err


def test_sqlite_uri_in_a_missing_folder_is_refused(cwd: Path, capsys: pytest.CaptureFixture[str]) -> None:
    uri = f"sqlite:///{cwd / 'no' / 'such' / 'mlflow.db'}"
    err = refused(["sweep", str(QUICKSTART), "--tracking-uri", uri], capsys, cwd)
    assert f"folder {cwd / 'no' / 'such'} does not exist" in err
    err = refused(["analyze", "--experiment", "earlier", "--tracking-uri", uri], capsys, cwd)
    assert f"no MLflow database at {cwd / 'no' / 'such' / 'mlflow.db'}" in err
    assert not (cwd / "no").exists()


def test_analyze_of_an_unknown_experiment_keeps_the_store(cwd: Path, capsys: pytest.CaptureFixture[str]) -> None:
    err = refused(["analyze", "--experiment", "never-ran"], capsys, cwd)
    assert "never-ran" in err


# --------------------------------------------------------------------------- --debug


def test_debug_raises_the_error_instead_of_one_line(cwd: Path) -> None:
    from analysis.load import AnalysisError
    from sweeps.config import SweepConfigError, TrackingStoreError

    with pytest.raises(SweepConfigError):
        main(["--debug", "sweep", str(QUICKSTART), "--set", "trial.margin=2"])
    with pytest.raises(TrackingStoreError):
        main(["--debug", "sweep", str(QUICKSTART), "--tracking-uri", f"http://127.0.0.1:{closed_port()}"])
    with pytest.raises(AnalysisError):
        main(["--debug", "analyze", "--experiment", "never-ran"])
    with pytest.raises(AnalysisError):
        main(["analyze", "--experiment", "never-ran", "--debug"])


# --------------------------------------------------------------------------- the real command


def test_the_real_command_exits_2_without_traceback_or_ray(cwd: Path) -> None:
    before = _digest(cwd)
    bad = write_yaml(cwd, _optimize(max_concurrent=0))
    proc = pclc("sweep", str(bad), cwd=cwd)
    assert proc.returncode == 2, proc.stderr
    assert "max_concurrent = 0" in proc.stderr and "Traceback" not in proc.stderr
    assert "ray imported: False" in proc.stderr

    uri = f"http://127.0.0.1:{closed_port()}"
    proc = pclc("sweep", str(QUICKSTART), "--tracking-uri", uri, cwd=cwd)
    assert proc.returncode == 2, proc.stderr
    assert "cannot be reached" in proc.stderr and "Traceback" not in proc.stderr
    assert "ray imported: False" in proc.stderr
    assert {k: v for k, v in _digest(cwd).items() if k != "sweep.yaml"} == before


def test_the_cluster_command_refuses_the_same_way_before_ray(cwd: Path) -> None:
    # `python -m sweeps` (what `ray job submit` runs) is `pclc sweep`: the same preflight, in seconds.
    uri = f"http://127.0.0.1:{closed_port()}"
    proc = pclc("-m-sweeps", str(QUICKSTART), "--tracking-uri", uri, cwd=cwd)
    assert proc.returncode == 2, proc.stderr
    assert "cannot be reached" in proc.stderr and "Traceback" not in proc.stderr
    assert "ray imported: False" in proc.stderr
    bad = write_yaml(cwd, _optimize(max_concurrent=0))
    proc = pclc("-m-sweeps", str(bad), cwd=cwd)
    assert proc.returncode == 2 and "max_concurrent = 0" in proc.stderr and "ray imported: False" in proc.stderr
    proc = pclc("-m-sweeps", str(QUICKSTART), "--set", f"trial.dataset=npz:{truncated_npz(cwd)}", cwd=cwd)
    assert proc.returncode == 2 and "not a readable .npz archive" in proc.stderr, proc.stderr
    assert "ray imported: False" in proc.stderr


def test_the_real_command_shows_the_traceback_with_debug(cwd: Path) -> None:
    proc = pclc("--debug", "train", "--set", f"dataset=npz:{truncated_npz(cwd)}", cwd=cwd)
    assert proc.returncode == 1
    assert "Traceback" in proc.stderr and "DataError" in proc.stderr and "not a readable .npz archive" in proc.stderr


def test_a_long_tmpdir_is_named_with_the_fix(cwd: Path) -> None:
    # Ray's Unix socket paths live under TMPDIR; past 107 bytes Ray dies with an OSError traceback.
    long_tmp = cwd / ("t" * 80)
    long_tmp.mkdir()
    env = {**os.environ, "TMPDIR": str(long_tmp)}
    proc = subprocess.run(
        [sys.executable, "-c", RUNNER, "sweep", str(QUICKSTART), "--smoke-test"],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert proc.stderr.count(": error: ") == 1 and "TMPDIR" in proc.stderr and "107" in proc.stderr
    assert str(long_tmp) in proc.stderr
