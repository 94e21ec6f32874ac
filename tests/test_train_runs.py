"""`pclc train`: one run, one folder, and an interrupted run resumed to the weights of an uninterrupted one.

Real runs on digits with a tiny config (a few seconds each); the interruptions are real signals to a real
`pclc train` process, sent once it has printed an epoch.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
from torch import nn

from pclc.config import make_config
from pclc.run_folder import CHECKPOINT, new_run_folder
from pclc.train import Trainer, seed_everything
from sweeps.cli import main

# 12 epochs of ~0.3 s: a signal sent when epoch 3 is printed lands long before the end
TINY = {
    "epochs": 12,
    "warmup_epochs": 2,
    "attacks": "[fgsm]",
    "eval_limit": 16,
    "epoch_eval_samples": 8,
    "epoch_attack_steps": 2,
    "threads": 1,
}
SETS = [arg for k, v in TINY.items() for arg in ("--set", f"{k}={v}")]
RUNNER = "import sys\nfrom sweeps.cli import main\nsys.exit(main(sys.argv[1:]))\n"


def train_process(*args: str, cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", RUNNER, "train", *SETS, *args], cwd=cwd, stderr=subprocess.PIPE, text=True
    )


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return torch.load(folder / "model.pt", weights_only=True)


def same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, torch.Tensor]:
    """The weights of the tiny run trained straight through (in-process: one torch thread, as the config says)."""
    out = tmp_path_factory.mktemp("straight") / "run"
    assert main(["train", *SETS, "--set", f"out_dir={out}", "--quiet"]) == 0
    return weights(out)


# --------------------------------------------------------------------------- one run, one folder


def test_default_folders_never_collide_even_in_one_second(tmp_path: Path) -> None:
    made: list[Path] = []
    threads = [threading.Thread(target=lambda: made.append(new_run_folder(tmp_path, "train-x"))) for _ in range(64)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(made)) == 64 and all(p.is_dir() for p in made)


def test_two_train_runs_started_together_write_two_folders(tmp_path: Path) -> None:
    procs = [train_process("--set", "epochs=2", "--set", "warmup_epochs=1", "--quiet", cwd=tmp_path) for _ in range(2)]
    outs = []
    for p in procs:
        _, err = p.communicate(timeout=240)
        assert p.returncode == 0, err[-2000:]
        outs.append(next(line for line in err.splitlines() if line.startswith("wrote ")))
    assert outs[0] != outs[1]
    folders = sorted((tmp_path / "runs").iterdir())
    assert len(folders) == 2
    for folder in folders:  # each folder holds one whole run, its own
        assert sorted(p.name for p in folder.iterdir()) == ["metrics.json", "model.pt", "outcomes.json"]


def test_an_explicit_out_dir_holding_a_run_is_refused_unless_overwritten(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "mine"
    short = [*SETS, "--set", "epochs=1", "--set", "warmup_epochs=0", "--set", f"out_dir={out}", "--quiet"]
    assert main(["train", *short]) == 0
    first = (out / "metrics.json").read_text()
    capsys.readouterr()
    assert main(["train", *short]) == 2
    err = capsys.readouterr().err
    assert f"out_dir {out} already holds a run (metrics.json, outcomes.json, model.pt); pass --overwrite" in err
    assert (out / "metrics.json").read_text() == first  # nothing recorded is lost
    # an overwrite without weights: the old model.pt must not stand beside the new metrics
    assert main(["train", *short, "--set", "save_weights=false", "--set", "lr=0.002", "--overwrite"]) == 0
    assert not (out / "model.pt").exists()
    assert json.loads((out / "metrics.json").read_text())["config"]["lr"] == 0.002
    assert main(["train", *short, "--overwrite", "--resume"]) == 2
    assert "choose one" in capsys.readouterr().err


def test_a_refused_run_leaves_no_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", *SETS, "--set", f"dataset=npz:{tmp_path / 'gone.npz'}"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()
    assert main(["train", *SETS, "--resume"]) == 2  # nothing to resume
    assert "no interrupted run of this config" in capsys.readouterr().err


# --------------------------------------------------------------------------- resume


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["ctrl-c", "kill"])
def test_an_interrupted_run_resumes_to_the_uninterrupted_weights(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], uninterrupted: dict[str, torch.Tensor], sig: signal.Signals
) -> None:
    # Ctrl-C on the default folder (found again by --resume), a kill on an explicit out_dir
    out = [] if sig == signal.SIGINT else ["--set", f"out_dir={tmp_path / 'mine'}"]
    proc = train_process(*out, cwd=tmp_path)
    assert proc.stderr is not None
    for line in proc.stderr:
        if line.startswith("[epoch] epoch=3,"):
            proc.send_signal(sig)
            break
    _, rest = proc.communicate(timeout=120)
    assert proc.returncode == (130 if sig == signal.SIGINT else -signal.SIGKILL), rest[-2000:]
    folder = next((tmp_path / "runs").iterdir()) if not out else tmp_path / "mine"
    assert [p.name for p in folder.iterdir() if not p.name.startswith(".")] == [CHECKPOINT]  # no results yet
    saved = torch.load(folder / CHECKPOINT, weights_only=True)
    assert 3 <= saved["epoch"] < TINY["epochs"]

    # the same command with another setting is not a resume of this run
    assert main(["train", *SETS, *out, "--set", "lr=0.01", "--resume"]) == 2
    expected = "is a run of another config (lr: 0.001 → 0.01)" if out else "no interrupted run of this config"
    assert expected in capsys.readouterr().err
    # without --resume an explicit out_dir holding the interrupted run is refused, naming --resume
    if out:
        assert main(["train", *SETS, *out]) == 2
        assert "already holds an interrupted run (checkpoint.pt)" in capsys.readouterr().err

    assert main(["train", *SETS, *out, "--resume", "--quiet"]) == 0
    assert f"resuming {folder} after epoch {saved['epoch']}" in capsys.readouterr().err
    assert same_weights(weights(folder), uninterrupted)  # bit-identical on the CPU
    assert not (folder / CHECKPOINT).exists()  # finished: the checkpoint is gone, the results are there


def test_the_checkpoint_carries_the_global_generator_dropout_draws_from() -> None:
    cfg = make_config({"epochs": 2, "warmup_epochs": 0, "loss": "ce", "batch_size": 16})
    x, y = torch.rand(64, 1, 8, 8), torch.arange(64) % 4

    def model() -> nn.Module:
        torch.manual_seed(0)
        return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.Dropout(0.5), nn.Linear(32, 4))

    straight = Trainer(cfg, model(), torch.device("cpu"), seed_everything(0))
    straight.train_epoch(x, y)
    state = straight.state_dict()
    straight.train_epoch(x, y)
    torch.manual_seed(123)  # a new process: the global generator is wherever its start left it
    resumed = Trainer(cfg, model(), torch.device("cpu"), seed_everything(0))
    resumed.load_state_dict(state)
    resumed.train_epoch(x, y)
    assert same_weights(resumed.model.state_dict(), straight.model.state_dict())
