from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

FAST = [
    "--set",
    "epochs=2",
    "--set",
    "warmup_epochs=1",
    "--set",
    "eval_limit=64",
    "--set",
    "attack_steps=2",
    "--set",
    "attacks=[fgsm, pgd_ce]",
    "--set",
    "epoch_eval_samples=0",
]


def pclc(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sweeps.cli", *args], cwd=cwd, capture_output=True, text=True, timeout=600
    )


@pytest.mark.parametrize("loss", ["ce", "pclc"])
def test_train_prints_the_metrics_as_json_and_writes_them(tmp_path: Path, loss: str) -> None:
    out = tmp_path / "out"
    proc = pclc("train", "--quiet", *FAST, "--set", f"loss={loss}", "--set", f"out_dir={out}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads(proc.stdout)
    assert {"clean_acc", "robust_acc", "prob_gap", "robust_acc/pgd_ce/eps=0.1"} <= metrics.keys()
    assert json.loads((out / "metrics.json").read_text())["config"]["loss"] == loss
    assert (out / "model.pt").is_file()


def test_train_says_which_samples_it_scored_and_a_limit_below_the_class_count(tmp_path: Path) -> None:
    proc = pclc("train", *FAST, "--set", "eval_limit=8", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "[samples] a stratified draw of the test split: evaluated: 8 samples, 8/10 classes" in (proc.stderr)
    said = [line for line in proc.stderr.splitlines() if line.startswith("[warning] Samples:")]
    assert said == [
        "[warning] Samples: eval_limit = 8 is smaller than the 10 classes of the test split: its subset covers 8 of "
        f"them (missing: {said[0].rsplit('missing: ', 1)[1]}"
    ]


def test_train_reads_a_yaml_config(tmp_path: Path) -> None:
    (tmp_path / "run.yaml").write_text("loss: pc\nmargin: 0.9\n")
    proc = pclc("train", "--quiet", "--config", "run.yaml", *FAST, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    written = next((tmp_path / "runs").glob("train-digits-small_cnn-pc-*/metrics.json"))
    assert json.loads(written.read_text())["config"]["margin"] == 0.9


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--set", "marginn=0.9"], "marginn: unknown key"),
        (["--set", "margin=2"], "margin = 2"),
        (["--set", "dataset=imagenet"], "unknown dataset 'imagenet'"),
        (["--set", "model=resnet1000"], "unknown model 'resnet1000'"),
        (["--config", "missing.yaml"], "missing.yaml does not exist"),
    ],
)
def test_bad_input_is_one_message_and_exit_code_2(tmp_path: Path, args: list[str], needle: str) -> None:
    proc = pclc("train", *args, cwd=tmp_path)
    assert proc.returncode == 2
    assert needle in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    proc = pclc("--debug", "train", "--set", "margin=2", cwd=tmp_path)
    assert proc.returncode != 0 and "Traceback" in proc.stderr


def test_debug_is_accepted_after_the_subcommand_too(tmp_path: Path) -> None:
    proc = pclc("train", "--debug", "--set", "margin=2", cwd=tmp_path)
    assert proc.returncode != 0 and "Traceback" in proc.stderr and "margin" in proc.stderr


def test_an_unwritable_output_folder_is_refused_before_training(tmp_path: Path) -> None:
    (tmp_path / "a_file").write_text("not a folder")
    proc = pclc("train", *FAST, "--set", f"out_dir={tmp_path / 'a_file' / 'out'}", cwd=tmp_path)
    assert proc.returncode == 2 and "cannot be written" in proc.stderr and "a_file" in proc.stderr
    assert "[epoch]" not in proc.stderr and "Traceback" not in proc.stderr
