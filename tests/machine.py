"""What the end-to-end tests need from this machine: Debian packages, free ports, listening sockets,
a live MLflow server, and a user's own folders for the commands under test.

Installs what is missing with apt-get (CI machines start bare); fails under CI, skips elsewhere,
only where apt-get cannot run at all.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest


def _which(exe: str) -> str | None:
    return shutil.which(exe, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")


def ensure_debian_packages(packages: dict[str, str]) -> dict[str, str]:
    """The executables of `packages` (executable → Debian package), installed with apt-get when missing."""
    found = {exe: _which(exe) for exe in packages}
    missing = sorted({packages[exe] for exe, path in found.items() if path is None})
    if missing:
        apt = shutil.which("apt-get")
        if apt is None or os.geteuid() != 0:
            reason = f"needs {', '.join(missing)}, and apt-get {'is missing' if apt is None else 'needs root'}"
            if os.environ.get("CI"):
                pytest.fail(reason)
            pytest.skip(reason)
        # Keep the package's postinst from starting a system sshd on port 22 (the Docker convention).
        policy = Path("/usr/sbin/policy-rc.d")
        ours = not policy.exists()
        if ours:
            policy.write_text("#!/bin/sh\nexit 101\n")
            policy.chmod(0o755)
        try:
            env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
            for cmd in ([apt, "-qq", "update"], [apt, "-qq", "install", "-y", "--no-install-recommends", *missing]):
                proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
                assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        finally:
            if ours:
                policy.unlink()
        found = {exe: _which(exe) for exe in packages}
    assert all(found.values()), found
    return {exe: str(path) for exe, path in found.items()}


def free_ports(n: int) -> list[int]:
    """n distinct ports free on every interface right now (held open together so they differ)."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(n)]
        for s in socks:
            s.bind(("", 0))
        return [s.getsockname()[1] for s in socks]


def listening_addresses(port: int) -> set[str]:
    """The local addresses with a TCP socket listening on `port` (from /proc/net/tcp and tcp6)."""
    found = set()
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        with contextlib.suppress(OSError), open(table) as f:
            for line in f.readlines()[1:]:
                local, state = line.split()[1], line.split()[3]
                host, hexport = local.split(":")
                if state != "0A" or int(hexport, 16) != port:
                    continue
                raw = bytes.fromhex(host)
                words = [raw[i : i + 4][::-1] for i in range(0, len(raw), 4)]  # little-endian 32-bit words
                packed = b"".join(words)
                found.add(socket.inet_ntop(socket.AF_INET if width == 8 else socket.AF_INET6, packed))
    return found


def mlflow_answers(uri: str) -> bool:
    """Whether the MLflow server at `uri` answers its health check now."""
    try:
        with urllib.request.urlopen(f"{uri}/health", timeout=2) as answer:
            return bool(answer.status == 200)
    except OSError:
        return False


@dataclass(frozen=True)
class UserFolders:
    """Where a command under test may write: its cwd, HOME and TMPDIR, and the environment naming them."""

    work: Path
    home: Path
    tmp: Path
    env: dict[str, str]


@contextlib.contextmanager
def user_folders(root: Path) -> Iterator[UserFolders]:
    """Fresh `work` and `home` under `root` and a short TMPDIR (removed after); no inherited XDG, matplotlib,
    torch or MLflow settings, so what the commands leave where is theirs alone."""
    work, home = root / "work", root / "home"
    for d in (work, home):
        d.mkdir()
    # A short TMPDIR: Ray puts AF_UNIX sockets under it, and their paths must stay below 108 bytes.
    tmp = Path(tempfile.mkdtemp(prefix="pclc-", dir="/tmp"))
    env = {**os.environ, "HOME": str(home), "TMPDIR": str(tmp), "PYTHONDONTWRITEBYTECODE": "1"}
    for var in ("XDG_CACHE_HOME", "XDG_CONFIG_HOME", "XDG_DATA_HOME", "MPLCONFIGDIR", "TORCH_HOME"):
        env.pop(var, None)
    env.pop("MLFLOW_TRACKING_URI", None)
    try:
        yield UserFolders(work=work, home=home, tmp=tmp, env=env)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def files_under(folder: Path) -> list[str]:
    """Every file (or link) under `folder`, as sorted relative paths."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() or p.is_symlink())
