"""MLflow writes per second through the head's tracking server: SQLite against PostgreSQL, 8 and 32 writers.

The server is the cluster's own (`cluster/start_mlflow.sh`), over its default SQLite file or over a
throwaway PostgreSQL (tests/postgres.py). Each writer is a trial's real writer (`sweeps.tracking.TrialRun`)
in its own process: it opens its run, then all writers log their per-epoch metrics back to back (one
`log_batch` each) and the final evaluation. writes/s = epochs logged by all writers / the time from the
first writer's first epoch to the last writer's last.

    python benchmarks/tracking_writes.py                # 20 epochs per writer
    python benchmarks/tracking_writes.py --smoke-test   # 3 epochs per writer, 4 writers
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from postgres import HeadMlflow, psycopg2_missing, throwaway_postgres  # noqa: E402
from sweep_util import final_metric_names, notes, runs, tiny_optimize, write_like_a_trial  # noqa: E402

from sweeps.tracking import SweepTracker  # noqa: E402

WRITERS = (8, 32)
SMOKE_WRITERS = (4,)  # --smoke-test: the same path, a fraction of the wall time (the suite runs it)
SERVER_WORKERS = 2  # the machine's cores; start_mlflow.sh's default (4) is for the cluster's head


def writes_per_second(server_uri: str, name: str, n: int, epochs: int, work: Path) -> float:
    """Fork `n` writers that start together; their epochs logged per second, once all runs are FINISHED."""
    notes_dir = work / name
    notes_dir.mkdir()
    trial = tiny_optimize(name, work).trial
    tracker = SweepTracker(server_uri)
    tracker.start_parent(
        name=name,
        mode="optimize",
        headline_metric="robust_acc",
        objective=[],
        experiment_path=str(work / name),
        resolved_config=f"name: {name}\n",
        resume=False,
    )
    fork = multiprocessing.get_context("fork")
    barrier = fork.Barrier(n)
    names = final_metric_names(trial)
    procs = [
        fork.Process(
            target=write_like_a_trial,
            args=(tracker.target, f"w{i:02d}", {**trial.to_dict(), "seed": i}, names),
            kwargs={"epochs": epochs, "notes_dir": str(notes_dir), "barrier": barrier},
        )
        for i in range(n)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=900)
    assert [p.exitcode for p in procs] == [0] * n, [p.exitcode for p in procs]
    _, children = runs(server_uri, name)
    assert len(children) == n and all(c.info.status == "FINISHED" for c in children)
    starts, ends = [], []
    for path in notes_dir.glob("*.jsonl"):
        entries = notes(path)
        starts += [e["start"] for e in entries if "start" in e]
        ends += [e["time"] for e in entries if e.get("final") is False]
    return n * epochs / (max(ends) - min(starts))


def measure(epochs: int, work: Path, writers: tuple[int, ...] = WRITERS) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    for backend in ("sqlite", "postgresql"):
        home = work / f"home-{backend}"
        home.mkdir()
        with throwaway_postgres(home) if backend == "postgresql" else contextlib.nullcontext() as pg:
            server = HeadMlflow(home, pg.uri if pg else None, workers=SERVER_WORKERS)
            with server.running():
                for n in writers:
                    rate = writes_per_second(server.uri, f"{backend}-{n}", n, epochs, work)
                    rows.append({"backend": backend, "writers": n, "writes_per_s": rate})
                    print(f"{backend:>10}, {n:2d} writers: {rate:7.1f} writes/s", flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke-test", action="store_true", help="3 epochs per writer, 4 writers")
    parser.add_argument("--json", type=Path, help="write the numbers here as JSON (benchmarks/run_all.py)")
    args = parser.parse_args(argv)
    writers = SMOKE_WRITERS if args.smoke_test else WRITERS
    reason = psycopg2_missing()
    if reason is not None:
        print(f"skipped: {reason}")
        result: dict[str, object] = {"skipped": reason}
    else:
        with tempfile.TemporaryDirectory(prefix="pclc-bench-writes-") as tmp:
            rows = measure(3 if args.smoke_test else 20, Path(tmp), writers)
        rate = {(r["backend"], r["writers"]): r["writes_per_s"] for r in rows}
        result = {
            "rows": rows,
            "load": os.getloadavg()[0],
            "pg_over_sqlite": {str(n): rate["postgresql", n] / rate["sqlite", n] for n in writers},
        }
        for n in writers:
            print(f"{n} writers: PostgreSQL / SQLite = {result['pg_over_sqlite'][str(n)]:.2f}")
    if args.json:
        args.json.write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
