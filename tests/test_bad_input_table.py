"""Issue 30's table: inputs that once gave a traceback, a silent success or a late refusal, each now one line and
exit 2, before Ray starts, with the recorded store untouched (`refused` from test_bad_input checks all that).

In-process through `sweeps.cli.main` (cheap); one subprocess proves the real command never imports Ray for them.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from test_bad_input import QUICKSTART, closed_port, cwd, pclc, recorded_store, refused, write_yaml  # noqa: F401

from pclc.contract import normalize_tracking_uri
from pclc.data import DataError, check_npz, load_npz, npz_num_classes
from sweeps.config import load_sweep
from sweeps.preflight import MAX_GPUS_PER_TRIAL, distinct_configurations

TINY = ["--set", "epochs=1", "--set", "warmup_epochs=0", "--set", "train_limit=64", "--set", "eval_limit=16"]


def quickstart(**changes: object) -> dict[str, object]:
    return {**yaml.safe_load(QUICKSTART.read_text()), **changes}


def gapped_npz(folder: Path) -> Path:
    """Labels {0, 1, 2, 50}: once a silent 51-class model with 48 empty classes."""
    path = folder / "gapped.npz"
    np.savez(path, x=np.random.default_rng(0).random((80, 8, 8), dtype=np.float32), y=np.array([0, 1, 2, 50] * 20))
    return path


def object_npz(folder: Path) -> Path:
    path = folder / "objects.npz"
    images = np.empty(40, dtype=object)
    images[:] = [np.zeros((8, 8)) for _ in range(40)]
    with open(path, "wb") as f:  # np.savez pickles object arrays; np.load refuses them without allow_pickle
        np.savez(f, x=images, y=np.arange(40) % 4)
    return path


# --------------------------------------------------------------------------- tracking URIs


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("http://127.0.0.1:notaport", "port 'notaport' is not a port number"),
        ("foo://bar", "unknown scheme 'foo'"),
        ("sqlite://relative.db", "expected sqlite:///"),
        ("http://", "expected http(s)://host:port"),
        ("postgresql+psycopg://u@127.0.0.1/db", "driver psycopg is not installed; use postgresql+psycopg2://"),
    ],
)
def test_malformed_tracking_uris_are_refused_before_ray(
    cwd: Path, capsys: pytest.CaptureFixture[str], uri: str, expected: str
) -> None:
    err = refused(["sweep", str(QUICKSTART), "--tracking-uri", uri], capsys, cwd)
    assert expected in err and uri in err
    err = refused(["analyze", "--experiment", "earlier", "--tracking-uri", uri], capsys, cwd)
    assert expected in err
    err = refused(["sweep", str(write_yaml(cwd, quickstart(tracking_uri=uri)))], capsys, cwd)
    assert expected in err


def test_the_form_postgresql_users_write_names_the_installed_driver() -> None:
    pytest.importorskip("psycopg2")
    # the password leaves the URI for the variable the driver reads (pclc.redact: issue 29)
    with pytest.MonkeyPatch.context() as env:
        env.setenv("PGPASSWORD", "")  # recorded, so leaving the context puts the variable back as it was
        env.delenv("PGPASSWORD")
        assert normalize_tracking_uri("postgresql://u:pw@db.example:5432/mlflow") == (
            "postgresql+psycopg2://u@db.example:5432/mlflow"
        )
        assert os.environ["PGPASSWORD"] == "pw"
    assert normalize_tracking_uri("postgresql+psycopg2://u@h/db") == "postgresql+psycopg2://u@h/db"  # unchanged


def test_a_database_that_is_down_is_named_in_seconds(cwd: Path, capsys: pytest.CaptureFixture[str]) -> None:
    port = closed_port()
    started = time.monotonic()
    err = refused(
        ["sweep", str(QUICKSTART), "--tracking-uri", f"postgresql://u:secret@127.0.0.1:{port}/db"], capsys, cwd
    )
    assert time.monotonic() - started < 20  # was 130 s of retries, then an OperationalError traceback
    assert f"tracking database postgresql+psycopg2://u@127.0.0.1:{port}/db cannot be reached" in err  # no password
    assert "secret" not in err


def test_a_file_that_is_not_a_database_is_named(cwd: Path, capsys: pytest.CaptureFixture[str]) -> None:
    notes = cwd / "notes.db"
    notes.write_bytes(b"these are my notes, not a database\n" * 20)
    uri = f"sqlite:///{notes}"
    err = refused(["analyze", "--experiment", "earlier", "--tracking-uri", uri], capsys, cwd)
    assert f"{notes} is not an SQLite database" in err
    err = refused(["analyze", "--experiment", "earlier", "--tracking-uri", str(notes)], capsys, cwd)  # a bare *.db
    assert "is not an SQLite database" in err
    err = refused(["sweep", str(QUICKSTART), "--tracking-uri", uri], capsys, cwd)
    assert f"{notes} is not an SQLite database" in err
    err = refused(["evaluate", "--run-id", "abc", "--tracking-uri", uri], capsys, cwd)
    assert "is not an SQLite database" in err


def test_evaluate_with_an_unreachable_server_blames_the_server(cwd: Path, capsys: pytest.CaptureFixture[str]) -> None:
    uri = f"http://127.0.0.1:{closed_port()}"
    err = refused(["evaluate", "--run-id", "0123abcd", "--tracking-uri", uri], capsys, cwd)
    assert f"MLflow tracking server {uri} cannot be reached" in err and "0123abcd" not in err


# --------------------------------------------------------------------------- numbers


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("epochs=true", "epochs = True: true is a boolean, not a number"),
        ("eval_limit=false", "eval_limit = False: false is a boolean"),
        ("lr=true", "lr = True: true is a boolean"),
        ("milestones=[2, true]", "milestones = [2, True]: holds a boolean"),
        ("lc_weight=.inf", "lc_weight = inf: Input should be a finite number"),
        ("margin=.nan", "margin = nan: Input should be a finite number"),
        ("epochs=1.0e+12", "epochs = 1000000000000.0: Input should be less than or equal to 10000"),
        ("epochs=1e12", "epochs = '1e12': Input should be a valid integer"),  # YAML 1.1 reads 1e12 as text
    ],
)
def test_booleans_infinities_and_absurd_epochs_are_refused_by_train(
    cwd: Path, capsys: pytest.CaptureFixture[str], override: str, expected: str
) -> None:
    err = refused(["train", "--set", override], capsys, cwd)
    assert expected in err


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("trial.epochs=true", "trial.epochs = True: true is a boolean"),
        ("num_trials=true", "num_trials = True: true is a boolean"),
        ("seeds=[true]", "seeds = [True]: holds a boolean"),
        ("trial.lc_weight=.inf", "trial.lc_weight = inf: Input should be a finite number"),
        ("space.lr.high=.inf", "space.lr.high = inf: Input should be a finite number"),
        ("trial.epochs=1.0e+12", "trial.epochs = 1000000000000.0: Input should be less than or equal to 10000"),
        ("confirm.top=10", "confirm.top = 10: the search can find at most 4 distinct configuration(s)"),
        ("resources.gpu=1000", "resources.gpu = 1000: a trial runs on one machine and none holds more than 16"),
    ],
)
def test_sweep_limits_nothing_can_meet_are_refused_by_the_file_check(
    cwd: Path, capsys: pytest.CaptureFixture[str], override: str, expected: str
) -> None:
    started = time.monotonic()
    err = refused(["sweep", str(QUICKSTART), "--dry-run", "--set", override], capsys, cwd)
    assert time.monotonic() - started < 10  # the file check, not a measured epoch (lc_weight .inf took 42 s)
    assert expected in err and str(QUICKSTART) in err


def test_confirm_top_counts_a_discrete_space() -> None:
    cfg = load_sweep(QUICKSTART, ["confirm.top=0"])
    assert distinct_configurations(cfg) == 4  # continuous dimensions: the trials bound it
    space = "space={lc_weight: {type: choice, values: [0.05, 0.5]}, seed: {type: int, low: 0, high: 9}}"
    assert distinct_configurations(load_sweep(QUICKSTART, ["confirm.top=0", space, "initial_points=[]"])) == 2
    with pytest.raises(ValueError, match=r"confirm.top = 3: the search can find at most 2"):
        load_sweep(QUICKSTART, ["confirm.top=3", space, "initial_points=[]"])
    assert MAX_GPUS_PER_TRIAL == 16


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_a_gpu_this_machine_lacks_is_refused_for_a_local_ray(cwd: Path, capsys: pytest.CaptureFixture[str]) -> None:
    err = refused(["sweep", str(QUICKSTART), "--set", "resources.gpu=1"], capsys, cwd)
    assert "resources.gpu = 1: this machine has 0 GPU(s)" in err and "--address" in err


# --------------------------------------------------------------------------- npz files


def test_npz_labels_with_gaps_are_refused_naming_the_missing_classes(
    cwd: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = gapped_npz(cwd)
    with pytest.raises(DataError, match="classes 3–49 have no training sample"):
        load_npz(path)
    with pytest.raises(DataError, match="classes 3–49"):
        npz_num_classes(path)
    err = refused(["train", "--set", f"dataset=npz:{path}", *TINY], capsys, cwd)
    assert "the labels hold 0–2, 50, so classes 3–49 have no training sample" in err
    err = refused(["sweep", str(QUICKSTART), "--set", f"trial.dataset=npz:{path}"], capsys, cwd)
    assert "classes 3–49" in err


def test_npz_object_arrays_are_refused_before_ray_without_a_parent_run(
    cwd: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = object_npz(cwd)
    with pytest.raises(DataError, match="'x' is an object array"):
        check_npz(path)
    err = refused(["train", "--set", f"dataset=npz:{path}", *TINY], capsys, cwd)
    assert "'x' is an object array" in err
    # `refused` checks the store is untouched: no FAILED parent run; the subprocess that Ray was never imported
    err = refused(["sweep", str(QUICKSTART), "--set", f"trial.dataset=npz:{path}"], capsys, cwd)
    assert "'x' is an object array" in err
    proc = pclc("sweep", str(QUICKSTART), "--set", f"trial.dataset=npz:{path}", cwd=cwd)
    assert proc.returncode == 2 and "object array" in proc.stderr and "Traceback" not in proc.stderr
    assert "ray imported: False" in proc.stderr


# --------------------------------------------------------------------------- the sweep file itself


def test_a_binary_file_or_a_folder_as_the_sweep_file_is_named(cwd: Path, capsys: pytest.CaptureFixture[str]) -> None:
    binary = cwd / "weights.yaml"
    binary.write_bytes(b"\xde\xad\xbe\xef" * 64)
    err = refused(["sweep", str(binary)], capsys, cwd)
    assert f"config file {binary} is not a text file (byte 0xbe at offset 2 is not UTF-8)" in err
    folder = cwd / "configs.yaml"
    folder.mkdir()
    err = refused(["sweep", str(folder)], capsys, cwd)
    assert f"config file {folder} is a folder, not a file" in err
    err = refused(["train", "--config", str(binary)], capsys, cwd)
    assert "is not a text file" in err


def test_a_gpu_request_no_live_node_of_a_cluster_holds_is_said_in_one_line() -> None:
    """`pclc sweep --address`: the live cluster's nodes, read once Ray is connected (a local Ray is refused before)."""
    from sweeps.driver import gpu_shortfall

    nodes = [
        {"Alive": True, "Resources": {"CPU": 8.0, "GPU": 1.0}},
        {"Alive": False, "Resources": {"CPU": 8.0, "GPU": 8.0}},  # gone: it holds nothing
    ]
    said = gpu_shortfall(2, nodes)
    assert said is not None and "no node of this cluster holds more than 1 GPU(s)" in said and "\n" not in said
    assert gpu_shortfall(0.5, nodes) is None and gpu_shortfall(1, nodes) is None and gpu_shortfall(0, []) is None
    assert "more than 0 GPU(s)" in (gpu_shortfall(0.25, [{"Alive": True, "Resources": {"CPU": 2.0}}]) or "")
