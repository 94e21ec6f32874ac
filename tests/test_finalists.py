"""`pclc evaluate`: real trained weights in a real MLflow store, re-scored with standard AutoAttack.

The store is laid out the way a sweep lays it out (sweeps.tracking: a parent run, one child run per trial,
evaluation.json and weights/model.pt), from trials that `run_trial` really trained on digits. AutoAttack
runs with few steps and queries (`--aa-steps`, `--square-queries`) on 64 samples so the file stays quick.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from mlflow.tracking import MlflowClient
from sweep_util import TINY_TRIAL, started_tracker

from analysis.load import fetch_outcomes
from pclc import metrics as M
from pclc.config import make_config
from pclc.contract import OUTCOMES_ARTIFACT
from pclc.experiment import Silent, run_trial
from sweeps.cli import main
from sweeps.finalists import FINALIST, state_path
from sweeps.tracking import TrialRun

EXPERIMENT = "finalists"
QUICK = ["--limit", "64", "--aa-steps", "5", "--square-queries", "20", "--chunk-size", "32"]
FINALIST_ROBUST = M.to_mlflow(M.finalist_key(M.ROBUST_ACC))
FINALIST_CLEAN = M.to_mlflow(M.finalist_key(M.CLEAN_ACC))
FINALIST_N = M.to_mlflow(M.finalist_key("n_samples"))

# `pclc evaluate ARGS` in a process of its own, SIGKILLed through the command's fault seam (`on_chunk`) right
# after it saved its first chunk: the kill lands where a real one would, after the atomic write of the state.
KILLED_AFTER_FIRST_CHUNK = """
import os, signal, sys
from sweeps.cli import build_parser
from sweeps.finalists_command import evaluate_command

def kill(state_file, start):
    assert start == 0 and state_file.is_file()
    os.kill(os.getpid(), signal.SIGKILL)

sys.exit(evaluate_command(build_parser().parse_args(["evaluate", *sys.argv[1:]]), on_chunk=kill))
"""

# A trial of a few seconds on digits, scored on the same 64 test samples `pclc evaluate --limit 64` uses.
TRIAL: dict[str, Any] = {
    **{k: v for k, v in TINY_TRIAL.items() if k not in {"attack_steps", "aa_steps", "aa_limit", "epoch_attack_steps"}},
    "epoch_eval_samples": 0,
    "attacks": ["fgsm"],
    "save_weights": True,
}
TRIALS = {  # name → changes; `weak` hardly trains, so `strong` is the sweep's best by robust_acc
    "strong": {"seed": 0},
    "weak": {"seed": 1, "loss": "ce", "epochs": 1, "warmup_epochs": 0, "lr": 0.0003},
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """name → the trial's output folder (metrics.json and model.pt), trained once for the module."""
    root = tmp_path_factory.mktemp("trained")
    out = {}
    for name, changes in TRIALS.items():
        cfg = make_config({**TRIAL, **changes, "out_dir": str(root / name)})
        run_trial(cfg, Silent())
        out[name] = root / name
    robust = {n: json.loads((p / "metrics.json").read_text())["metrics"]["robust_acc"] for n, p in out.items()}
    assert robust["strong"] > robust["weak"], robust
    return out


@pytest.fixture
def store(tmp_path: Path, trained: dict[str, Path]) -> tuple[str, dict[str, str]]:
    """(tracking URI, name → child run id): a fresh sweep store holding `strong`, `weak`, and `no_weights`
    (the weak trial logged as one that ran with save_weights: false)."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = started_tracker(uri, EXPERIMENT, experiment_path=str(tmp_path / "ray_results" / EXPERIMENT))
    ids = {}
    for name, folder in [("strong", trained["strong"]), ("weak", trained["weak"]), ("no_weights", trained["weak"])]:
        payload = json.loads((folder / "metrics.json").read_text())
        config = {**payload["config"], "save_weights": name != "no_weights"}
        run = TrialRun.open(tracker.target, trial_id=name, params=config)
        final = {k: v for k, v in payload["metrics"].items()}
        weights = folder / "model.pt" if name != "no_weights" else None
        outcomes = (folder / OUTCOMES_ARTIFACT).read_text()
        run.log_final(final, {**payload, "config": config}, weights, outcomes=outcomes)
        ids[name] = run.run_id
    tracker.finish_parent()
    return uri, ids


def evaluate(uri: str, *args: str) -> int:
    return main(["evaluate", "--tracking-uri", uri, *args])


def flags(path: Path) -> dict[str, tuple[int, str, str]]:
    """start → (end, clean flags, robust flags) of a state file."""
    chunks = json.loads(path.read_text())["chunks"]
    return {start: (c["end"], c["clean"], c["robust"]) for start, c in chunks.items()}


@pytest.mark.timeout(240)
def test_evaluate_logs_finalist_metrics_into_the_same_run_and_changes_nothing_else(
    store: tuple[str, dict[str, str]], capsys: pytest.CaptureFixture[str]
) -> None:
    uri, ids = store
    client = MlflowClient(uri)
    before = client.get_run(ids["strong"])
    histories = {k: client.get_metric_history(ids["strong"], k) for k in before.data.metrics}
    ray_loaded = "ray" in sys.modules  # (another test module of the same session may have loaded it)

    assert evaluate(uri, "--run-id", ids["strong"], *QUICK) == 0
    out = capsys.readouterr().out

    after = client.get_run(ids["strong"])
    assert after.info.status == "FINISHED" and after.info.end_time == before.info.end_time
    for key, history in histories.items():  # the trial's own metrics: untouched, none added at other steps
        assert client.get_metric_history(ids["strong"], key) == history, key
    metrics = after.data.metrics
    assert metrics[FINALIST_N] == 64 and after.data.tags[FINALIST] == "1"
    assert 0.0 <= metrics[FINALIST_ROBUST] <= metrics[FINALIST_CLEAN] <= 1.0
    assert metrics[M.to_mlflow(M.finalist_key(M.robust_key("autoattack", 0.1)))] == metrics[FINALIST_ROBUST]
    # the trial scored the same 64 test samples: the same weights give the same clean accuracy
    assert metrics[FINALIST_CLEAN] == pytest.approx(before.data.metrics[M.CLEAN_ACC])
    assert ids["strong"] in out and "pclc ξ=0.995 λ=0.05 seed=0" in out  # the table: run id and config label
    if not ray_loaded:  # without --address, Ray is never imported
        assert "ray" not in sys.modules
    # the other runs of the sweep are left alone
    assert not any(k.startswith(M.FINALIST_PREFIX) for k in client.get_run(ids["weak"]).data.metrics)

    # again, same settings: nothing is scored or logged twice
    assert evaluate(uri, "--run-id", ids["strong"], *QUICK) == 0
    assert "already scored" in capsys.readouterr().out
    assert len(client.get_metric_history(ids["strong"], FINALIST_ROBUST)) == 1

    # its per-sample outcomes: beside the trial's own, and they give back every finalist accuracy exactly;
    # a later call for one more eps scores only that one and keeps the earlier eps' outcomes
    assert evaluate(uri, "--run-id", ids["strong"], "--eps", "0.1", "0.2", *QUICK) == 0
    logged = {M.canonical_metric(k): v for k, v in client.get_run(ids["strong"]).data.metrics.items()}
    finalist = fetch_outcomes(client, ids["strong"], finalist=True)
    trial = fetch_outcomes(client, ids["strong"])
    # the first 64 of the stratified draw: the very samples (and labels) the trial scored with eval_limit 64
    assert finalist is not None and trial is not None and finalist.dataset == "digits"
    assert finalist.indices.tolist() == trial.indices.tolist() and finalist.indices.tolist() != list(range(64))
    assert finalist.labels.tolist() == trial.labels.tolist()
    assert set(finalist.keys) == {M.CLEAN_ACC, *(M.robust_key("autoattack", e) for e in (0.1, 0.2))}
    assert {M.finalist_key(k): v for k, v in finalist.metrics().items()} == {
        k: v for k, v in logged.items() if k.startswith(M.FINALIST_PREFIX) and k != M.finalist_key("n_samples")
    }
    assert {k: logged[k] for k in trial.metrics()} == trial.metrics()
    assert (finalist.correct[M.CLEAN_ACC] == trial.correct[M.CLEAN_ACC]).all()  # same weights, same samples
    assert fetch_outcomes(client, ids["weak"], finalist=True) is None  # never re-scored


@pytest.mark.timeout(240)
def test_top_1_picks_the_best_finished_run_of_the_latest_sweep(
    store: tuple[str, dict[str, str]], capsys: pytest.CaptureFixture[str]
) -> None:
    uri, ids = store
    assert evaluate(uri, "--experiment", EXPERIMENT, "--top", "1", "--eps", "0.1", "0.2", *QUICK) == 0
    client = MlflowClient(uri)
    scored = {name for name, rid in ids.items() if client.get_run(rid).data.tags.get(FINALIST) == "1"}
    assert scored == {"strong"}
    metrics = client.get_run(ids["strong"]).data.metrics
    at = {e: metrics[M.to_mlflow(M.finalist_key(M.robust_key("autoattack", e)))] for e in (0.1, 0.2)}
    assert metrics[FINALIST_ROBUST] == at[0.1] and at[0.2] <= at[0.1]  # the headline is eps 0.1
    assert f"the top 1 of {EXPERIMENT!r}: {ids['strong']}" in capsys.readouterr().err


@pytest.mark.timeout(300)
def test_a_killed_evaluation_resumes_without_rescoring_its_finished_chunks(
    store: tuple[str, dict[str, str]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    uri, ids = store
    rid = ids["strong"]
    killed_dir, clean_dir, one_shot_dir = tmp_path / "killed", tmp_path / "uninterrupted", tmp_path / "one_shot"
    # 1. a real process, SIGKILLed right after it saved its first chunk (of two)
    command = [
        sys.executable,
        "-c",
        KILLED_AFTER_FIRST_CHUNK,
        "--tracking-uri",
        uri,
        "--run-id",
        rid,
        "--state-dir",
        str(killed_dir),
        *QUICK,
    ]
    killed = subprocess.run(command, check=False, capture_output=True, text=True, timeout=240)
    assert killed.returncode == -9, killed.stderr[-2000:]
    state = state_path(killed_dir, rid, 0.1)
    first = json.loads(state.read_text())["chunks"]
    assert list(first) == ["0"]
    assert FINALIST not in MlflowClient(uri).get_run(rid).data.tags  # nothing logged by the killed run

    # 2. the restart scores only the second chunk
    assert evaluate(uri, "--run-id", rid, "--state-dir", str(killed_dir), *QUICK) == 0
    assert "resumed (1 chunks kept)" in capsys.readouterr().out
    chunks = json.loads(state.read_text())["chunks"]
    assert chunks["0"] == first["0"]  # not scored again (same pid, same time)
    assert chunks["32"]["pid"] == os.getpid() != first["0"]["pid"]
    resumed = MlflowClient(uri).get_run(rid).data.metrics

    # 3. an uninterrupted run gives the very same per-sample flags and numbers
    assert evaluate(uri, "--run-id", rid, "--state-dir", str(clean_dir), "--force", *QUICK) == 0
    assert flags(state_path(clean_dir, rid, 0.1)) == flags(state)
    again = MlflowClient(uri).get_run(rid).data.metrics
    assert {k: again[k] for k in (FINALIST_ROBUST, FINALIST_CLEAN, FINALIST_N)} == {
        k: resumed[k] for k in (FINALIST_ROBUST, FINALIST_CLEAN, FINALIST_N)
    }

    # 4. chunking vs one shot: the reference seeds each batch, so they may differ in general; on this
    # small case they agree sample for sample (the chunk stays the unit of seeding either way)
    one_shot = [*QUICK[:-1], "64"]
    assert evaluate(uri, "--run-id", rid, "--state-dir", str(one_shot_dir), "--force", *one_shot) == 0
    (whole,) = flags(state_path(one_shot_dir, rid, 0.1)).values()
    halves = flags(state)
    assert whole[1] == halves["0"][1] + halves["32"][1] and whole[2] == halves["0"][2] + halves["32"][2]


@pytest.mark.timeout(240)
def test_a_run_without_weights_exits_2_naming_it_and_the_other_runs_are_still_scored(
    store: tuple[str, dict[str, str]], capsys: pytest.CaptureFixture[str]
) -> None:
    uri, ids = store
    assert evaluate(uri, "--run-id", ids["no_weights"], ids["strong"], *QUICK) == 2
    err = capsys.readouterr().err
    assert f"run {ids['no_weights']} has no weights artifact" in err and "save_weights: true" in err
    assert err.strip().splitlines()[-1].endswith(f"1 of 2 runs could not be re-scored: {ids['no_weights']}")
    client = MlflowClient(uri)
    assert client.get_run(ids["strong"]).data.tags.get(FINALIST) == "1"
    assert FINALIST not in client.get_run(ids["no_weights"]).data.tags


@pytest.mark.timeout(120)
def test_unknown_runs_and_stores_are_one_message_and_exit_2(
    store: tuple[str, dict[str, str]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    uri, ids = store
    assert evaluate(uri, "--run-id", ids["strong"], "deadbeef") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("pclc evaluate: error: no run 'deadbeef' in sqlite:///"), err
    assert evaluate(f"sqlite:///{tmp_path / 'nothing.db'}", "--run-id", ids["strong"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no MLflow database at" in err[0], err
    assert evaluate(uri, "--experiment", "nope", "--top", "1") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "experiment 'nope' does not exist" in err[0], err
    assert FINALIST not in MlflowClient(uri).get_run(ids["strong"]).data.tags


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_with_address_a_task_given_a_gpu_torch_cannot_use_is_refused_and_records_nothing(
    store: tuple[str, dict[str, str]], capsys: pytest.CaptureFixture[str]
) -> None:
    import torch
    from ray.cluster_utils import Cluster

    if torch.cuda.is_available():
        pytest.skip("this machine's torch can use CUDA: a GPU here is usable")
    uri, ids = store
    # A one-node cluster that advertises a GPU: Ray hands it to the task, torch (CPU-only here) cannot use it.
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "num_gpus": 1, "include_dashboard": False})
    try:
        assert evaluate(uri, "--address", cluster.address, "--run-id", ids["strong"], *QUICK) == 2
    finally:
        cluster.shutdown()
    err = capsys.readouterr().err
    assert f"run {ids['strong']}: this Ray task was given GPU 0 but torch.cuda.is_available() is False" in err, err
    assert FINALIST not in MlflowClient(uri).get_run(ids["strong"]).data.tags


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_with_address_each_run_is_one_ray_task(
    store: tuple[str, dict[str, str]], capsys: pytest.CaptureFixture[str]
) -> None:
    uri, ids = store
    assert evaluate(uri, "--address", "local", "--run-id", ids["strong"], ids["weak"], ids["no_weights"], *QUICK) == 2
    captured = capsys.readouterr()
    assert f"run {ids['no_weights']} has no weights artifact" in captured.err
    client = MlflowClient(uri)
    for name in ("strong", "weak"):
        run = client.get_run(ids[name])
        assert (
            run.info.status == "FINISHED" and run.data.tags.get(FINALIST) == "1" and run.data.metrics[FINALIST_N] == 64
        )
        assert ids[name] in captured.out


@pytest.mark.timeout(240)
def test_progress_names_the_attack_and_the_points_remaining_and_changes_no_number(
    store: tuple[str, dict[str, str]], trained: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import re

    import torch

    from pclc.attacks import AttackSuite, run_suite
    from pclc.data import load_dataset
    from pclc.models import create_model
    from pclc.samples import draw
    from pclc.train import load_checkpoint
    from sweeps.finalists import Settings, evaluate_run

    uri, ids = store
    rid = ids["strong"]
    quick = {"limit": 64, "aa_steps": 5, "square_queries": 20, "chunk_size": 32}
    chatty = Settings(tracking_uri=uri, state_dir=str(tmp_path / "chatty"), progress_every=0.0, **quick)
    assert evaluate_run(rid, chatty).chunks_scored == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if f"run {rid[:8]} eps=0.1 chunk " in line]
    saved = flags(state_path(tmp_path / "chatty", rid, 0.1))

    # per chunk: a start line, then each attack of the ensemble, in its order, starts and ends naming the points
    # still robust, with lines in between (every forward pass here, as progress_every is 0)
    order = ["apgd_ce", "apgd_t", "fab_t", "square"]
    for chunk, start, later in (("1/2", "0", "; 32 samples in later chunks"), ("2/2", "32", "")):
        own = [line.split(f"chunk {chunk}: ", 1)[1] for line in lines if f"chunk {chunk}: " in line]
        assert own[0] == f"scoring samples {start}–{int(start) + 32} of 64{later}", own
        assert all(line.endswith(later) for line in own)
        started = [m[1] for line in own if (m := re.match(r"(\w+) starts on \d+ of 32 points still robust", line))]
        assert started and started == order[: len(started)], own
        assert any(line.startswith(f"{started[0]} running for ") for line in own), own
        done = [
            int(m[1]) for line in own if (m := re.match(r"\w+ done in \d+ s: (\d+) of 32 points still robust", line))
        ]
        assert len(done) == len(started) and done == sorted(done, reverse=True)
        # what the last attack left standing is what the chunk saved as robust
        assert done[-1] == saved[start][2].count("1"), (own, saved[start])

    # at the default pace a quick chunk prints only the start and end lines; the numbers are the same as
    # with a line on every forward pass, and as the runner's own on the same chunks, unwatched
    quiet = Settings(tracking_uri=uri, state_dir=str(tmp_path / "quiet"), force=True, **quick)
    evaluate_run(rid, quiet)
    assert not any("running for" in line for line in capsys.readouterr().err.splitlines())
    assert flags(state_path(tmp_path / "quiet", rid, 0.1)) == saved
    cfg = json.loads((trained["strong"] / "metrics.json").read_text())["config"]
    data = load_dataset("digits")
    model = create_model(cfg["model"], input_shape=data.input_shape, num_classes=data.num_classes)
    model.load_state_dict(load_checkpoint(trained["strong"] / "model.pt"))
    suite = AttackSuite(
        attacks=("autoattack",),
        eps=(0.1,),
        aa_limit=None,
        batch_size=cfg["eval_batch_size"],
        seed=cfg["seed"],
        aa_steps=5,
        square_queries=20,
    )
    drawn = draw(data.x_test, data.y_test, num_classes=data.num_classes, eval_limit=64, aa_limit=None, epoch_samples=0)
    for start in (0, 32):
        picked = torch.as_tensor(drawn.evaluated[start : start + 32])  # the chunk: 32 samples of the draw
        x, y = data.x_test[picked], data.y_test[picked]
        robust = run_suite(model.eval(), x, y, suite).robust("autoattack", 0.1)
        assert "".join("1" if r else "0" for r in robust.tolist()) == saved[str(start)][2]
