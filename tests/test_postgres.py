"""The cluster's PostgreSQL path, proven: `cluster/start_mlflow.sh` over a real PostgreSQL (the password in
~/.pgpass only), 32 trial writers at once through the server, the server restarted mid-write with
`stop_mlflow.sh` / `start_mlflow.sh`, and afterwards every run and every metric there exactly once."""

from __future__ import annotations

import multiprocessing
import time
from pathlib import Path

import pytest
from postgres import HeadMlflow, psycopg2_missing, throwaway_postgres
from sweep_util import (
    assert_mlflow_holds_every_report,
    final_metric_names,
    notes,
    runs,
    started_tracker,
    tiny_optimize,
    write_like_a_trial,
)

pytestmark = pytest.mark.slow

WRITERS = 32
EPOCHS = 4


def test_32_writers_through_start_mlflow_on_postgresql_survive_a_restart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if reason := psycopg2_missing():
        pytest.skip(reason)
    home = tmp_path / "home"
    home.mkdir()
    notes_dir = tmp_path / "notes"
    notes_dir.mkdir()
    trial = tiny_optimize("pg", tmp_path).trial
    with throwaway_postgres(home) as pg, HeadMlflow(home, pg.uri, workers=1).running() as server:
        assert ":" not in pg.uri.split("@")[0].removeprefix("postgresql://")  # no password in the URI
        tracker = started_tracker(server.uri, "pg", experiment_path=str(tmp_path / "pg"), objective=[])
        names = final_metric_names(trial)
        fork = multiprocessing.get_context("fork")
        writers = [
            fork.Process(
                target=write_like_a_trial,
                args=(tracker.target, f"t{i:02d}", {**trial.to_dict(), "seed": i}, names),
                kwargs={"epochs": EPOCHS, "notes_dir": str(notes_dir), "pause_s": 1.0},
            )
            for i in range(WRITERS)
        ]
        for w in writers:
            w.start()

        # half the writers have logged an epoch, the others are opening their runs or logging: restart the
        # server now, while they go on writing
        deadline = time.monotonic() + 600
        while sum(any("metrics" in n for n in notes(p)) for p in notes_dir.glob("*.jsonl")) < WRITERS // 2:
            assert time.monotonic() < deadline, "the writers did not get to log an epoch"
            assert all(w.exitcode in (None, 0) for w in writers), [w.exitcode for w in writers]
            time.sleep(0.2)
        assert "stopped the MLflow server" in server.stop()
        assert not server.answers()
        time.sleep(2)  # writes meet a server that is down: they wait in the trials' buffers
        server.start()

        for w in writers:
            w.join(timeout=300)
        assert [w.exitcode for w in writers] == [0] * WRITERS

        # read back from PostgreSQL itself (the server's own store, no HTTP hop): every param and metric, once each
        store = pg.uri.replace("postgresql://", "postgresql+psycopg2://")
        monkeypatch.setenv("PGPASSFILE", str(home / ".pgpass"))  # this process's HOME is not the head's
        assert_mlflow_holds_every_report(store, "pg", notes_dir, trial)
        parent, children = runs(store, "pg")
        assert len(children) == WRITERS and sorted(c.data.tags["pclc.trial_id"] for c in children) == [
            f"t{i:02d}" for i in range(WRITERS)
        ]
        # and it is PostgreSQL that holds them
        assert pg.sql("SELECT count(*) FROM runs", database="mlflow") == str(WRITERS + 1)
        rows = pg.sql("SELECT count(*) FROM metrics WHERE key = 'epoch'", database="mlflow")
        assert rows == str(WRITERS * EPOCHS)
