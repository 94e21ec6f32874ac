"""A throwaway PostgreSQL for the tests and benchmarks, and the head's MLflow server started over it
with the real `cluster/start_mlflow.sh`.

The server is Debian's `postgresql` (installed with apt-get when missing, as the browser test installs
Chromium), run from a data folder in a fresh temporary directory as the `postgres` user (initdb refuses
root), listening on 127.0.0.1 at a free port and on a socket in that folder only. One database and one
user with a random password; the password is written only to the `.pgpass` of the HOME the caller
gives, as the README tells cluster users: it never appears in a URI, a command line or the repository.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import secrets
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from machine import ensure_debian_packages, free_ports, mlflow_answers

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def server_binaries() -> Path:
    """The folder of initdb and pg_ctl (Debian keeps them off PATH), installing `postgresql` if missing."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        ensure_debian_packages({"pg_ctlcluster": "postgresql"})
        found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    assert found, "apt-get installed postgresql, but no /usr/lib/postgresql/*/bin/initdb"
    return Path(found[-1]).parent  # the newest major version


@dataclass(frozen=True)
class Postgres:
    """A running throwaway cluster: the password-less URI MLflow gets, and where its socket and data are."""

    uri: str  # postgresql://USER@127.0.0.1:PORT/DB: the password comes from ~/.pgpass
    port: int
    socket_dir: Path
    bin: Path

    def sql(self, statement: str, database: str = "postgres") -> str:
        """Run one statement as the superuser over the cluster's own socket; return psql's unaligned output."""
        cmd = [
            str(self.bin / "psql"),
            "-h",
            str(self.socket_dir),
            "-p",
            str(self.port),
            "-U",
            "postgres",
            "-d",
            database,
            "-v",
            "ON_ERROR_STOP=1",
            "-At",
            "-c",
            statement,
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, f"{statement}: {proc.stderr[-2000:]}"
        return proc.stdout.strip()


def _as_postgres(cmd: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


@contextlib.contextmanager
def throwaway_postgres(home: Path, *, database: str = "mlflow", user: str = "pclc") -> Iterator[Postgres]:
    """Start a fresh PostgreSQL cluster; `home/.pgpass` holds the password of `user` on `database`."""
    bin_dir = server_binaries()
    base = Path(tempfile.mkdtemp(prefix="pclc-pg-"))  # not under tmp_path: the postgres user must reach it
    try:
        if os.geteuid() == 0:
            owner = pwd.getpwnam("postgres")
            os.chown(base, owner.pw_uid, owner.pw_gid)
        data = base / "data"
        init = _as_postgres(
            [
                str(bin_dir / "initdb"),
                "-D",
                str(data),
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "--no-sync",
            ]
        )
        proc = subprocess.run(init, capture_output=True, text=True, timeout=180)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
        (port,) = free_ports(1)
        options = f"-c listen_addresses=127.0.0.1 -p {port} -k {base}"
        start = _as_postgres(
            [
                str(bin_dir / "pg_ctl"),
                "-D",
                str(data),
                "-l",
                str(base / "server.log"),
                "-w",
                "-t",
                "120",
                "-o",
                options,
                "start",
            ]
        )
        proc = subprocess.run(start, capture_output=True, text=True, timeout=180)
        log = base / "server.log"
        assert proc.returncode == 0, proc.stderr[-2000:] + (log.read_text()[-2000:] if log.exists() else "")
        try:
            pg = Postgres(f"postgresql://{user}@127.0.0.1:{port}/{database}", port, base, bin_dir)
            password = secrets.token_hex(16)
            pg.sql(f"CREATE ROLE {user} LOGIN PASSWORD '{password}'")
            pg.sql(f"CREATE DATABASE {database} OWNER {user}")
            pgpass = home / ".pgpass"
            pgpass.write_text(f"127.0.0.1:{port}:{database}:{user}:{password}\n")
            pgpass.chmod(0o600)  # libpq ignores a .pgpass that others can read
            yield pg
        finally:
            stop = _as_postgres([str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"])
            subprocess.run(stop, capture_output=True, timeout=120)
    finally:
        shutil.rmtree(base, ignore_errors=True)


class HeadMlflow:
    """The head's MLflow server, started and stopped by `cluster/start_mlflow.sh` / `stop_mlflow.sh` with
    HOME at `home` (state in `home/pclc-mlflow`), on 127.0.0.1 at a free port, over `backend`.

    Its login is the cluster's: `cluster/make_secrets.sh` writes `home/.pclc-secrets/mlflow.env`, and while the
    server runs (`running()`) this process has it in MLFLOW_TRACKING_USERNAME/_PASSWORD, as a node's
    ~/.pclc_env gives it to the sweep's driver and trials (forked writers inherit it)."""

    def __init__(self, home: Path, backend: str | None, *, workers: int = 4) -> None:
        (self.port,) = free_ports(1)
        self.home = home
        self.uri = f"http://127.0.0.1:{self.port}"
        self.env = {
            **os.environ,
            "HOME": str(home),
            "PATH": f"{BIN}:{os.environ.get('PATH', '')}",
            "PCLC_MLFLOW_HOST": "127.0.0.1",
            "PCLC_MLFLOW_PORT": str(self.port),
            "PCLC_MLFLOW_WORKERS": str(workers),
        }
        if backend is not None:  # None: the script's own default, SQLite in ~/pclc-mlflow
            self.env["PCLC_MLFLOW_BACKEND"] = backend
        secrets_dir = home / ".pclc-secrets"
        subprocess.run(["bash", str(REPO / "cluster" / "make_secrets.sh"), str(secrets_dir)], check=True, timeout=60)
        lines = (secrets_dir / "mlflow.env").read_text().split()
        self.login: dict[str, str] = dict(line.split("=", 1) for line in lines)

    def _script(self, name: str) -> str:
        proc = subprocess.run(
            ["bash", str(REPO / "cluster" / name)], env=self.env, capture_output=True, text=True, timeout=300
        )
        assert proc.returncode == 0, f"{name} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        return proc.stdout

    def start(self) -> str:
        out = self._script("start_mlflow.sh")
        assert (self.home / "pclc-mlflow" / "url").read_text().strip() == self.uri
        return out

    def stop(self) -> str:
        return self._script("stop_mlflow.sh")

    def answers(self) -> bool:
        return mlflow_answers(self.uri)

    @contextlib.contextmanager
    def running(self) -> Iterator[HeadMlflow]:
        """The server started, and its login in this process's environment until it stops."""
        before = {k: os.environ.get(k) for k in self.login}
        os.environ.update(self.login)
        self.start()
        try:
            yield self
        finally:
            self.stop()
            for k, v in before.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v


def psycopg2_missing() -> str | None:
    """Why MLflow cannot talk to PostgreSQL from this Python, or None when it can."""
    try:
        import psycopg2  # noqa: F401
    except ImportError:
        return "psycopg2 is not importable here (pip install -e '.[test]' or '.[postgres]' installs psycopg2-binary)"
    return None
