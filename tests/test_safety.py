"""Safety: checkpoints and YAML never run code, MLflow listens on loopback locally, and the commands
write only into the folders they are configured to use.

The cluster side (start_mlflow.sh binds the head's private address and refuses 0.0.0.0) is tested
in test_cluster_config.py.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from machine import files_under, user_folders

from pclc.train import CheckpointError, load_checkpoint
from sweeps.cli import main

ROOT = Path(__file__).parents[1]
SOURCES = sorted(p for d in ("pclc", "sweeps", "analysis", "benchmarks") for p in (ROOT / d).rglob("*.py"))
QUICKSTART = ROOT / "sweeps/configs/quickstart.yaml"


# --------------------------------------------------------------------------- checkpoints


def test_every_torch_load_in_the_code_uses_weights_only() -> None:
    calls = [(p, m) for p in SOURCES for m in re.finditer(r"torch\.load\(([^)]*)\)", p.read_text())]
    assert calls, "expected pclc.train.load_checkpoint to call torch.load"
    unsafe = [f"{p.relative_to(ROOT)}: {m[0]}" for p, m in calls if "weights_only=True" not in m[1]]
    assert not unsafe
    pickles = [
        f"{p.relative_to(ROOT)}" for p in SOURCES if re.search(r"\bpickle\.loads?\(|allow_pickle=True", p.read_text())
    ]
    assert not pickles


class _Payload:
    """Unpickling this runs a shell command (the classic malicious checkpoint)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.system, (f"touch {self.marker}",)


def test_a_checkpoint_carrying_a_pickled_payload_is_refused_unexecuted(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "checkpoint.pt"
    torch.save({"epoch": 1, "model": {"w": torch.zeros(2)}, "extra": _Payload(marker)}, path)
    with pytest.raises(CheckpointError, match="corrupt or not a pclc checkpoint"):
        load_checkpoint(path)
    assert not marker.exists()
    # the same file read the unsafe way does run the payload: the refusal above is what protects
    torch.load(path, weights_only=False)
    assert marker.exists()


# --------------------------------------------------------------------------- YAML


def test_no_unsafe_yaml_loader_in_the_code() -> None:
    pattern = re.compile(r"yaml\.(load|unsafe_load|full_load|load_all|unsafe_load_all|full_load_all)\(|Loader\s*=")
    assert not [f"{p.relative_to(ROOT)}" for p in SOURCES if pattern.search(p.read_text())]


def _payload_yaml(marker: Path) -> str:
    return f'name: !!python/object/apply:os.system ["touch {marker}"]\n'


def test_a_python_tag_in_a_sweep_file_is_refused_unexecuted(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "sweep.yaml"
    path.write_text(QUICKSTART.read_text() + "\n" + _payload_yaml(marker).replace("name:", "description:"))
    assert main(["sweep", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"config file {path} is not valid YAML" in err and "python/object/apply:os.system" in err
    assert "Traceback" not in err and not marker.exists()


def test_a_python_tag_in_a_train_config_or_override_is_refused_unexecuted(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "run.yaml"
    path.write_text(_payload_yaml(marker).replace("name:", "loss:"))
    assert main(["train", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert "is not valid YAML" in err and "python/object/apply:os.system" in err
    assert main(["train", "--set", f'loss=!!python/object/apply:os.system ["touch {marker}"]']) == 2
    assert "--set loss: cannot read value" in capsys.readouterr().err
    assert (
        main(["sweep", str(QUICKSTART), "--set", f'description=!!python/object/apply:os.system ["touch {marker}"]'])
        == 2
    )
    assert "--set description: cannot read value" in capsys.readouterr().err
    assert not marker.exists()


# --------------------------------------------------------------------------- MLflow on loopback


def test_mlflow_commands_the_project_shows_bind_loopback_only() -> None:
    from mlflow.cli import cli

    # `mlflow server`/`mlflow ui` without --host bind 127.0.0.1: pin that, since the project relies on it
    host = next(p for p in cli.commands["server"].params if p.name == "host")
    assert host.default == "127.0.0.1"
    texts = {p: p.read_text() for p in [*SOURCES, ROOT / "README.md", ROOT / "Makefile"] if p.is_file()}
    commands = [(p, m[0]) for p, t in texts.items() for m in re.finditer(r"mlflow (?:ui|server)\b[^\n\"')]*", t)]
    assert commands
    for path, command in commands:
        hosts = re.findall(r"--host[ =](\S+)", command)
        assert all(h in ("127.0.0.1", "localhost") for h in hosts), f"{path.relative_to(ROOT)}: {command}"


# --------------------------------------------------------------------------- where the commands write


@pytest.mark.slow
def test_train_writes_only_into_its_folder(tmp_path: Path) -> None:
    """`pclc train` leaves nothing outside runs/ (the sweep and analyze share of this is in test_journey.py)."""
    fast = ["epochs=1", "warmup_epochs=0", "eval_limit=32", "attack_steps=1", "attacks=[fgsm]"]
    fast += ["epoch_eval_samples=0", "train_limit=128"]
    argv = [sys.executable, "-m", "sweeps.cli", "train", "--quiet", *(a for f in fast for a in ("--set", f))]
    with user_folders(tmp_path) as user:
        proc = subprocess.run(argv, cwd=user.work, env=user.env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, f"{proc.stdout[-2000:]}{proc.stderr[-3000:]}"
        written = files_under(user.work)
        assert written and all(f.startswith("runs/train-digits-") for f in written), written
        home = files_under(user.home)
        assert not [f for f in home if not f.startswith(".cache/matplotlib/")], home
        assert files_under(user.tmp) == [], files_under(user.tmp)
