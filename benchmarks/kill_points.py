"""Does a sweep survive its driver being SIGKILLed at any moment? A kill-point sweep.

Runs a small sweep once uninterrupted to time it, then, for each kill point spread over that time
(early, mid-epoch, around checkpoints, during final evaluations, between trials, near the end) or
set by an event (Tune just started, the first checkpoint, the first trial finished: narrow windows a
fraction of the time hits only by chance), starts the same sweep afresh, SIGKILLs the driver's whole process group (the driver and the Ray it
started) at that moment, resumes it with `--resume`, and checks the invariants: exactly N trials
FINISHED, none FAILED or RUNNING, one parent and one MLflow run per trial, every epoch logged exactly
once, trials that had finished before the kill untouched, and Optuna's initial point evaluated once.

    python benchmarks/kill_points.py                 # 4 trials × 4 epochs, 11 kill points (3 events)
    python benchmarks/kill_points.py --smoke-test    # 3 trials × 2 epochs, 3 kill points (2 events; CI)
    python benchmarks/kill_points.py --smoke-test --at tune-started 0.4 --keep /tmp/kp   # these, kept
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
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


PROGRESS = r"^\[\d+/\d+\] trial \w+ finished"  # the driver's line for a trial that ended


def _experiment(work: Path) -> Path:
    return work / "ray_results" / "kp"


# Moments a fraction of the wall time hits only by chance: each kill lands as soon as its condition holds.
EVENTS: dict[str, Callable[[Path], bool]] = {
    "tune-started": lambda work: (_experiment(work) / "tuner.pkl").exists(),  # before Tune's first snapshot
    "first-checkpoint": lambda work: any(_experiment(work).glob("trial_*/checkpoint_*")),
    "first-trial-finished": lambda work: bool(re.search(PROGRESS, (work / "driver.log").read_text(), re.M)),
}


def run(
    work: Path, *extra: str, kill_after: float | None = None, kill_at: str | None = None, timeout: float = 900
) -> tuple[int, float, str]:
    """The sweep command in `work`; SIGKILLed (whole process group) after `kill_after` seconds, or as soon
    as the event `kill_at` (see EVENTS) has happened, if given."""
    cmd = [sys.executable, "-m", "sweeps", str(work / "kp.yaml"), *extra]
    start = time.monotonic()
    with open(work / "driver.log", "a") as log:
        proc = subprocess.Popen(cmd, cwd=work, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        wait = kill_after if kill_after is not None else timeout
        if kill_at is not None:
            while proc.poll() is None and not EVENTS[kill_at](work) and time.monotonic() - start < timeout:
                time.sleep(0.02)
            wait = 0  # the moment has come: kill it unless it has ended
        try:
            proc.wait(timeout=wait)
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
    done = len(re.findall(PROGRESS, log, re.M))
    checkpoints = len(list((work / "ray_results" / "kp").glob("trial_*/checkpoint_*")))
    return f"{done} trial(s) ended, {checkpoints} checkpoint(s) on disk"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke-test", action="store_true")
    parser.add_argument("--json", type=Path)
    parser.add_argument(
        "--at",
        nargs="+",
        metavar="POINT",
        help=f"kill points: fractions of the uninterrupted sweep's time, or events ({', '.join(EVENTS)})",
    )
    parser.add_argument("--keep", type=Path, help="keep each sweep's folder (logs, store, Ray results) here")
    args = parser.parse_args(argv)
    # 3 trials, 2 at a time: the kills also land between trials (one ended, the third not yet started)
    trials, epochs = (3, 2) if args.smoke_test else (4, 4)
    default = (
        ["tune-started", "first-checkpoint", 0.55]  # two events: the kills land while it runs, on any machine
        if args.smoke_test
        else [0.1, "tune-started", 0.2, 0.3, "first-checkpoint", 0.4, 0.5, "first-trial-finished", 0.6, 0.75, 0.9]
    )
    points = [p if p in EVENTS else float(p) for p in args.at] if args.at else default
    rows = []
    with tempfile.TemporaryDirectory(prefix="pclc-kill-") as scratch:
        tmp = args.keep or scratch
        base = Path(tmp) / "uninterrupted"
        base.mkdir(parents=True)
        sweep_file(base, trials, epochs)
        rc, total, log = run(base)
        if rc != 0 or check(base, trials, epochs, {}):
            raise SystemExit(f"the uninterrupted sweep failed:\n{log[-3000:]}")
        print(f"uninterrupted sweep: {trials} trials × {epochs} epochs in {total:.0f} s")
        print("| kill at | of the sweep | state at the kill | resume | survived |")
        print("| --- | --- | --- | --- | --- |")
        for point in points:
            event = point if isinstance(point, str) else None
            work = Path(tmp) / f"kill-{event or f'{point:.2f}'}"
            work.mkdir()
            sweep_file(work, trials, epochs)
            if event:
                rc, at, log = run(work, kill_at=event)
            else:
                rc, _, log = run(work, kill_after=point * total)
                at = point * total
            killed = rc == -signal.SIGKILL
            state = phase(work, log) if killed else "(had ended before the kill)"
            done_before = finished_runs(work)
            if args.keep and (work / "ray_results").is_dir():  # what the resume found, for a post-mortem
                shutil.copytree(work / "ray_results", work / "ray_results.at-kill")
            rc2, resume_s, log2 = run(work, "--resume")
            problems = check(work, trials, epochs, done_before) if rc2 == 0 else [f"resume exited {rc2}: {log2[-500:]}"]
            fraction = at / total
            rows.append(
                {
                    "at_s": at,
                    "event": event,
                    "fraction": fraction,
                    "killed": killed,
                    "resume_s": resume_s,
                    "problems": problems,
                }
            )
            print(
                f"| {at:.0f} s{f' ({event})' if event else ''} | {fraction:.0%} | {state} | {resume_s:.0f} s "
                f"| {'yes' if not problems else 'NO: ' + '; '.join(problems)} |"
            )
    survived = sum(not r["problems"] for r in rows)
    print(f"kill points survived: {survived} / {len(rows)}")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "survived": survived, "total": len(rows)}, indent=2))
    return 0 if survived == len(rows) else 1


if __name__ == "__main__":
    sys.exit(main())
