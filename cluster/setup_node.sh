#!/usr/bin/env bash
# Prepare one cluster node (head or worker) for pclc sweeps. Run by `ray up` as a setup command,
# after file_mounts copied the project to $PCLC_HOME. Two things:
#   1. a virtual environment with the project installed (plus ray[default] for the dashboard and
#      `ray job submit`, and $PCLC_PIP_EXTRA, e.g. boto3 on an AWS head for S3 artifacts);
#   2. ~/.pclc_env (mode 600), sourced from ~/.bashrc, so every later Ray command on this node (start
#      commands, `ray down`'s `ray stop`, and the jobs Ray starts) finds that environment, the settings
#      below and the cluster's logins: Ray's token (RAY_AUTH_MODE=token, RAY_AUTH_TOKEN_PATH) and the
#      sweeps' MLflow login (MLFLOW_TRACKING_USERNAME/PASSWORD), both read from ~/.pclc-secrets, which the
#      file_mounts copy from the folder cluster/make_secrets.sh made on your machine. No secret is written
#      into ~/.pclc_env itself: it names the files.
# Idempotent: a second `ray up` reinstalls the project only (pip skips what is already there).
# On a GPU node it also checks that the NVIDIA driver runs the CUDA that torch was built for
# (torch 2.14: CUDA 13.0, driver >= 580), and fails naming both versions if it does not.
#
# Settings (environment variables; the cluster YAML sets them in its `metadata` block at the top):
#   PCLC_HOME             the project on this node                    (default ~/pclc-sweeps)
#   PCLC_VENV             its virtual environment                     (default $PCLC_HOME/.venv)
#   PCLC_PYTHON           interpreter that creates the venv, >= 3.10  (default python3)
#   PCLC_INSTALL          1: create/refresh the venv; 0: use $PCLC_VENV as it is (it must import pclc)
#   PCLC_PIP_EXTRA        more pip requirements, space separated      (default none)
#   PCLC_STORAGE          Ray Tune storage_path for sweeps: s3://BUCKET/ray_results or an NFS path
#   PCLC_MLFLOW_PORT      MLflow server port                           (default 5000)
#   PCLC_MLFLOW_HOST      address MLflow binds (default: this node's private IP, as Ray picks it)
#   PCLC_MLFLOW_BACKEND   MLflow backend store (default sqlite:///$HOME/pclc-mlflow/mlflow.db)
#   PCLC_MLFLOW_ARTIFACTS MLflow artifact store (default $HOME/pclc-mlflow/artifacts; s3://… on AWS)
#   PCLC_MLFLOW_WORKERS   MLflow server worker processes              (default 4)
set -euo pipefail

PCLC_HOME=${PCLC_HOME:-$HOME/pclc-sweeps}
PCLC_VENV=${PCLC_VENV:-$PCLC_HOME/.venv}
PCLC_PYTHON=${PCLC_PYTHON:-python3}
PCLC_INSTALL=${PCLC_INSTALL:-1}

if [ ! -f "$PCLC_HOME/pyproject.toml" ]; then
    echo "setup_node: $PCLC_HOME/pyproject.toml is missing: file_mounts must copy the project there" >&2
    exit 2
fi

if [ "$PCLC_INSTALL" = 1 ]; then
    if [ ! -x "$PCLC_VENV/bin/python" ]; then
        "$PCLC_PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))' || {
            echo "setup_node: $PCLC_PYTHON is $("$PCLC_PYTHON" -V 2>&1); pclc-sweeps needs Python >= 3.10 (set PCLC_PYTHON)" >&2
            exit 2
        }
        # Ubuntu images may lack ensurepip (package python3-venv): install it once, then retry.
        if ! "$PCLC_PYTHON" -m venv "$PCLC_VENV" 2>/dev/null; then
            rm -rf "$PCLC_VENV"
            sudo apt-get update -qq
            sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv
            "$PCLC_PYTHON" -m venv "$PCLC_VENV"
        fi
    fi
    "$PCLC_VENV/bin/python" -m pip install --quiet --upgrade pip
    # ray[default] alongside the project's ray[tune]: one resolver run keeps both at the same version.
    # shellcheck disable=SC2086  # PCLC_PIP_EXTRA is a space-separated list on purpose
    "$PCLC_VENV/bin/python" -m pip install --quiet -e "$PCLC_HOME" "ray[default]" ${PCLC_PIP_EXTRA:-}
fi
"$PCLC_VENV/bin/python" -c 'import pclc, sweeps, ray, mlflow' || {
    echo "setup_node: $PCLC_VENV cannot import pclc, sweeps, ray and mlflow" >&2
    exit 2
}
# A driver too old for torch's CUDA leaves torch without CUDA: every GPU trial would fail. Say so now.
"$PCLC_VENV/bin/python" -m pclc.gpu || {
    echo "setup_node: this node's NVIDIA driver cannot run the CUDA of the installed torch (see above)" >&2
    exit 2
}

SECRETS=$HOME/.pclc-secrets
for secret in ray_auth_token mlflow.env; do
    if [ ! -s "$SECRETS/$secret" ]; then
        echo "setup_node: $SECRETS/$secret is missing: run cluster/make_secrets.sh on your machine (file_mounts copy it)" >&2
        exit 2
    fi
done
chmod 700 "$SECRETS"
chmod 600 "$SECRETS"/*
case "${PCLC_MLFLOW_BACKEND:-}" in
    *://*:*@*) echo "setup_node: warning: PCLC_MLFLOW_BACKEND carries a password (on the ray up command line too): use ~/.pgpass (docs/cluster.md)" >&2 ;;
esac

# The node's settings, for every later command (Ray runs each one in `bash --login -i`). Mode 600 before a
# byte is written: a backend URI may hold a password (better in ~/.pgpass).
touch "$HOME/.pclc_env"
chmod 600 "$HOME/.pclc_env"
{
    echo "# written by $PCLC_HOME/cluster/setup_node.sh: pclc sweeps cluster settings"
    printf 'export PATH=%q:"$PATH"\n' "$PCLC_VENV/bin"
    for name in PCLC_HOME PCLC_VENV PCLC_STORAGE PCLC_MLFLOW_PORT PCLC_MLFLOW_HOST \
        PCLC_MLFLOW_BACKEND PCLC_MLFLOW_ARTIFACTS PCLC_MLFLOW_WORKERS; do
        if [ -n "${!name:-}" ]; then printf 'export %s=%q\n' "$name" "${!name}"; fi
    done
    echo "# the cluster's logins, from the files make_secrets.sh made (never their values here)"
    printf 'export RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH=%q\n' "$SECRETS/ray_auth_token"
    printf 'set -a; . %q; set +a\n' "$SECRETS/mlflow.env"
} >"$HOME/.pclc_env"
if ! grep -qs 'pclc_env' "$HOME/.bashrc"; then
    printf '\n[ -f ~/.pclc_env ] && . ~/.pclc_env  # pclc sweeps cluster settings\n' >>"$HOME/.bashrc"
fi
echo "setup_node: $("$PCLC_VENV/bin/python" -c 'import ray; print("ray", ray.__version__)') in $PCLC_VENV; settings in ~/.pclc_env"
