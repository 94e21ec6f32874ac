"""The cluster journey of the README's cluster section end to end on this machine, with ray_cluster_local.yaml:

`ray up` over SSH to a head on loopback → `ray job submit` of the quickstart's smoke sweep, logging to
the head's MLflow server → the runs read back from it → `pclc analyze` against it → `ray rsync-down`
of its SQLite store (analysed again) → MLflow stopped with `ray exec` → `ray down`.

The "head node" is this machine seen through a throwaway SSH server: sshd on a free 127.0.0.1 port
(reached with `nc` as the SSH ProxyCommand: Ray's SSH has no port setting), a generated key, and a
ForceCommand that gives every session a home under a fresh /tmp folder, so the node's ~/pclc-sweeps,
~/.bashrc and ~/ray_bootstrap_* stay there. On the node, `ray stop` stops that node's Ray only (this
machine is shared). Debian's openssh-server, rsync and netcat are installed with apt-get when missing;
the test fails when that fails, and skips (outside CI) only where apt-get cannot run at all. What the
test changes in the YAML (addresses, key, free ports; no pip install, since this venv has the project)
is written to <node>/cluster.yaml and shown on failure. Every process it started is stopped, even on
failure. `pytest -s` shows what each step took.
"""

from __future__ import annotations

import contextlib
import getpass
import hashlib
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from machine import ensure_debian_packages, free_ports, listening_addresses

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
VENV = Path(sys.prefix)
MARKER = "PCLC_TEST_NODE"  # in the environment of every process of the test node: how teardown finds them
PACKAGES = {
    "sshd": "openssh-server",
    "ssh": "openssh-client",
    "ssh-keygen": "openssh-client",
    "rsync": "rsync",
    "nc": "netcat-openbsd",
}
SWEEP = "quickstart"  # the shipped file, run with --smoke-test: 2 + 4 confirmation trials of 2-3 epochs on digits
EXPERIMENT = f"{SWEEP}-smoke"

# Runs as `ray` on the node (via <node>/bin/ray, first on the node's PATH): `ray stop` (in the start
# commands, and what `ray down` runs on the head) stops every Ray process of the machine, and this
# machine is shared with other tests: the node's `ray stop` stops the node's Ray processes only.
STOP_SCRIPT = f'''\
"""The processes of one test node: those with {MARKER}=<node> in their environment.
`stop_node.py NODE ray` stops Ray's (the ones `ray stop` looks for), `all` every one of them,
`list` prints the pids of the Ray processes still running."""
import os, signal, sys, time

node, which = sys.argv[1], sys.argv[2]
mark = f"{MARKER}={{node}}".encode()
ray_words = []
if which != "all":
    from ray.autoscaler._private.constants import RAY_PROCESSES
    ray_words = RAY_PROCESSES

def is_ray(pid):
    name = open(f"/proc/{{pid}}/comm").read().strip()
    cmd = open(f"/proc/{{pid}}/cmdline", "rb").read().replace(b"\\0", b" ").decode(errors="replace")
    return any(word in (name if by_name else cmd) for word, by_name in ray_words)

def ours():
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) in (os.getpid(), os.getppid()):
            continue
        try:
            if mark in open(f"/proc/{{entry}}/environ", "rb").read().split(b"\\0") and (which == "all" or is_ray(entry)):
                found.append(int(entry))
        except OSError:
            pass
    return found

pids = ours()
if which == "list":
    print(" ".join(map(str, pids)))
    sys.exit(0)
for sig in (signal.SIGTERM, signal.SIGKILL):
    for pid in pids:
        try:
            os.kill(pid, sig)
        except OSError:
            pass
    deadline = time.monotonic() + 10
    while pids and time.monotonic() < deadline:
        time.sleep(0.2)
        pids = [p for p in ours() if p in pids]
print(f"stopped the test node's {{which}} processes")
'''


def _ray_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:10]  # as ray.autoscaler's SSHCommandRunner names it


class RayCli:
    """A test cluster as the `ray` CLI sees it: its name, Ray's SSH sockets for it, and `ray …` commands."""

    root: Path  # short /tmp path: Ray's socket paths must stay under 108 characters
    env: dict[str, str]  # for the CLI processes run here (ray up, ray job, ray down)

    @property
    def cluster_name(self) -> str:
        return f"pclc-test-{self.root.name}"

    @property
    def ssh_control_dir(self) -> Path:
        """Where Ray's SSH keeps its ControlMaster sockets for this cluster (a fixed /tmp path in Ray)."""
        return Path("/tmp") / f"ray_ssh_{_ray_hash(getpass.getuser())}" / _ray_hash(self.cluster_name)

    def ray(self, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
        """A `ray` CLI command from the repository root, as a user runs it; output kept for failures."""
        started = time.monotonic()
        proc = subprocess.run(
            [str(VENV / "bin" / "ray"), *args], cwd=REPO, env=self.env, capture_output=True, text=True, timeout=timeout
        )
        # Reported, never asserted: what each step costs (pytest -s shows it).
        print(f"[cluster] ray {' '.join(args[:2])}: {time.monotonic() - started:.1f} s", flush=True)
        return proc

    def submit(self, dashboard: str, command: str, *options: str, timeout: float) -> subprocess.CompletedProcess[str]:
        """`ray job submit` of a shell command with this checkout as the job's working dir, as the README does."""
        return self.ray(
            "job",
            "submit",
            "--address",
            dashboard,
            *options,
            "--working-dir",
            ".",
            "--",
            "bash",
            "-c",
            command,
            timeout=timeout,
        )


@dataclass
class Node(RayCli):
    """A loopback "head node": its folder, SSH access and the processes that belong to it."""

    root: Path
    home: Path
    user: str
    key: Path
    ssh_port: int
    sshd: subprocess.Popen[bytes]
    env: dict[str, str]

    def processes(self, which: str) -> str:
        """`all`: stop every process of the node; `ray`: its Ray processes; `list`: Ray's pids still running."""
        return subprocess.run(
            [sys.executable, str(self.root / "bin" / "stop_node.py"), str(self.root), which],
            capture_output=True,
            text=True,
            timeout=60,
        ).stdout.strip()


# --------------------------------------------------------------------------- the machine


def locked_account() -> bool:
    """OpenSSH refuses a "!"-locked account unless PAM decides."""
    with contextlib.suppress(OSError):
        for line in Path("/etc/shadow").read_text().splitlines():
            if line.split(":")[0] == getpass.getuser():
                return line.split(":")[1].startswith("!")
    return False


def write_node_session(root: Path, home: Path, bin_dir: Path, marks: dict[str, str], shell: Path) -> None:
    """A test node's SSH session: its home and temp dir (`marks`), setup_node.sh's settings, and a `ray stop`
    that stops only the node's own processes."""
    exports = " ".join(f"{k}={shlex.quote(v)}" for k, v in {**marks, "HOME": str(home)}.items())
    shell.write_text(
        textwrap.dedent(f"""\
        #!/bin/bash
        export {exports}
        cd "$HOME"
        if [ -n "${{SSH_ORIGINAL_COMMAND:-}}" ]; then exec bash -c "$SSH_ORIGINAL_COMMAND"; fi
        exec bash -l
        """)
    )
    shell.chmod(0o755)
    (home / ".bashrc").write_text(
        textwrap.dedent(f"""\
        # the test node's ~/.bashrc: cluster/setup_node.sh's settings, then the node's scoped `ray stop`
        [ -f ~/.pclc_env ] && . ~/.pclc_env
        export PATH={bin_dir}:"$PATH"
        """)
    )
    (bin_dir / "stop_node.py").write_text(STOP_SCRIPT)
    (bin_dir / "ray").write_text(
        textwrap.dedent(f"""\
        #!/bin/bash
        if [ "${{1:-}}" = stop ]; then exec {VENV}/bin/python {bin_dir}/stop_node.py {root} ray; fi
        exec {VENV}/bin/ray "$@"
        """)
    )
    (bin_dir / "ray").chmod(0o755)


def sshd_config(*, port: int, address: str, ssh: Path, pid_file: Path, shell: Path) -> str:
    """A test node's sshd: key login only, on `address`, every session through the node's `shell`."""
    return textwrap.dedent(f"""\
        Port {port}
        ListenAddress {address}
        HostKey {ssh}/host_ed25519
        PidFile {pid_file}
        AuthorizedKeysFile {ssh}/authorized_keys
        PermitRootLogin prohibit-password
        PubkeyAuthentication yes
        PasswordAuthentication no
        KbdInteractiveAuthentication no
        UsePAM {"yes" if locked_account() else "no"}
        StrictModes no
        MaxSessions 64
        MaxStartups 64
        PrintMotd no
        ForceCommand {shell}
        """)


def wait_for_port(port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"sshd exited:\n{log.read_text()}"
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            return
        time.sleep(0.1)
    raise AssertionError(f"sshd does not answer on 127.0.0.1:{port}:\n{log.read_text()}")


@pytest.fixture
def node() -> Iterator[Node]:
    """sshd on 127.0.0.1 with a generated key; its sessions live in <root>/home. Torn down fully."""
    from ray._private.utils import get_dashboard_dependency_error

    if os.geteuid() == 0 and not os.environ.get("PCLC_TEST_LOOPBACK_CLUSTER"):
        # tests/test_cluster_two_nodes.py runs this journey step for step (analyze, rsync-down, stop, down),
        # with a real second node: this one-node variant is for machines without root, where that one can't
        pytest.skip(
            "as root, tests/test_cluster_two_nodes.py runs this journey; PCLC_TEST_LOOPBACK_CLUSTER=1 runs it too"
        )

    missing = get_dashboard_dependency_error()  # `ray job submit` talks to the head's dashboard
    assert missing is None, f"the head needs Ray's dashboard: pip install 'ray[default]' ({missing})"
    tools = ensure_debian_packages(PACKAGES)
    root = Path(tempfile.mkdtemp(prefix="pclc-node-", dir="/tmp"))
    home, ssh, bin_dir, tmp = root / "home", root / "ssh", root / "bin", root / "tmp"
    for d in (home, ssh, bin_dir, tmp):
        d.mkdir(mode=0o700)
    user = getpass.getuser()
    key = ssh / "id_ed25519"
    for path in (key, ssh / "host_ed25519"):
        subprocess.run([tools["ssh-keygen"], "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
    (ssh / "authorized_keys").write_text((ssh / "id_ed25519.pub").read_text())
    marks = {MARKER: str(root), "RAY_TMPDIR": str(tmp), "TMPDIR": str(tmp), "RAY_USAGE_STATS_ENABLED": "0"}

    # Every session: the node's home and temp dir, then the command the client asked for.
    shell = ssh / "node_shell.sh"
    write_node_session(root, home, bin_dir, marks, shell)
    (ssh_port,) = free_ports(1)
    config = ssh / "sshd_config"
    config.write_text(sshd_config(port=ssh_port, address="127.0.0.1", ssh=ssh, pid_file=ssh / "sshd.pid", shell=shell))
    if os.geteuid() == 0:
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege-separation directory
    subprocess.run([tools["sshd"], "-t", "-f", str(config)], check=True, capture_output=True)
    log = ssh / "sshd.log"
    sshd = subprocess.Popen(
        [tools["sshd"], "-D", "-e", "-f", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=log.open("wb"),
        env={**os.environ, **marks},
    )
    cluster_env = {**os.environ, **marks}
    cluster_env.pop("RAY_ADDRESS", None)
    made = Node(root=root, home=home, user=user, key=key, ssh_port=ssh_port, sshd=sshd, env=cluster_env)
    try:
        wait_for_port(ssh_port, sshd, log)
        yield made
    finally:
        made.processes("all")  # Ray, MLflow and SSH sessions of the node, by the marker in their environment
        sshd.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            sshd.wait(timeout=10)
        if sshd.poll() is None:
            sshd.kill()
            sshd.wait()
        shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(made.ssh_control_dir, ignore_errors=True)
        with contextlib.suppress(OSError):  # Ray's per-user folder, when no other cluster uses it
            made.ssh_control_dir.parent.rmdir()


# --------------------------------------------------------------------------- the cluster file


def with_settings(command: str, **settings: str) -> str:
    """`A=1 B=2 bash script` with some assignments replaced or added, the rest as written."""
    words = command.split(" ")
    n = next(i for i, w in enumerate(words) if not re.fullmatch(r"[A-Z_][A-Z0-9_]*=\S*", w))
    assigned = dict(w.split("=", 1) for w in words[:n])
    assigned.update(settings)
    return " ".join([*(f"{k}={shlex.quote(v)}" for k, v in assigned.items()), *words[n:]])


def cluster_logins(secrets: Path) -> dict[str, str]:
    """What a user's shell holds to reach the cluster (docs/cluster.md): Ray's token mode and file, the MLflow login."""
    lines = (secrets / "mlflow.env").read_text().split()
    return {
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN_PATH": str(secrets / "ray_auth_token"),
        **dict(line.split("=", 1) for line in lines),
    }


def local_cluster(
    cluster: RayCli, *, head_ip: str, worker_ips: list[str], key: Path, ssh_port: int, mlflow_port: int, **settings: str
) -> dict[str, Any]:
    """ray_cluster_local.yaml aimed at a test cluster: its name, nodes and SSH key, and the real setup command
    minus pip (this venv has the project; 2 shared cores), with shared storage, the MLflow port, one MLflow
    worker and `settings`. The CLI reaches the head's sshd through `nc` to its port. The cluster's logins are
    made as the user makes them (`cluster/make_secrets.sh`, here in <root>/secrets, mounted from there), and
    the CLI processes run here get them as the docs tell the user to (`cluster_logins`)."""
    cfg = yaml.safe_load((REPO / "ray_cluster_local.yaml").read_text())
    cfg["cluster_name"] = cluster.cluster_name
    secrets = cluster.root / "secrets"
    subprocess.run(["bash", str(REPO / "cluster" / "make_secrets.sh"), str(secrets)], check=True, timeout=60)
    cfg["file_mounts"]["~/.pclc-secrets"] = str(secrets)
    cluster.env.update(cluster_logins(secrets))
    cfg["provider"].update(head_ip=head_ip, worker_ips=worker_ips)
    cfg["auth"] = {"ssh_user": getpass.getuser(), "ssh_private_key": str(key), "ssh_proxy_command": f"nc %h {ssh_port}"}
    (setup,) = cfg["setup_commands"]
    storage = str(cluster.root / "ray_results")
    cfg["setup_commands"] = [
        with_settings(
            setup,
            PCLC_INSTALL="0",
            PCLC_VENV=str(VENV),
            PCLC_STORAGE=storage,
            PCLC_MLFLOW_PORT=str(mlflow_port),
            PCLC_MLFLOW_WORKERS="1",
            **settings,
        )
    ]
    return cfg


def node_config(node: Node, ports: dict[str, int]) -> Path:
    """ray_cluster_local.yaml aimed at the loopback node; each change is one the test needs."""
    cfg = local_cluster(
        node, head_ip="127.0.0.1", worker_ips=[], key=node.key, ssh_port=node.ssh_port, mlflow_port=ports["mlflow"]
    )
    # Free ports instead of Ray's fixed defaults, and a small object store: other Ray instances may run here.
    extra = (
        f" --dashboard-port={ports['dashboard']} --ray-client-server-port={ports['client']}"
        f" --dashboard-agent-listen-port={ports['agent']} --object-store-memory=200000000"
    )
    start = [c for c in cfg["head_start_ray_commands"] if "ray start --head" in c]
    assert len(start) == 1 and "--port=6379" in start[0], cfg["head_start_ray_commands"]
    cfg["head_start_ray_commands"] = [
        c.replace("--port=6379", f"--port={ports['gcs']}") + extra if c in start else c
        for c in cfg["head_start_ray_commands"]
    ]
    path = node.root / "cluster.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def tail(text: str, n: int = 6000) -> str:
    return text if len(text) <= n else "…" + text[-n:]


def read_logs(root: Path, patterns: tuple[str, ...]) -> str:
    """The tails of the files under `root` that match `patterns`: what to read when a cluster misbehaves."""
    out = []
    for pattern in patterns:
        for path in root.glob(pattern):
            out.append(f"--- {path}\n{tail(path.read_text(errors='replace'), 2000)}")
    return "\n".join(out)


def node_logs(node: Node) -> str:
    """MLflow's log, Ray's monitor and raylet errors of the loopback node."""
    logs = ("home/pclc-mlflow/server.log", "tmp/ray/session_latest/logs/monitor.*")
    return read_logs(
        node.root, (*logs, "tmp/ray/session_latest/logs/raylet.err", "tmp/ray/session_latest/logs/dashboard.err")
    )


def analyze(node: RayCli, *args: str) -> None:
    """`pclc analyze` of the sweep's experiment, as the README's cluster section runs it; it must write its report."""
    out = node.root / f"report-{len(list(node.root.glob('report-*')))}"
    started = time.monotonic()
    proc = subprocess.run(
        [str(VENV / "bin" / "pclc"), "analyze", "--experiment", EXPERIMENT, "--out", str(out), *args],
        cwd=node.root,
        env=node.env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    print(f"[cluster] pclc analyze {args[1].split(':')[0]}: {time.monotonic() - started:.1f} s", flush=True)
    assert proc.returncode == 0, f"pclc analyze {' '.join(args)} failed\n{tail(proc.stdout)}\n{tail(proc.stderr)}"
    assert (out / "report.md").is_file(), sorted(p.name for p in out.iterdir())


# --------------------------------------------------------------------------- the journey


def test_ray_up_runs_a_sweep_that_logs_to_the_heads_mlflow_then_ray_down(
    node: Node, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlflow.tracking import MlflowClient

    names = ("gcs", "dashboard", "client", "agent", "mlflow")
    ports = dict(zip(names, free_ports(len(names))))
    config = node_config(node, ports)
    for var in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):  # this process reads the head's MLflow
        monkeypatch.setenv(var, node.env[var])
    cfg_text = config.read_text()

    # ---- ray up: the project synced, setup_node.sh, Ray's head, then MLflow on the head
    up = node.ray("up", "-y", "--no-config-cache", "--log-style=record", str(config), timeout=600)
    assert up.returncode == 0, f"ray up failed\n{cfg_text}\n{tail(up.stdout)}\n{tail(up.stderr)}\n{node_logs(node)}"
    assert (node.home / "pclc-sweeps" / "sweeps" / "configs" / f"{SWEEP}.yaml").is_file(), "file_mounts did not sync"
    assert "pclc" in (node.home / ".pclc_env").read_text()
    # The tracking URI, found as the README's cluster section finds it (the last line `ray exec` prints).
    shown = node.ray("exec", "--no-config-cache", str(config), "cat ~/pclc-mlflow/url", timeout=300)
    assert shown.returncode == 0, f"{tail(shown.stdout)}\n{tail(shown.stderr)}"
    url = shown.stdout.strip().splitlines()[-1].strip()
    assert url == (node.home / "pclc-mlflow" / "url").read_text().strip()
    host = re.fullmatch(rf"http://([\d.]+):{ports['mlflow']}", url)
    assert host, url
    # MLflow listens on the head's own address, and only there (never on every interface).
    assert listening_addresses(ports["mlflow"]) == {host.group(1)}, listening_addresses(ports["mlflow"])
    assert listening_addresses(ports["dashboard"]) == {"127.0.0.1"}

    # ---- ray job submit: the smoke sweep, as the README's cluster section submits a paper-scale one
    sweep = (
        f"python -m sweeps sweeps/configs/{SWEEP}.yaml --smoke-test --address auto"
        " --tracking-uri $(cat ~/pclc-mlflow/url) --storage-path $PCLC_STORAGE"
    )
    job = node.submit(f"http://127.0.0.1:{ports['dashboard']}", sweep, timeout=900)
    assert job.returncode == 0, f"the sweep job failed\n{tail(job.stdout)}\n{tail(job.stderr)}\n{node_logs(node)}"

    # ---- the runs, read back from the head's MLflow server: one parent, one child per trial
    client = MlflowClient(tracking_uri=url)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    assert experiment is not None, f"no experiment {EXPERIMENT} in {url}\n{tail(job.stdout)}"
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if r.data.tags.get("pclc.role") == "sweep"]
    trials = [r for r in runs if r.data.tags.get("pclc.role") == "trial"]
    # the smoke's search (2 trials), then its best and CE on 2 fresh seeds (4 trials)
    assert len(parents) == 1 and len(trials) == 6, [(r.info.run_name, r.data.tags.get("pclc.role")) for r in runs]
    for trial in trials:
        assert trial.info.status == "FINISHED", (trial.info.run_name, trial.data.tags.get("pclc.failure_reason"))
        assert trial.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
        assert {"robust_acc", "clean_acc"} <= trial.data.metrics.keys()
        assert "evaluation.json" in {a.path for a in client.list_artifacts(trial.info.run_id)}
    # The artifacts went through the server into the head's artifact store, not to the trials' disks.
    stored = list((node.home / "pclc-mlflow" / "artifacts").rglob("evaluation.json"))
    assert len(stored) == 6, stored
    assert (node.root / "ray_results" / EXPERIMENT).is_dir(), "Ray Tune wrote elsewhere than --storage-path"

    # ---- pclc analyze against the cluster's MLflow (docs: through a tunnel; here the server is local)
    analyze(node, "--tracking-uri", url)

    # ---- keep the results (the SQLite store lives on the head's disk), as the README's cluster section says
    kept = node.root / "mlflow-cluster.db"
    down_db = node.ray("rsync-down", str(config), "~/pclc-mlflow/mlflow.db", str(kept), timeout=300)
    assert down_db.returncode == 0, f"{tail(down_db.stdout)}\n{tail(down_db.stderr)}"
    copied = MlflowClient(tracking_uri=f"sqlite:///{kept}").get_experiment_by_name(EXPERIMENT)
    assert (
        copied is not None
        and len(MlflowClient(tracking_uri=f"sqlite:///{kept}").search_runs([copied.experiment_id])) == 3
    )
    analyze(node, "--tracking-uri", f"sqlite:///{kept}", "--no-log-artifacts")

    # ---- tear down as the README's cluster section says: MLflow (ray down leaves it on own machines), then Ray
    stop = node.ray("exec", "--no-config-cache", str(config), "bash ~/pclc-sweeps/cluster/stop_mlflow.sh", timeout=300)
    assert stop.returncode == 0, f"{tail(stop.stdout)}\n{tail(stop.stderr)}"
    assert listening_addresses(ports["mlflow"]) == set()
    down = node.ray("down", "-y", "--log-style=record", str(config), timeout=300)
    assert down.returncode == 0, f"ray down failed\n{tail(down.stdout)}\n{tail(down.stderr)}"
    deadline = time.monotonic() + 30
    while (left := node.processes("list")) and time.monotonic() < deadline:
        time.sleep(1)
    assert not left, f"Ray processes of the node still run after ray down: {left}"
    assert listening_addresses(ports["dashboard"]) == set() and listening_addresses(ports["gcs"]) == set()
