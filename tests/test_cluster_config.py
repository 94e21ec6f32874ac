"""The cluster files, checked offline: Ray's own schema, and that everything they run exists here.

`ray up` only finds a bad key, a mistyped `ray start` flag or a missing script after it has paid for
a head node; these tests find them first. Each YAML goes through Ray's `prepare_config` (defaults,
node types) and `validate_config` (the JSON schema), as `ray up` does; then every path, script,
CLI flag and entry point the files and the README's cluster section use is looked up in this checkout.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import tomllib
import yaml

REPO = Path(__file__).resolve().parents[1]
CLUSTER_FILES = ("ray_cluster.yaml", "ray_cluster_local.yaml")
SCRIPTS = ("setup_node.sh", "start_mlflow.sh", "stop_mlflow.sh", "make_secrets.sh", "aws_setup.sh")
README = REPO / "README.md"
REMOTE_HOME = "~/pclc-sweeps"  # where file_mounts put the project on every node
SECRETS_REMOTE = "~/.pclc-secrets"  # where file_mounts put the logins cluster/make_secrets.sh made


def load(name: str) -> dict[str, Any]:
    return yaml.safe_load((REPO / name).read_text())


def prepared(name: str) -> dict[str, Any]:
    """What `ray up` works from: the file with Ray's defaults filled in and checked by Ray's schema."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = prepare_config(load(name))
    validate_config(config)
    return config


def commands(config: dict[str, Any]) -> list[str]:
    keys = (
        "initialization_commands",
        "setup_commands",
        "head_setup_commands",
        "worker_setup_commands",
        "head_start_ray_commands",
        "worker_start_ray_commands",
    )
    return [cmd for key in keys for cmd in config.get(key, [])]


def words(command: str) -> list[list[str]]:
    """The simple commands of a shell line (split at ; && ||), each as words, env assignments dropped."""
    out = []
    for part in re.split(r";|&&|\|\|", command):
        w = shlex.split(part)
        while w and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", w[0]):
            w.pop(0)
        if w:
            out.append(w)
    return out


def local_path(config: dict[str, Any], remote: str) -> Path:
    """The file in this checkout that file_mounts copies to `remote` on the nodes."""
    for mount_remote, mount_local in config["file_mounts"].items():
        if remote == mount_remote or remote.startswith(mount_remote.rstrip("/") + "/"):
            return REPO / mount_local / remote[len(mount_remote) :].lstrip("/")
    raise AssertionError(f"{remote} is used by a command but no file_mounts entry puts it on the nodes")


def click_options(command: Any) -> set[str]:
    return {opt for param in command.params for opt in (*param.opts, *param.secondary_opts)}


# --------------------------------------------------------------------------- Ray's schema


@pytest.mark.parametrize("name", CLUSTER_FILES)
def test_ray_accepts_the_cluster_file(name: str) -> None:
    config = prepared(name)
    assert config["head_node_type"] in config["available_node_types"]


def test_the_aws_head_runs_no_trials_and_gpu_workers_scale_from_zero() -> None:
    config = prepared("ray_cluster.yaml")
    assert config["provider"]["type"] == "aws"
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert head["resources"].get("CPU") == 0 and head["resources"].get("GPU") == 0
    assert head["node_config"]["IamInstanceProfile"]["Arn"].endswith(":instance-profile/pclc-head")  # aws_setup.sh's
    workers = {name: t for name, t in types.items() if name != config["head_node_type"]}
    assert len(workers) == 1
    (worker,) = workers.values()
    assert worker["min_workers"] == 0 < worker["max_workers"] <= config["max_workers"]
    assert re.match(r"(g|p)\d", worker["node_config"]["InstanceType"]), "the worker type must be a GPU instance"
    assert "IamInstanceProfile" in worker["node_config"], "workers write checkpoints to S3: they need a profile"


def test_the_local_file_names_head_workers_and_ssh_access() -> None:
    raw = load("ray_cluster_local.yaml")
    assert raw["provider"]["type"] == "local"
    assert raw["provider"]["head_ip"] and isinstance(raw["provider"]["worker_ips"], list)
    assert {"ssh_user", "ssh_private_key"} <= raw["auth"].keys()
    assert "available_node_types" not in raw  # Ray's local provider refuses it
    config = prepared("ray_cluster_local.yaml")
    node_type = config["available_node_types"][config["head_node_type"]]
    assert node_type["max_workers"] == len(raw["provider"]["worker_ips"])


@pytest.mark.parametrize("name", CLUSTER_FILES)
def test_variables_are_set_once_at_the_top_and_no_credentials_are_in_the_file(name: str) -> None:
    text = (REPO / name).read_text()
    assert list(load(name))[0] == "metadata", "the variables block comes first"
    anchors = re.findall(r":\s+&(\w+)", text)
    assert anchors and all(re.search(rf"\*{a}\b", text) for a in anchors), "every variable is used"
    keys = re.findall(r"^\s*([\w-]*(?:secret|password|token|access_key)[\w-]*)\s*:", text, flags=re.M | re.I)
    keys = [k for k in keys if k != "HttpTokens"]  # IMDSv2's setting (MetadataOptions), not a credential
    assert not keys, f"credential-like keys: {keys}"
    assert not re.search(r"AKIA[0-9A-Z]{16}", text), "an AWS access key id"


# --------------------------------------------------------------------------- what the files run


@pytest.mark.parametrize("name", CLUSTER_FILES)
def test_ray_and_mlflow_listen_on_private_addresses_only(name: str) -> None:
    config = prepared(name)
    joined = "\n".join(commands(config))
    assert "0.0.0.0" not in joined and "--host" not in joined
    head_start = [w for cmd in config["head_start_ray_commands"] for w in words(cmd)]
    (ray_start,) = [w for w in head_start if w[:2] == ["ray", "start"]]
    assert "--head" in ray_start and "--dashboard-host=127.0.0.1" in ray_start
    assert ["bash", f"{REMOTE_HOME}/cluster/start_mlflow.sh"] in head_start, "the head starts MLflow"
    worker_start = [w for cmd in config["worker_start_ray_commands"] for w in words(cmd)]
    assert any(w[:2] == ["ray", "start"] and "--address=$RAY_HEAD_IP:6379" in w for w in worker_start)


@pytest.mark.parametrize("name", CLUSTER_FILES)
def test_every_mounted_path_and_script_exists_in_the_checkout(name: str) -> None:
    config = load(name)
    for remote, local in config["file_mounts"].items():
        if remote == SECRETS_REMOTE:  # from the user's machine (test_ray_asks_for_the_token…)
            continue
        assert remote.startswith(REMOTE_HOME + "/"), remote
        assert (REPO / local).exists(), f"file_mounts: {local} is not in the checkout"
    used = [word for cmd in commands(prepared(name)) for w in words(cmd) for word in w if word.startswith(REMOTE_HOME)]
    assert used, "the commands run the project's scripts"
    for remote in used:
        path = local_path(config, remote)
        assert path.is_file(), f"{remote} → {path.relative_to(REPO)} does not exist"
    # pip install -e on the nodes needs the project metadata and what it names (the readme).
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert REMOTE_HOME + "/" + project["readme"] in config["file_mounts"]


@pytest.mark.parametrize("name", CLUSTER_FILES)
def test_every_ray_command_and_flag_exists_in_the_installed_ray(name: str) -> None:
    from ray.scripts.scripts import cli

    for cmd in commands(prepared(name)):
        for w in words(cmd):
            if w[0] != "ray":
                assert w[0] in ("ulimit", "bash"), f"unexpected program in {cmd!r}"
                continue
            sub = cli.commands.get(w[1])
            assert sub is not None, f"`ray {w[1]}` is not a ray command"
            for flag in (a.split("=", 1)[0] for a in w[2:] if a.startswith("--")):
                assert flag in click_options(sub), f"`ray {w[1]}` has no option {flag} (in {cmd!r})"


@pytest.mark.parametrize("name", CLUSTER_FILES)
def test_node_settings_are_ones_setup_node_knows(name: str) -> None:
    """A mistyped PCLC_* setting would silently fall back to its default on every node."""
    script = (REPO / "cluster" / "setup_node.sh").read_text()
    (setup,) = load(name)["setup_commands"]
    names = re.findall(r"\b(PCLC_[A-Z_]+)=", setup)
    assert "PCLC_STORAGE" in names
    for var in names:
        assert f"#   {var} " in script, f"{var} is not documented in cluster/setup_node.sh"
        assert re.search(rf"\b{var}\b", script.split("set -euo pipefail", 1)[1]), f"setup_node.sh never reads {var}"


def test_the_mlflow_server_flags_exist_in_the_installed_mlflow() -> None:
    from mlflow.cli import server

    text = (REPO / "cluster" / "start_mlflow.sh").read_text().replace("\\\n", " ")
    launch = "python -m sweeps.mlflow_gate server"  # `mlflow server` with the basic-auth app behind an origin gate
    (line,) = [ln for ln in text.splitlines() if launch in ln and not ln.lstrip().startswith("#")]
    flags = set(re.findall(r"(--[a-z][a-z-]+)", line.split(launch, 1)[1]))
    assert {"--host", "--port", "--backend-store-uri", "--artifacts-destination", "--allowed-hosts"} <= flags
    assert "--app-name basic-auth" in line and "--cors-allowed-origins" in flags
    assert flags <= click_options(server), flags - click_options(server)


@pytest.mark.parametrize("script", SCRIPTS)
def test_the_cluster_scripts_parse(script: str) -> None:
    path = REPO / "cluster" / script
    assert os.access(path, os.X_OK), f"{script} is not executable"
    subprocess.run(["bash", "-n", str(path)], check=True)


# --------------------------------------------------------------------------- the scripts, run here


def test_start_mlflow_refuses_a_wildcard_address(tmp_path: Path) -> None:
    subprocess.run(["bash", str(REPO / "cluster" / "make_secrets.sh"), str(tmp_path / ".pclc-secrets")], check=True)
    env = {**os.environ, "HOME": str(tmp_path), "PCLC_MLFLOW_HOST": "0.0.0.0"}
    proc = subprocess.run(["bash", str(REPO / "cluster" / "start_mlflow.sh")], env=env, capture_output=True, text=True)
    assert proc.returncode == 2 and "refusing to bind MLflow to '0.0.0.0'" in proc.stderr
    assert not (tmp_path / "pclc-mlflow" / "server.pid").exists()


def test_setup_node_writes_the_node_settings_once(tmp_path: Path) -> None:
    """With PCLC_INSTALL=0 it uses an existing environment (this one) and only writes the settings."""
    env = {
        **os.environ,
        "HOME": str(tmp_path),
        "PCLC_HOME": str(REPO),
        "PCLC_VENV": sys.prefix,
        "PCLC_INSTALL": "0",
        "PCLC_STORAGE": "s3://bucket/ray results",
        "PCLC_MLFLOW_PORT": "5001",
    }
    (tmp_path / ".bashrc").write_text("# the user's own\n")
    refused = subprocess.run(["bash", str(REPO / "cluster" / "setup_node.sh")], env=env, capture_output=True, text=True)
    assert refused.returncode == 2 and "run cluster/make_secrets.sh on your machine" in refused.stderr
    subprocess.run(["bash", str(REPO / "cluster" / "make_secrets.sh"), str(tmp_path / ".pclc-secrets")], check=True)
    for _ in range(2):  # a second `ray up` must not stack hooks
        proc = subprocess.run(
            ["bash", str(REPO / "cluster" / "setup_node.sh")], env=env, capture_output=True, text=True
        )
        assert proc.returncode == 0, proc.stderr
    assert (tmp_path / ".bashrc").read_text().count(". ~/.pclc_env") == 1
    shown = subprocess.run(
        [
            "bash",
            "-c",
            '. ~/.pclc_env && echo "$PCLC_STORAGE|$PCLC_MLFLOW_PORT|${PCLC_MLFLOW_HOST-unset}" && command -v python'
            ' && echo "$RAY_AUTH_MODE|$RAY_AUTH_TOKEN_PATH|$MLFLOW_TRACKING_USERNAME"',
        ],
        env={"HOME": str(tmp_path), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    token = tmp_path / ".pclc-secrets" / "ray_auth_token"
    assert shown == ["s3://bucket/ray results|5001|unset", f"{sys.prefix}/bin/python", f"token|{token}|pclc"]
    settings = tmp_path / ".pclc_env"
    assert stat.S_IMODE(settings.stat().st_mode) == 0o600  # a backend URI may hold a password
    assert token.read_text().strip() not in settings.read_text()  # the files are named, their values not copied


def test_setup_node_refuses_a_node_without_the_project(tmp_path: Path) -> None:
    env = {**os.environ, "HOME": str(tmp_path), "PCLC_INSTALL": "0"}
    proc = subprocess.run(["bash", str(REPO / "cluster" / "setup_node.sh")], env=env, capture_output=True, text=True)
    assert proc.returncode == 2 and "file_mounts must copy the project" in proc.stderr


# --------------------------------------------------------------------------- the README's cluster section


def cluster_section() -> str:
    """The README's "On a cluster" section: the journey this file checks."""
    text = README.read_text()
    start = text.index("### 3. On a cluster")
    return text[start : text.index("\n### 4.", start)]


def doc_commands() -> list[list[str]]:
    """Each command line of the shell blocks of the README's cluster section (continuations joined), as words."""
    blocks = re.findall(r"```(?:bash|sh|shell)\n(.*?)```", cluster_section(), flags=re.S)
    lines = [ln.strip() for block in blocks for ln in block.replace("\\\n", " ").splitlines()]
    out = []
    for line in lines:
        w = shlex.split(re.sub(r"(^|\s)#.*$", "", line))  # a comment starts at a word: ${X#y} stays
        if w:  # a quoted command inside (bash -c '…') is checked like the rest
            out.append(w + [x for word in w[1:] if " " in word for x in shlex.split(word)])
    return out


def parser_options(parser: argparse.ArgumentParser) -> set[str]:
    return {opt for action in parser._actions for opt in action.option_strings}


def test_the_docs_use_commands_flags_files_and_sweeps_that_exist() -> None:
    from ray.scripts.scripts import cli as ray_cli

    from analysis.cli import build_parser as analyze_parser
    from sweeps.cli import build_parser
    from sweeps.config import read_sweep_file

    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    pclc_commands = next(a for a in build_parser()._actions if a.dest == "command").choices
    sweep_parser = pclc_commands["sweep"]  # `python -m sweeps` is `pclc sweep`: the same parser
    seen: set[str] = set()
    for w in doc_commands():
        seen.add(w[0])
        if w[0] == "ray":
            assert w[1] in ray_cli.commands, f"`ray {w[1]}` is not a ray command"
        if w[:2] == ["pclc", "analyze"]:
            assert "pclc" in scripts and w[1] in pclc_commands, w
            flags = {a for a in w[2:] if a.startswith("--")}
            assert flags <= parser_options(analyze_parser()), flags - parser_options(analyze_parser())
        for i, word in enumerate(w):
            if word == "-m":
                assert (REPO / w[i + 1] / "__main__.py").is_file(), f"python -m {w[i + 1]}: no such module here"
            if w[i : i + 3] == ["python", "-m", "sweeps"]:
                flags = {a for a in w[i + 3 :] if a.startswith("--")}
                assert flags <= parser_options(sweep_parser), flags - parser_options(sweep_parser)
            for path in re.findall(
                r"(?:sweeps/configs/[\w.-]+\.yaml|ray_cluster[\w.-]*\.yaml|cluster/[\w.-]+\.sh)", word
            ):
                assert (REPO / path).is_file(), f"the README's cluster section names {path}, which does not exist"
                if path.startswith("sweeps/configs/"):
                    read_sweep_file(REPO / path)  # a config the docs send to the cluster must be valid
    assert {"ray", "pclc", "ssh"} <= seen


@pytest.mark.skipif(os.path.exists("/proc/driver/nvidia/version"), reason="a real NVIDIA driver is installed here")
def test_setup_node_refuses_a_gpu_node_whose_driver_is_too_old_for_torch(tmp_path: Path) -> None:
    """torch 2.14 is built for CUDA 13.0 (driver >= 580): an older driver (from a stand-in nvidia-smi)
    is named before any trial runs."""
    import torch

    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "nvidia-smi").write_text("#!/bin/sh\necho 550.54.15\n")
    (tmp_path / "bin" / "nvidia-smi").chmod(0o755)
    env = {
        **os.environ,
        "HOME": str(tmp_path),
        "PCLC_HOME": str(REPO),
        "PCLC_VENV": sys.prefix,
        "PCLC_INSTALL": "0",
        "PATH": f"{tmp_path / 'bin'}:{os.environ['PATH']}",
    }
    proc = subprocess.run(["bash", str(REPO / "cluster" / "setup_node.sh")], env=env, capture_output=True, text=True)
    if (torch.version.cuda or "").startswith("13."):
        assert proc.returncode == 2, proc.stderr
        assert "NVIDIA driver 550.54.15" in proc.stderr and "needs a driver >= 580" in proc.stderr
    else:  # a CPU-only torch, or one built for CUDA 12 (which runs on 550)
        assert proc.returncode == 0, proc.stderr


# --------------------------------------------------------------------------- who can reach what (issue 29)


@pytest.mark.parametrize("name", CLUSTER_FILES)
def test_ray_asks_for_the_token_and_the_nodes_get_the_logins_through_the_file_mounts(name: str) -> None:
    config = prepared(name)
    starts = [c for c in commands(config) if any(w[:2] == ["ray", "start"] for w in words(c))]
    assert len(starts) == 2 and all(re.search(r"\bRAY_AUTH_MODE=token\b", c) for c in starts), starts
    local = load(name)["file_mounts"][SECRETS_REMOTE]
    assert local.startswith("~/"), "the logins live on the user's machine, never in the checkout"
    maker = (REPO / "cluster" / "make_secrets.sh").read_text()
    assert "${1:-" + local.replace("~", "$HOME") + "}" in maker, "make_secrets.sh makes the folder the file mounts"
    setup = (REPO / "cluster" / "setup_node.sh").read_text()
    assert "RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH" in setup and "$SECRETS/mlflow.env" in setup


def test_aws_nodes_get_imdsv2_ssh_from_one_address_and_workers_the_bucket_only() -> None:
    raw = load("ray_cluster.yaml")
    config = prepared("ray_cluster.yaml")
    ssh_from = raw["metadata"]["pclc"]["ssh_from"]
    for node_type in config["available_node_types"].values():
        options = node_type["node_config"]["MetadataOptions"]
        assert options["HttpTokens"] == "required" and options["HttpPutResponseHopLimit"] == 1, options
    group = config["provider"]["security_group"]
    assert group["GroupName"] == raw["metadata"]["pclc"]["security_group"]
    assert group["IpPermissions"] == [
        {"FromPort": 22, "ToPort": 22, "IpProtocol": "tcp", "IpRanges": [{"CidrIp": ssh_from}]}
    ]
    assert "0.0.0.0/0" not in json.dumps(raw)  # nowhere in what Ray reads (a comment may say why)
    worker = next(t for n, t in config["available_node_types"].items() if n != config["head_node_type"])
    assert worker["node_config"]["IamInstanceProfile"]["Arn"].endswith(":instance-profile/pclc-worker")
    policy = json.loads((REPO / "cluster" / "aws" / "worker_policy.json").read_text())
    for statement in policy["Statement"]:
        assert statement["Effect"] == "Allow"
        assert all(a.startswith("s3:") and "*" not in a for a in statement["Action"]), statement
        assert statement["Resource"] in ("arn:aws:s3:::BUCKET", "arn:aws:s3:::BUCKET/*"), statement
    setup = (REPO / "cluster" / "aws_setup.sh").read_text()
    assert "s/BUCKET/$BUCKET/g" in setup and "PCLC_STORAGE=s3://" in setup
    assert "role pclc-head" in setup and "iam:PassRole" in setup and "AmazonS3FullAccess" not in setup
    assert '--port 22 --cidr "$SSH_FROM"' in setup and "revoke-security-group-ingress" in setup


def test_aws_setup_refuses_the_placeholder_address(tmp_path: Path) -> None:
    """The shipped ssh_from (a documentation address) is refused before any AWS call: no `aws` on PATH here."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin"}
    proc = subprocess.run(
        ["bash", str(REPO / "cluster" / "aws_setup.sh"), str(REPO / "ray_cluster.yaml")],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0 and "ssh_from = 203.0.113.7/32: set your own address" in proc.stderr, proc.stderr


def test_make_secrets_makes_the_logins_once_mode_600_and_rotates_on_request(tmp_path: Path) -> None:
    folder = tmp_path / "secrets"
    run = ["bash", str(REPO / "cluster" / "make_secrets.sh")]

    def made() -> dict[str, str]:
        return {p.name: p.read_text() for p in folder.iterdir()}

    subprocess.run([*run, str(folder)], check=True, capture_output=True, timeout=60)
    first = made()
    assert set(first) == {"ray_auth_token", "mlflow.env"} and len(first["ray_auth_token"].strip()) == 64
    assert first["mlflow.env"].startswith("MLFLOW_TRACKING_USERNAME=pclc\nMLFLOW_TRACKING_PASSWORD=")
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in folder.iterdir())
    out = subprocess.run([*run, str(folder)], check=True, capture_output=True, text=True, timeout=60).stdout
    assert made() == first and first["mlflow.env"].split("=")[-1].strip() not in out  # kept, never shown
    subprocess.run([*run, "--rotate", str(folder)], check=True, capture_output=True, timeout=60)
    assert all(made()[k] != v for k, v in first.items())


def test_start_mlflow_refuses_a_password_it_could_not_keep_off_the_command_line(tmp_path: Path) -> None:
    subprocess.run(["bash", str(REPO / "cluster" / "make_secrets.sh"), str(tmp_path / ".pclc-secrets")], check=True)
    env = {**os.environ, "HOME": str(tmp_path), "PCLC_MLFLOW_BACKEND": "mysql://u:hunter2pw@db/mlflow"}
    proc = subprocess.run(["bash", str(REPO / "cluster" / "start_mlflow.sh")], env=env, capture_output=True, text=True)
    assert proc.returncode == 2 and "leave the password out of PCLC_MLFLOW_BACKEND (mysql://u:***@…)" in proc.stderr
    assert "hunter2pw" not in proc.stdout + proc.stderr
    proc = subprocess.run(["bash", str(REPO / "cluster" / "start_mlflow.sh")], env={**env, "HOME": str(tmp_path / "x")})
    assert proc.returncode == 2  # no login files: refused before anything starts
