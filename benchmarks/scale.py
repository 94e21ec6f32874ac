"""What the sweep system itself costs at a thousand trials, dozens at once: one table, one row per (store, N, C).

The real driver (`sweeps.driver.run_sweep`: Ray Tune, Optuna's TPE, the MLflow parent and child runs, a
checkpoint per epoch, the reconcile at the end) runs N trials, C at a time, on a Ray cluster simulated on
this machine (`ray.cluster_utils.Cluster`: a head without CPUs and worker nodes whose logical CPUs add up
to C). Only the trial body is a stand-in, injected where the fault tests inject theirs (`run_fn`): it
sleeps `--epoch-seconds` per epoch and reports a real trial's per-epoch metrics, checkpoint and final
metrics (the default attack suite's names), so every byte the system moves is real and the GPUs' work is
not. MLflow is the head's server as `cluster/start_mlflow.sh` starts it, over its SQLite default and
over a throwaway PostgreSQL (tests/postgres.py).

Per row:
- efficiency: ideal wall (N × trial time / C) over the sweep's wall; the per-trial overhead (wall × C / N −
  trial time) and the efficiency a 60 s trial would get with it (60 / (60 + overhead): extrapolated);
- the driver's CPU seconds per trial and its peak memory (and growth per trial);
- Tune's experiment snapshot at the end (its last `TuneController.checkpoint`), and the longest;
- Optuna: the time to suggest the last trial against the tenth;
- MLflow: metric points expected, lost and duplicated (read back from the store's own tables), writes/s;
- `pclc analyze` on the finished sweep, once the simulated workers are gone: wall time and its own peak memory;
- the time from `--resume` to the first trial running again after the driver is killed at 50 % (a second
  sweep of the same size; its points are counted too: lost and duplicated include it).

Each row runs in its own process (peak memory and Ray do not leak between rows).

    python benchmarks/scale.py                      # N 100, 1000 × C 8, 32 × SQLite, PostgreSQL
    python benchmarks/scale.py --trials 1000 --concurrent 32 --store postgresql
    python benchmarks/scale.py --smoke-test         # N 40, C 8, SQLite, kill and resume (the suite runs it)
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import io
import itertools
import json
import os
import random
import resource
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from postgres import HeadMlflow, psycopg2_missing, throwaway_postgres  # noqa: E402

from pclc import contract as C  # noqa: E402
from pclc import metrics as M  # noqa: E402
from pclc.config import TrialConfig  # noqa: E402
from pclc.experiment import Evaluation, Reporter  # noqa: E402

WEIGHTS = 60_000  # floats in the stand-in's checkpoint: a small CNN's weights and optimiser state (≈ 240 kB)
EPOCH_KEYS = (M.EPOCH, M.TRAIN_LOSS, M.CLEAN_ACC, M.EPOCH_ROBUST_ACC, M.TRAIN_SECONDS, M.GPU_HOURS)
SMOKE = {"trials": [40], "concurrent": [8], "store": ["sqlite"], "epochs": 3, "epoch_seconds": 0.5}
FULL = {"trials": [100, 1000], "concurrent": [8, 32], "store": ["sqlite", "postgresql"], "epochs": 3}


# --------------------------------------------------------------------------- the stand-in trial
def final_names(cfg: TrialConfig) -> list[str]:
    """The final metrics a real trial with this config logs (the default suite's names and the costs)."""
    from sweeps.config import objective_metrics

    extra = [M.TRIAL_SECONDS, M.EVAL_SECONDS, M.PROB_GAP]
    return sorted(set(objective_metrics(cfg)) | set(extra) | set(EPOCH_KEYS))


def standin_trial(
    cfg: TrialConfig,
    report: Reporter,
    *,
    epoch_s: float,
    notes_dir: str,
    resume: dict[str, Any] | None = None,
    **_: Any,
) -> dict[str, float]:
    """A trial without the training: `epoch_s` of sleep per epoch, then exactly what a real trial reports.
    Deterministic like a seeded CPU trial: a retried or resumed attempt reports the same values, so any
    point stored twice is the system's doing. Notes each start and each finish in `notes_dir`."""
    import torch

    trial = os.path.basename(str(cfg.out_dir))
    with open(os.path.join(notes_dir, "starts.jsonl"), "a") as f:
        f.write(json.dumps({"trial": trial, "time": time.time(), "pid": os.getpid()}) + "\n")
    key = repr(sorted(cfg.to_dict().items()))

    def epoch_metrics(epoch: int) -> dict[str, float]:
        rng = random.Random(f"{key}/{epoch}")
        return {
            M.EPOCH: epoch,
            M.TRAIN_LOSS: 1.0 / epoch + rng.random() / 10,
            M.CLEAN_ACC: 0.9 + rng.random() / 20,
            M.EPOCH_ROBUST_ACC: 0.4 + rng.random() / 5,
            M.TRAIN_SECONDS: epoch * epoch_s,
            M.GPU_HOURS: 0.0,
        }

    start = int(resume["epoch"]) if resume else 0
    reporting = 0.0  # seconds spent in the reporter: MLflow, the checkpoint, Tune
    for epoch in range(start + 1, cfg.epochs + 1):
        time.sleep(epoch_s)
        t0 = time.perf_counter()
        report.on_epoch(epoch_metrics(epoch), {"epoch": epoch, "weights": torch.zeros(WEIGHTS), "spent": {}})
        reporting += time.perf_counter() - t0
    rng = random.Random(f"{key}/final")
    final = {name: rng.random() for name in final_names(cfg)}
    final.update(epoch_metrics(cfg.epochs))  # the last epoch's values, as a real trial's final holds
    t0 = time.perf_counter()
    report.on_final(Evaluation(metrics=final, warnings=[], config=cfg.to_dict()))
    reporting += time.perf_counter() - t0
    with open(os.path.join(notes_dir, f"{trial}.final"), "w") as f:
        json.dump({"reporting_s": reporting, "pid": os.getpid(), "time": time.time()}, f)
    return final


# --------------------------------------------------------------------------- the sweep, the cluster, the store
def scale_sweep(name: str, work: Path, trials: int, concurrent: int, epochs: int, uri: str) -> Any:
    """An Optuna search over four knobs, N trials, C at a time: no references, no confirmation (the
    system's own cost is measured, not a verdict)."""
    from sweeps.config import parse_sweep

    return parse_sweep(
        {
            "name": name,
            "mode": "optimize",
            "trial": {"dataset": "digits", "model": "small_cnn", "epochs": epochs, "warmup_epochs": 1, "threads": 1},
            "objective": [{"metric": "robust_acc", "mode": "max"}],
            "space": {
                "margin": {"type": "uniform", "low": 0.9, "high": 0.999},
                "lc_weight": {"type": "loguniform", "low": 0.01, "high": 0.5},
                "lr": {"type": "loguniform", "low": 0.0003, "high": 0.01},
                "warmup_epochs": {"type": "int", "low": 0, "high": epochs - 1},
            },
            "num_trials": trials,
            "reference": [],
            "confirm": {"top": 0},
            "max_concurrent": concurrent,
            "max_retries": 2,
            "storage_path": str(work / "ray_results"),
            "tracking_uri": uri,
        },
        source=name,
    )


@contextlib.contextmanager
def simulated_cluster(concurrent: int, nodes: int) -> Iterator[str]:
    """A head without CPUs and `nodes` worker nodes holding `concurrent` logical CPUs between them."""
    from ray.cluster_utils import Cluster

    store = 80 * 2**20  # the stand-in moves nothing through the object store
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 0, "object_store_memory": store, "include_dashboard": False},
    )
    try:
        per = [concurrent // nodes + (i < concurrent % nodes) for i in range(nodes)]
        for cpus in per:
            cluster.add_node(num_cpus=cpus, object_store_memory=store)
        cluster.wait_for_nodes()
        yield cluster.address
    finally:
        cluster.shutdown()


@dataclass
class Store:
    """The head's MLflow server and how to read its backend's tables directly."""

    uri: str
    query: Any  # (sql) -> list of row tuples


@contextlib.contextmanager
def mlflow_store(kind: str, home: Path) -> Iterator[Store]:
    """`cluster/start_mlflow.sh` over its SQLite default or over a throwaway PostgreSQL."""
    if kind == "sqlite":
        import sqlite3

        with HeadMlflow(home, None, workers=2).running() as server:

            def query(sql: str) -> list[tuple[Any, ...]]:
                with contextlib.closing(sqlite3.connect(home / "pclc-mlflow" / "mlflow.db", timeout=60)) as db:
                    return db.execute(sql).fetchall()

            yield Store(server.uri, query)
        return
    missing = psycopg2_missing()
    if missing:
        raise SystemExit(f"scale: PostgreSQL rows need psycopg2: {missing}")
    with throwaway_postgres(home) as pg, HeadMlflow(home, pg.uri, workers=2).running() as server:

        def query(sql: str) -> list[tuple[Any, ...]]:
            out = pg.sql(sql, database="mlflow")
            return [tuple(line.split("|")) for line in out.splitlines() if line]

        yield Store(server.uri, query)


# --------------------------------------------------------------------------- what the row measures
class Timed:
    """Wall times of every call to `cls.method` in this process (the driver's), recorded in `self.seconds`."""

    def __init__(self, cls: type, method: str, keep: Any = lambda result: True) -> None:
        self.seconds: list[float] = []
        original = getattr(cls, method)

        @functools.wraps(original)
        def timed(obj: Any, *args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            result = original(obj, *args, **kwargs)
            if keep(result):
                self.seconds.append(time.perf_counter() - t0)
            return result

        setattr(cls, method, timed)


def metric_points(store: Store, experiment: str, trials: int, cfg: TrialConfig) -> dict[str, Any]:
    """Points in the store's `metrics` table for the sweep's trial runs against what N trials report;
    `repeats` shows a few (run, key, step) stored more than once, with their timestamps and values."""
    rows = store.query(
        "SELECT m.run_uuid, m.key, m.step, m.timestamp, m.value FROM metrics m "
        "JOIN runs r ON r.run_uuid = m.run_uuid JOIN experiments e ON e.experiment_id = r.experiment_id "
        f"WHERE e.name = '{experiment}' AND r.lifecycle_stage = 'active' AND m.run_uuid NOT IN "
        "(SELECT run_uuid FROM tags WHERE key = 'pclc.role' AND value = 'sweep')"
    )
    attempts = store.query(
        "SELECT t.value FROM tags t JOIN runs r ON r.run_uuid = t.run_uuid JOIN experiments e "
        f"ON e.experiment_id = r.experiment_id WHERE e.name = '{experiment}' AND t.key = '{C.ATTEMPTS}'"
    )
    epochs = cfg.epochs
    per_run = {(k, s) for k in EPOCH_KEYS for s in range(1, epochs + 1)}
    per_run |= {(k, epochs) for k in final_names(cfg)}
    per_run = {(M.to_mlflow(k), s) for k, s in per_run}
    seen: dict[tuple[str, str, int], list[tuple[str, str]]] = {}
    for run, key, step, stamp, value in rows:
        seen.setdefault((run, key, int(step)), []).append((str(stamp), str(value)))
    expected_found = sum((key, step) in per_run for _, key, step in seen)
    repeats = [f"{k[0][:8]} {k[1]}@{k[2]}: {v}" for k, v in seen.items() if len(v) > 1]
    values = sum(len({value for _, value in v}) for v in seen.values())
    return {
        "expected": trials * len(per_run),
        "written": len(rows),
        "lost": trials * len(per_run) - expected_found,
        "duplicated": len(rows) - values,  # the same value at a (run, key, step) stored again
        "rewritten": values - len(seen),  # a different value at a (run, key, step) already stored
        "unexpected": len(seen) - expected_found,
        "runs": len({k[0] for k in seen}),
        "reopened": sum(int(a[0]) > 1 for a in attempts),  # runs opened again: a retry or a resume
        "repeats": repeats[:12],
    }


def worker_gaps(starts: list[dict[str, Any]], finals: list[dict[str, Any]]) -> tuple[int, float]:
    """(distinct trial processes, mean seconds from a trial's end to the next start in the same process)."""
    events: dict[int, list[tuple[float, str]]] = {}
    for note in starts:
        events.setdefault(note["pid"], []).append((note["time"], "start"))
    for note in finals:
        events.setdefault(note["pid"], []).append((note["time"], "end"))
    gaps = [
        b[0] - a[0]
        for timeline in events.values()
        for a, b in itertools.pairwise(sorted(timeline))
        if a[1] == "end" and b[1] == "start"
    ]
    return len(events), sum(gaps) / len(gaps) if gaps else float("nan")


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# `python -m analysis ARGS` that writes its own peak memory to FILE (argv[1]) as it ends. The peak is read from
# /proc/self/status (VmHWM, this program's own memory): the rusage of a child also counts the copy of its
# parent it was forked as, the benchmark's 1.2 GB, whatever the analysis itself used.
ANALYZE_WITH_PEAK = """
import runpy, sys
from pathlib import Path
peak = Path(sys.argv.pop(1))
try:
    runpy.run_module("analysis", run_name="__main__", alter_sys=True)
finally:
    with open("/proc/self/status") as status:
        hwm = next(line for line in status if line.startswith("VmHWM:"))
    peak.write_text(str(int(hwm.split()[1]) / 1024))
"""


def analyze(uri: str, experiment: str, out: Path) -> tuple[float, float]:
    """`pclc analyze` on the finished sweep in its own process: (wall s, its own peak MB)."""
    out.mkdir(parents=True, exist_ok=True)
    peak = out / "peak_mb.txt"
    args = ["--experiment", experiment, "--tracking-uri", uri, "--out", str(out)]
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", ANALYZE_WITH_PEAK, str(peak), *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"scale: pclc analyze failed: {proc.stderr[-3000:]}")
    return wall, float(peak.read_text())


def drive(spec: Path, address: str, resume: bool) -> int:
    """`--drive`: the sweep of `spec` as `pclc sweep` runs it, with the stand-in trial (the killed driver)."""
    from sweeps.config import parse_sweep
    from sweeps.driver import ray_session, run_sweep, set_tune_environment

    data = json.loads(spec.read_text())
    cfg = parse_sweep(data["sweep"], source=str(spec))
    run_fn = functools.partial(standin_trial, epoch_s=data["epoch_s"], notes_dir=data["notes_dir"])
    with ray_session(address, log_to_driver=False):
        set_tune_environment()
        _register_by_value()
        run_sweep(cfg, resume=resume, run_fn=run_fn, prepared={}, out=io.StringIO())
    return 0


def _register_by_value() -> None:
    """Workers cannot import this folder: the stand-in travels by value."""
    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


def _count(notes: Path, suffix: str) -> int:
    return sum(1 for p in notes.iterdir() if p.name.endswith(suffix))


def kill_and_resume(spec: Path, notes: Path, address: str, trials: int, timeout: float) -> float:
    """Drive the sweep in a subprocess, SIGKILL it once half the trials finished, resume it; the seconds
    from the resume's start to the first trial starting again. The resumed sweep is run to its end."""

    log = notes / "driver.log"

    def driver(*extra: str) -> subprocess.Popen[bytes]:
        cmd = [sys.executable, __file__, "--drive", str(spec), "--address", address, *extra]
        with open(log, "ab") as f:
            return subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)

    def failed(what: str) -> SystemExit:
        return SystemExit(f"scale: {what}; the driver's output:\n{log.read_text()[-5000:]}")

    first = driver()
    deadline = time.monotonic() + timeout
    while _count(notes, ".final") < trials / 2:
        if first.poll() is not None or time.monotonic() > deadline:
            raise failed(f"the driver to kill ended or stalled (rc {first.poll()}) before 50 %")
        time.sleep(0.05)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    t0 = time.time()
    second = driver("--resume")
    starts = notes / "starts.jsonl"
    resumed_at = None
    while second.poll() is None and time.monotonic() < deadline:
        if resumed_at is None:
            after = [json.loads(line)["time"] for line in starts.read_text().splitlines() if line.strip()]
            later = [t for t in after if t >= t0]
            resumed_at = min(later) if later else None
        time.sleep(0.1)
    if second.poll() is None:
        os.killpg(second.pid, signal.SIGKILL)
        raise failed("the resumed sweep did not finish in time")
    if second.returncode != 0 or resumed_at is None:
        raise failed(f"the resumed sweep failed (rc {second.returncode}) or ran no trial")
    return resumed_at - t0


@dataclass
class Row:
    store: str
    trials: int
    concurrent: int
    epochs: int
    epoch_s: float
    wall_s: float = 0.0
    efficiency: float = 0.0
    overhead_s: float = 0.0  # per trial: wall × C / N − trial time
    efficiency_60s: float = 0.0  # extrapolated to 60 s trials: see `efficiency_at`
    reporting_s: float = 0.0  # per trial, inside the trial: its reports (MLflow, checkpoint, Tune)
    setup_s: float = 0.0  # per trial, inside the trainable but outside the trial body (opening its run …)
    driver_cpu_per_trial_s: float = 0.0
    driver_peak_mb: float = 0.0
    driver_mb_per_trial: float = 0.0
    snapshot_last_s: float = 0.0
    snapshot_max_s: float = 0.0
    snapshot_total_s: float = 0.0  # every snapshot of the sweep together (the driver does nothing else meanwhile)
    optuna_10th_ms: float = 0.0
    optuna_last_ms: float = 0.0
    points: dict[str, Any] = field(default_factory=dict)  # both sweeps: the measured one and the killed one
    points_killed: dict[str, Any] = field(default_factory=dict)  # the killed-and-resumed sweep alone
    writes_per_s: float = 0.0
    analyze_s: float = 0.0
    analyze_peak_mb: float = 0.0
    resume_s: float | None = None
    startup_s: float = 0.0  # from run_sweep's call to the first trial's start (parent run, Tuner, actors)
    wrapup_s: float = 0.0  # from the last trial's end to run_sweep's return (reconcile, verdict, summary)
    finished: int = 0
    workers: int = 0  # distinct trial processes: C when Tune reuses its actors
    between_s: float = 0.0  # mean time a worker waits between one trial's end and its next trial's start


def efficiency_at(trial_s: float, row: Row) -> float:
    """The efficiency N trials of `trial_s` would get with this row's once-per-sweep costs and per-trial
    overhead (both measured with the stand-in's short trials: an extrapolation, not a measurement)."""
    wall = row.startup_s + row.wrapup_s + row.trials / row.concurrent * (trial_s + max(row.overhead_s, 0.0))
    return row.trials * trial_s / row.concurrent / wall


def measure_row(row: Row, *, nodes: int, kill: bool, work: Path) -> Row:
    """One (store, N, C): the sweep, its store read back, the killed-and-resumed sweep, then `pclc analyze`
    of the first sweep once the simulated cluster is down."""
    from ray.tune.execution.tune_controller import TuneController

    from sweeps.driver import FinalMetricOptunaSearch, ray_session, run_sweep, set_tune_environment

    home = work / "home"
    home.mkdir()
    notes = work / "notes"
    notes.mkdir()
    with mlflow_store(row.store, home) as store:
        with simulated_cluster(row.concurrent, nodes) as address:
            name = f"scale-{row.store}-{row.trials}x{row.concurrent}"
            cfg = scale_sweep(name, work, row.trials, row.concurrent, row.epochs, store.uri)
            snapshots = Timed(TuneController, "checkpoint")
            suggests = Timed(FinalMetricOptunaSearch, "suggest", keep=lambda config: isinstance(config, dict))
            run_fn = functools.partial(standin_trial, epoch_s=row.epoch_s, notes_dir=str(notes))
            with ray_session(address, log_to_driver=False):
                set_tune_environment()
                _register_by_value()
                base_mb, cpu0, t0, began = peak_mb(), time.process_time(), time.perf_counter(), time.time()
                result = run_sweep(cfg, run_fn=run_fn, prepared={}, out=io.StringIO())
                row.wall_s, ended = time.perf_counter() - t0, time.time()
                cpu = time.process_time() - cpu0
            row.finished = len(result.finished)
            trial_s = row.epochs * row.epoch_s
            row.efficiency = row.trials * trial_s / row.concurrent / row.wall_s
            starts = [json.loads(line) for line in (notes / "starts.jsonl").read_text().splitlines()]
            finals = [json.loads(p.read_text()) for p in notes.glob("*.final")]
            row.workers, row.between_s = worker_gaps(starts, finals)
            # once per sweep: up to the first trial's start, after the last trial's end; per trial: the rest
            row.startup_s = min(n["time"] for n in starts) - began
            row.wrapup_s = ended - max(n["time"] for n in finals)
            steady = row.wall_s - row.startup_s - row.wrapup_s
            row.overhead_s = steady * row.concurrent / row.trials - trial_s
            row.efficiency_60s = efficiency_at(60.0, row)
            row.reporting_s = sum(f["reporting_s"] for f in finals) / max(1, len(finals))
            spans = [r.metrics.get("time_total_s", float("nan")) for r in result.grid if r.metrics]
            body = trial_s + row.reporting_s
            row.setup_s = sum(spans) / max(1, len(spans)) - body
            row.driver_cpu_per_trial_s = cpu / row.trials
            row.driver_peak_mb = peak_mb()
            row.driver_mb_per_trial = (row.driver_peak_mb - base_mb) / row.trials
            row.snapshot_last_s = snapshots.seconds[-1] if snapshots.seconds else float("nan")
            row.snapshot_max_s = max(snapshots.seconds, default=float("nan"))
            row.snapshot_total_s = sum(snapshots.seconds)
            times = suggests.seconds
            row.optuna_10th_ms = 1000 * times[min(9, len(times) - 1)] if times else float("nan")
            row.optuna_last_ms = 1000 * times[-1] if times else float("nan")
            points = metric_points(store, name, row.trials, cfg.trial)
            row.writes_per_s = points["written"] / row.wall_s
            if kill:
                killed = scale_sweep(f"{name}-kill", work, row.trials, row.concurrent, row.epochs, store.uri)
                kill_notes = work / "kill-notes"
                kill_notes.mkdir()
                spec = work / "kill.json"
                payload = {
                    "sweep": killed.model_dump(mode="json"),
                    "epoch_s": row.epoch_s,
                    "notes_dir": str(kill_notes),
                }
                spec.write_text(json.dumps(payload))
                row.resume_s = kill_and_resume(spec, kill_notes, address, row.trials, timeout=20 * row.wall_s + 600)
                again = row.points_killed = metric_points(store, killed.name, row.trials, killed.trial)
                points = {k: points[k] + again[k] for k in points}
        # after the workers are gone (on a cluster they are other machines): the analysis shares this
        # machine with the MLflow server alone, as it would on the head or a laptop
        row.analyze_s, row.analyze_peak_mb = analyze(store.uri, name, work / "report")
        row.points = points
    return row


# --------------------------------------------------------------------------- the table
def table(rows: list[Row]) -> str:
    """One row per (store, N, C); '—' where a figure was not measured."""
    head = (
        "| store | N | C | efficiency | start-up, wrap-up s | overhead/trial s (reports, set-up, between) | eff. at 60 s trials | driver CPU s/trial | driver peak MB "
        "(MB/trial) | snapshot at end s (max; all) | Optuna suggest 10th → last ms | points expected | lost | dup | rewritten | "
        "writes/s | analyze s (peak MB) | resume → running s |"
    )
    lines = [head, "|" + " --- |" * (head.count("|") - 1)]
    for r in rows:
        p = r.points
        resume = f"{r.resume_s:.1f}" if r.resume_s is not None else "—"
        lines.append(
            f"| {r.store} | {r.trials} | {r.concurrent} | {r.efficiency:.2f} | {r.startup_s:.0f}, {r.wrapup_s:.0f} | "
            f"{r.overhead_s:.2f} "
            f"({r.reporting_s:.2f}, {r.setup_s:.2f}, {r.between_s:.2f}) | "
            f"{r.efficiency_60s:.3f} | {r.driver_cpu_per_trial_s:.3f} | {r.driver_peak_mb:.0f} "
            f"({r.driver_mb_per_trial:.2f}) | {r.snapshot_last_s:.2f} ({r.snapshot_max_s:.2f}; {r.snapshot_total_s:.0f}) | "
            f"{r.optuna_10th_ms:.1f} → {r.optuna_last_ms:.1f} | {p.get('expected', 0)} | {p.get('lost', -1)} | "
            f"{p.get('duplicated', -1)} | {p.get('rewritten', -1)} | {r.writes_per_s:.0f} | {r.analyze_s:.1f} ({r.analyze_peak_mb:.0f}) | "
            f"{resume} |"
        )
    return "\n".join(lines)


def run_row(args: argparse.Namespace, store: str, trials: int, concurrent: int) -> Row:
    """One row in its own process (a short private temp folder: Ray's socket paths, its address file)."""
    with tempfile.TemporaryDirectory(prefix="pclc-scale-", dir="/tmp") as tmp:
        os.chmod(tmp, 0o711)  # PostgreSQL's own user must reach its data folder below it
        out = Path(tmp) / "row.json"
        cmd = [
            sys.executable,
            __file__,
            "--row",
            str(out),
            "--store",
            store,
            "--trials",
            str(trials),
            "--concurrent",
            str(concurrent),
            "--epochs",
            str(args.epochs),
            "--epoch-seconds",
            str(args.epoch_seconds),
            "--nodes",
            str(args.nodes),
        ] + (["--no-kill"] if args.no_kill else [])
        env = {**os.environ, "TMPDIR": tmp, "RAY_TMPDIR": tmp}
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(
                f"scale row {store} N={trials} C={concurrent} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
            )
        data = json.loads(out.read_text())
    return Row(**data)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke-test", action="store_true", help="N 40, C 8, SQLite (the suite runs it)")
    parser.add_argument("--trials", type=int, nargs="+", help="N values (default 100 1000)")
    parser.add_argument("--concurrent", type=int, nargs="+", help="C values (default 8 32)")
    parser.add_argument("--store", nargs="+", choices=("sqlite", "postgresql"), help="MLflow backends")
    parser.add_argument("--epochs", type=int, default=3, help="E, epochs per stand-in trial")
    parser.add_argument("--epoch-seconds", type=float, default=2.0, help="the stand-in's seconds per epoch")
    parser.add_argument("--nodes", type=int, default=4, help="simulated worker nodes sharing the C CPUs")
    parser.add_argument("--no-kill", action="store_true", help="skip the kill at 50 %% and the resume")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    parser.add_argument("--row", type=Path, help=argparse.SUPPRESS)  # internal: one row, written here
    parser.add_argument("--drive", type=Path, help=argparse.SUPPRESS)  # internal: the driver that is killed
    parser.add_argument("--address", help=argparse.SUPPRESS)
    parser.add_argument("--resume", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.drive:
        return drive(args.drive, args.address, args.resume)
    sizes = SMOKE if args.smoke_test else FULL
    if args.smoke_test:
        args.epochs, args.epoch_seconds, args.nodes = sizes["epochs"], sizes["epoch_seconds"], 2
    if args.row:
        row = Row(args.store[0], args.trials[0], args.concurrent[0], args.epochs, args.epoch_seconds)
        with tempfile.TemporaryDirectory(prefix="w-") as tmp:
            measure_row(row, nodes=args.nodes, kill=not args.no_kill, work=Path(tmp))
        args.row.write_text(json.dumps(asdict(row)))
        return 0

    rows = []
    for store in args.store or sizes["store"]:
        for trials in args.trials or sizes["trials"]:
            for concurrent in args.concurrent or sizes["concurrent"]:
                rows.append(run_row(args, store, trials, concurrent))
                print(f"scale: {store} N={trials} C={concurrent} done in {rows[-1].wall_s:.0f} s", file=sys.stderr)
    cpus = os.cpu_count()
    print(
        f"\nscale ({'smoke test' if args.smoke_test else 'full'}; {cpus} CPUs; stand-in trials of "
        f"{args.epochs} × {args.epoch_seconds} s):"
    )
    print(table(rows))
    if args.json:
        args.json.write_text(json.dumps({"rows": [asdict(r) for r in rows], "smoke_test": args.smoke_test}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
