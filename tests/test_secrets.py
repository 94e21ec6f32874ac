"""No secret anywhere it can be read back, and the head's MLflow behind a login (issue 29): a tracking URI's
password leaves the URI before anything stores or prints it (`pclc.redact`), a `${VAR}` secret expanded into a
sweep file is masked in the copies the sweep keeps, and a real sweep through the head's real MLflow server
(`cluster/start_mlflow.sh`: basic-auth, origin gate) over a real PostgreSQL, with both passwords in URIs, leaves
them in no file, log, command line, MLflow param, tag or artifact, nor any output; `pclc analyze` reads it back
with the login and is refused without it."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import stat
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml
from machine import user_folders
from postgres import HeadMlflow, psycopg2_missing, throwaway_postgres
from sweep_util import tiny_optimize

from pclc.contract import normalize_tracking_uri
from pclc.redact import mask, mask_uri, take_password
from sweeps.cli import main
from sweeps.config import SweepConfigError, parse_sweep, resolved_yaml

REPO = Path(__file__).resolve().parents[1]


def test_mask_hides_uri_passwords_and_secret_environment_values() -> None:
    text = "postgresql://pclc:hunter2@db:5432/m?password=x9&sslmode=require http://h:5000 token Zq8wLm3p"
    assert mask_uri(text) == "postgresql://pclc:***@db:5432/m?password=***&sslmode=require http://h:5000 token Zq8wLm3p"
    assert mask(text, {"RAY_AUTH_TOKEN": "Zq8wLm3p", "PCLC_MLFLOW_PORT": "5000"}).endswith("http://h:5000 token ***")


def _restored_after(monkeypatch: pytest.MonkeyPatch) -> None:
    """The variables `take_password` sets, put back as they were when the test ends."""
    for var in ("PGPASSWORD", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        monkeypatch.setenv(var, "")


def test_a_uri_password_moves_to_the_variable_its_client_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    _restored_after(monkeypatch)
    uri = normalize_tracking_uri("postgresql+psycopg2://pclc:p%40ss%3Aw0rd@db:5432/mlflow")
    assert uri == "postgresql+psycopg2://pclc@db:5432/mlflow" and os.environ["PGPASSWORD"] == "p@ss:w0rd"
    assert take_password("https://alice:s3cr3t@mlflow.example:443") == "https://mlflow.example:443"
    assert (os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"]) == ("alice", "s3cr3t")
    assert take_password("http://10.0.0.1:5000") == "http://10.0.0.1:5000"  # nothing to take
    for refused in ("mysql://u:pw1234@h/db", "postgresql://u@h/db?password=pw1234"):
        with pytest.raises(ValueError, match="leave it out of the URI") as err:
            take_password(refused)
        assert "pw1234" not in str(err.value)


def test_a_password_the_sweep_could_not_hand_over_is_refused_in_one_masked_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    quickstart = REPO / "sweeps" / "configs" / "quickstart.yaml"
    assert main(["sweep", str(quickstart), "--tracking-uri", "mysql://u:hunter2pw@db/m"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "mysql://u:***@db/m" in err and "hunter2pw" not in err


def test_a_sweep_file_keeps_no_expanded_secret(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _restored_after(monkeypatch)
    monkeypatch.setenv("PCLC_DB_PASSWORD", "Zq8wLm3pX")
    monkeypatch.setenv("PCLC_TEST_URI", "http://bob:Zq8wLm3pX@127.0.0.1:5999")
    data = tiny_optimize("s", tmp_path).model_dump(mode="json")
    data.update(description="db password ${PCLC_DB_PASSWORD}", tracking_uri="${PCLC_TEST_URI}")
    cfg = parse_sweep(data)
    assert cfg.tracking_uri == "http://127.0.0.1:5999" and os.environ["MLFLOW_TRACKING_PASSWORD"] == "Zq8wLm3pX"
    text = resolved_yaml(cfg)
    assert "Zq8wLm3pX" not in text and yaml.safe_load(text)["description"] == "db password ***"
    data.update(tracking_uri="mysql://bob:Zq8wLm3pX@db/m")  # refused: the message names it without the password
    with pytest.raises(SweepConfigError, match="tracking_uri") as err:
        parse_sweep(data)
    assert "Zq8wLm3pX" not in str(err.value)


def _files_holding(secret: str, *folders: Path) -> list[str]:
    """The files under `folders` whose bytes contain `secret`."""
    hits = []
    for folder in folders:
        for path in folder.rglob("*"):
            with contextlib.suppress(OSError):  # a socket, or a file that went away
                if path.is_file() and not path.is_symlink() and secret.encode() in path.read_bytes():
                    hits.append(str(path))
    return hits


def _command_lines_holding(secret: str) -> list[str]:
    """Every process's command line on this machine that contains `secret` (what `ps` would show)."""
    hits = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        with contextlib.suppress(OSError):
            if secret.encode() in cmdline.read_bytes():
                hits.append(cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")[:200])
    return hits


def _post(url: str, body: dict[str, Any], *, login: dict[str, str] | None = None, origin: str | None = None) -> int:
    """The HTTP status of a JSON POST, with the login as basic auth and an Origin header if given."""
    headers = {"Content-Type": "application/json"}
    if login:
        pair = f"{login['MLFLOW_TRACKING_USERNAME']}:{login['MLFLOW_TRACKING_PASSWORD']}"
        headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
    if origin:
        headers["Origin"] = origin
    request = urllib.request.Request(url, json.dumps(body).encode(), headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as err:
        return err.code


@pytest.mark.slow
def test_a_sweep_through_the_heads_mlflow_with_passwords_in_its_uris_leaves_them_nowhere(tmp_path: Path) -> None:
    """The head's MLflow (`start_mlflow.sh`, login required) over a real PostgreSQL whose password is in the backend
    URI; a real sweep whose tracking URI carries the MLflow login, a `${VAR}` secret in its file; `pclc analyze`.
    Neither password is in any file, log, command line, database row, param, tag or artifact, nor their output;
    a request without the login gets 401, one from another origin 403."""
    if reason := psycopg2_missing():
        pytest.skip(reason)
    pg_home, head_home = tmp_path / "pg_home", tmp_path / "head_home"  # the head has no .pgpass: the URI's is used
    pg_home.mkdir()
    head_home.mkdir()
    with throwaway_postgres(pg_home) as pg, user_folders(tmp_path) as user:
        db_password = (pg_home / ".pgpass").read_text().strip().rsplit(":", 1)[1]
        backend = pg.uri.replace("postgresql://pclc@", f"postgresql://pclc:{db_password}@")
        server = HeadMlflow(head_home, backend, workers=1)
        login = server.login
        admin_file = head_home / "pclc-mlflow" / "auth" / "admin_password"
        with server.running():
            secrets = {"database": db_password, "login": login["MLFLOW_TRACKING_PASSWORD"]}
            secrets["admin"] = admin_file.read_text().strip()
            assert stat.S_IMODE(admin_file.stat().st_mode) == 0o600
            assert _command_lines_holding(db_password) == [] and _command_lines_holding(secrets["admin"]) == []

            # ---- the login and the origin gate
            create = f"{server.uri}/api/2.0/mlflow/experiments/create"
            assert _post(create, {"name": "anonymous"}) == 401
            assert _post(create, {"name": "wrong"}, login={**login, "MLFLOW_TRACKING_PASSWORD": "nope"}) == 401
            assert _post(create, {"name": "signed-in"}, login=login) == 200
            assert _post(create, {"name": "tunnel"}, login=login, origin=f"http://localhost:{server.port}") == 200
            for other in ("http://localhost:8888", "http://evil.example"):  # another local page, another site
                assert _post(create, {"name": "cross-origin"}, login=login, origin=other) == 403

            # ---- a sweep whose tracking URI carries the login, its file a ${VAR} secret
            data = tiny_optimize("secrets", user.work, num_trials=1, max_concurrent=1).model_dump(mode="json")
            data["trial"].update(epochs=1, warmup_epochs=0, attacks=["fgsm"], eps=[0.1], epoch_eval_samples=0)
            data.update(
                objective=[{"metric": "clean_acc", "mode": "max"}],
                tracking_uri="${PCLC_TEST_TRACKING_URI}",
                description="expanded from the environment: ${PCLC_DB_PASSWORD}",
            )
            (user.work / "sweep.yaml").write_text(yaml.safe_dump(data))
            env = {k: v for k, v in user.env.items() if not k.startswith(("MLFLOW_TRACKING_", "PG"))}
            env["PCLC_TEST_TRACKING_URI"] = server.uri.replace("http://", f"http://pclc:{secrets['login']}@")
            env["PCLC_DB_PASSWORD"] = db_password
            sweep = subprocess.run(
                [sys.executable, "-m", "sweeps.cli", "sweep", "sweep.yaml"],
                cwd=user.work,
                env=env,
                capture_output=True,
                text=True,
                timeout=600,
            )
            assert sweep.returncode == 0, sweep.stdout[-3000:] + sweep.stderr[-3000:]
            assert f"in {server.uri}" in sweep.stdout  # the summary names the store, without the login

            # ---- pclc analyze: refused in one line without the login, a report with it
            analyze = [sys.executable, "-m", "sweeps.cli", "analyze", "--experiment", "secrets"]
            analyze += ["--tracking-uri", server.uri]
            without = subprocess.run(analyze, cwd=user.work, env=env, capture_output=True, text=True, timeout=300)
            assert without.returncode == 2 and "Traceback" not in without.stderr, without.stderr[-2000:]
            with_login = subprocess.run(
                analyze, cwd=user.work, env={**env, **login}, capture_output=True, text=True, timeout=300
            )
            assert with_login.returncode == 0, with_login.stdout[-2000:] + with_login.stderr[-2000:]
            assert (user.work / "reports" / "secrets" / "report.md").is_file()

            # ---- nowhere: output, files (Tune's results and state, Ray's session logs, the server's log, its
            # artifact store), command lines, and every row MLflow wrote to PostgreSQL
            outputs = "".join(p.stdout + p.stderr for p in (sweep, without, with_login))
            dump = subprocess.run(
                [str(pg.bin / "pg_dump"), "-h", str(pg.socket_dir), "-p", str(pg.port), "-U", "postgres", "mlflow"],
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert dump.returncode == 0, dump.stderr[-2000:]
            assert "pclc.role\tsweep" in dump.stdout and "\tFINISHED\t" in dump.stdout  # the runs are there
            assert "expanded from the environment: ***" in dump.stdout + "".join(
                p.read_text() for p in (head_home / "pclc-mlflow" / "artifacts").rglob("sweep_config.yaml")
            )
            kept = {str(head_home / ".pclc-secrets" / "mlflow.env"), str(admin_file)}  # where they belong
            for what, secret in secrets.items():
                assert secret not in outputs, what
                assert secret not in dump.stdout, what
                assert _command_lines_holding(secret) == [], what
                found = _files_holding(secret, user.work, user.home, user.tmp, head_home)
                assert set(found) <= kept, (what, found)
