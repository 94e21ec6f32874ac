#!/usr/bin/env bash
# Start (or restart) the sweeps' MLflow tracking server on the head node, bound to the head's
# PRIVATE address only: workers reach it inside the cluster network, people reach it through an
# SSH tunnel (README, "On a cluster"); it never listens on 0.0.0.0 or a public address.
# Run by `ray up` as the last head start command. Settings come from ~/.pclc_env (setup_node.sh).
# Writes ~/pclc-mlflow/: server.pid, server.log, and url (the tracking URI to give `--tracking-uri`).
# Artifacts are proxied by the server (--serve-artifacts), so trials need no S3 credentials of their own.
set -euo pipefail
# shellcheck disable=SC1090
[ -f "$HOME/.pclc_env" ] && . "$HOME/.pclc_env"

STATE=$HOME/pclc-mlflow
PORT=${PCLC_MLFLOW_PORT:-5000}
BACKEND=${PCLC_MLFLOW_BACKEND:-sqlite:///$STATE/mlflow.db}
# SQLAlchemy 2.1 reads a bare postgresql:// as psycopg 3; the nodes install psycopg2-binary (README).
case "$BACKEND" in postgresql://*) BACKEND="postgresql+psycopg2://${BACKEND#postgresql://}" ;; esac
ARTIFACTS=${PCLC_MLFLOW_ARTIFACTS:-$STATE/artifacts}
WORKERS=${PCLC_MLFLOW_WORKERS:-4}
# The address Ray itself uses for this node: the private IP on a cloud VM (the default route's source).
HOST=${PCLC_MLFLOW_HOST:-$(python -c 'import ray.util; print(ray.util.get_node_ip_address())')}
case "$HOST" in
    "" | 0.0.0.0 | :: | "[::]" | "*")
        echo "start_mlflow: refusing to bind MLflow to '$HOST': give the head's private address (PCLC_MLFLOW_HOST)" >&2
        exit 2
        ;;
esac

mkdir -p "$STATE"
bash "$(dirname "${BASH_SOURCE[0]}")/stop_mlflow.sh" # a re-run of `ray up` restarts the server

# Requests must name this address (workers) or localhost (an SSH tunnel's end): MLflow's own
# default accepts only RFC 1918 addresses, and nothing else needs to be accepted.
ALLOWED="$HOST,$HOST:*,localhost,localhost:*,127.0.0.1,127.0.0.1:*"

# setsid + nohup: the server outlives the SSH session `ray up` runs this in; it leads its own
# process group, so stop_mlflow.sh stops it together with its web workers.
setsid nohup mlflow server --host "$HOST" --port "$PORT" --workers "$WORKERS" --allowed-hosts "$ALLOWED" \
    --backend-store-uri "$BACKEND" --serve-artifacts --artifacts-destination "$ARTIFACTS" \
    >"$STATE/server.log" 2>&1 </dev/null &
echo $! >"$STATE/server.pid"

URL="http://$HOST:$PORT"
if ! python - "$URL" "$(cat "$STATE/server.pid")" <<'EOF'; then
"""Wait up to 120 s for the server's /health endpoint; fail early if the server process died."""
import sys, time, urllib.request

url, pid = sys.argv[1], int(sys.argv[2])
deadline = time.monotonic() + 120
while time.monotonic() < deadline:
    try:  # a dead child stays a zombie until this script exits: read its state, not just its pid
        with open(f"/proc/{pid}/stat") as stat:
            alive = stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        alive = False
    if not alive:
        sys.exit("the server process exited")
    try:
        with urllib.request.urlopen(url + "/health", timeout=2) as response:
            if response.status == 200:
                sys.exit(0)
    except OSError:
        pass
    time.sleep(0.5)
sys.exit(f"no answer from {url}/health within 120 s")
EOF
    echo "start_mlflow: MLflow did not start; the end of $STATE/server.log:" >&2
    tail -n 30 "$STATE/server.log" >&2
    exit 1
fi
echo "$URL" >"$STATE/url"
echo "start_mlflow: MLflow tracking server at $URL (backend $BACKEND, artifacts $ARTIFACTS)"
