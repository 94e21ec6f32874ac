"""Does a sweep survive its driver being SIGKILLed at any moment? A kill-point sweep.

Runs a small sweep once uninterrupted to time it, then, for each kill point spread over that time
(early, mid-epoch, around checkpoints, during final evaluations, between trials, near the end),
starts the same sweep afresh, SIGKILLs the driver's whole process group (the driver and the Ray it
started) at that moment, resumes it with `--resume`, and checks the invariants: exactly N trials
FINISHED, none FAILED or RUNNING, one parent and one MLflow run per trial, every epoch logged exactly
once, trials that had finished before the kill untouched, and Optuna's initial point evaluated once.

    python benchmarks/kill_points.py                 # 4 trials × 4 epochs, 8 kill points
    python benchmarks/kill_points.py --smoke-test    # 3 trials × 2 epochs, 4 kill points (CI)
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from sweep_util import EPOCH_KEYS, history, runs, tiny_optimize  # noqa: E402


def sweep_file(work: Path, trials: int, epochs: int) -> Path:
    cfg = tiny_optimize("kp", work, num_trials=trials, max_concurrent=2, trial={"epochs": epochs})
    path = work / "kp.yaml"
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    return path


def run(work: Path, *extra: str, kill_after: float | None = None, timeout: float = 900) -> tuple[int, float, str]:
    """The sweep command in `work`; SIGKILLed (whole process group) after `kill_after` seconds if given."""
    cmd = [sys.executable, "-m", "sweeps", str(work / "kp.yaml"), *extra]
    start = time.monotonic()
    with open(work / "driver.log", "a") as log:
        proc = subprocess.Popen(cmd, cwd=work, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            proc.wait(timeout=kill_after if kill_after is not None else timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=60)
    return proc.returncode, time.monotonic() - start, (work / "driver.log").read_text()


def finished_runs(work: Path) -> dict[str, int]:
    """run id → end time of every FINISHED trial run so far (empty if the store is not there yet)."""
    from mlflow.tracking import MlflowClient

    try:
        client = MlflowClient(f"sqlite:///{work / 'mlflow.db'}")
        exp = client.get_experiment_by_name("kp")
        if exp is None:
            return {}
        found = client.search_runs([exp.experiment_id], "tags.`pclc.role` = 'trial' and attributes.status = 'FINISHED'")
        return {r.info.run_id: r.info.end_time for r in found}
    except Exception:
        return {}


def check(work: Path, trials: int, epochs: int, done_before: dict[str, int]) -> list[str]:
    """What is wrong with the finished sweep in `work` (empty: nothing)."""
    uri = f"sqlite:///{work / 'mlflow.db'}"
    problems = []
    try:
        parent, children = runs(uri, "kp")
    except AssertionError as exc:  # not exactly one parent run
        return [f"parent runs: {str(exc)[:200]}"]
    if parent.info.status != "FINISHED":
        problems.append(f"parent run {parent.info.status}")
    ids = [c.data.tags.get("pclc.trial_id") for c in children]
    if len(children) != trials or len(set(ids)) != trials:
        problems.append(f"{len(children)} trial runs ({len(set(ids))} distinct), expected {trials}")
    bad = [c.info.status for c in children if c.info.status != "FINISHED"]
    if bad:
        problems.append(f"runs not FINISHED: {bad}")
    ended = {c.info.run_id: c.info.end_time for c in children}
    if {run_id: ended.get(run_id) for run_id in done_before} != done_before:
        problems.append("a trial that had finished before the kill was run again or replaced")
    authors = [
        c for c in children if (c.data.params.get("margin"), c.data.params.get("lc_weight")) == ("0.995", "0.05")
    ]
    if len(authors) != 1:  # Optuna's state survived: its initial point was evaluated exactly once
        problems.append(f"the initial point was evaluated {len(authors)} times")
    for child in children:
        for key in EPOCH_KEYS:
            steps = [s for s, _ in history(uri, child, key)]
            if steps != list(range(1, epochs + 1)):
                problems.append(f"{key} steps {steps} in {child.data.tags.get('pclc.trial_id')}")
    return problems


def phase(work: Path, log: str) -> str:
    """What the sweep had done when it was killed: trials ended (driver's progress lines), checkpoints on disk."""
    import re

    done = len(re.findall(r"^\[\d+/\d+\] trial \w+ finished", log, re.M))
    checkpoints = len(list((work / "ray_results" / "kp").glob("trial_*/checkpoint_*")))
    return f"{done} trial(s) ended, {checkpoints} checkpoint(s) on disk"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke-test", action="store_true")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    # 3 trials, 2 at a time: the kills also land between trials (one ended, the third not yet started)
    trials, epochs = (3, 2) if args.smoke_test else (4, 4)
    fractions = [0.25, 0.4, 0.55, 0.7] if args.smoke_test else [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.75, 0.9]
    rows = []
    with tempfile.TemporaryDirectory(prefix="pclc-kill-") as tmp:
        base = Path(tmp) / "uninterrupted"
        base.mkdir()
        sweep_file(base, trials, epochs)
        rc, total, log = run(base)
        if rc != 0 or check(base, trials, epochs, {}):
            raise SystemExit(f"the uninterrupted sweep failed:\n{log[-3000:]}")
        print(f"uninterrupted sweep: {trials} trials × {epochs} epochs in {total:.0f} s")
        print("| kill at | of the sweep | state at the kill | resume | survived |")
        print("| --- | --- | --- | --- | --- |")
        for f in fractions:
            work = Path(tmp) / f"kill-{f:.2f}"
            work.mkdir()
            sweep_file(work, trials, epochs)
            rc, _, log = run(work, kill_after=f * total)
            killed = rc == -signal.SIGKILL
            state = phase(work, log) if killed else "(had ended before the kill)"
            done_before = finished_runs(work)
            rc2, resume_s, log2 = run(work, "--resume")
            problems = check(work, trials, epochs, done_before) if rc2 == 0 else [f"resume exited {rc2}: {log2[-500:]}"]
            rows.append(
                {"at_s": f * total, "fraction": f, "killed": killed, "resume_s": resume_s, "problems": problems}
            )
            print(
                f"| {f * total:.0f} s | {f:.0%} | {state} | {resume_s:.0f} s | {'yes' if not problems else 'NO: ' + '; '.join(problems)} |"
            )
    survived = sum(not r["problems"] for r in rows)
    print(f"kill points survived: {survived} / {len(rows)}")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "survived": survived, "total": len(rows)}, indent=2))
    return 0 if survived == len(rows) else 1


if __name__ == "__main__":
    sys.exit(main())
