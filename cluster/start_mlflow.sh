#!/usr/bin/env bash
# Start (or restart) the sweeps' MLflow tracking server on the head node, bound to the head's
# PRIVATE address only: workers reach it inside the cluster network, people reach it through an
# SSH tunnel (README, "On a cluster"); it never listens on 0.0.0.0 or a public address.
# Run by `ray up` as the last head start command. Settings come from ~/.pclc_env (setup_node.sh).
# Writes ~/pclc-mlflow/: server.pid, server.log, and url (the tracking URI to give `--tracking-uri`).
# Artifacts are proxied by the server (--serve-artifacts), so trials need no S3 credentials of their own.
#
# Every request needs a login (MLflow's basic-auth app; the browser asks for it through the tunnel):
#   admin  password made here at the first start, kept in ~/pclc-mlflow/auth/admin_password (mode 600):
#          fetch it with `ray rsync-down CLUSTER.yaml '~/pclc-mlflow/auth/admin_password' …` when you need it
#   pclc   the sweeps' login, from ~/.pclc-secrets/mlflow.env (cluster/make_secrets.sh, copied by file_mounts);
#          created, or its password reset to the file's, at every start
# No password reaches a command line or a log: the admin's and a backend URI's go to the server through its
# environment, the pclc login through a file. Cross-origin writes are refused but from the tunnel's origin.
set -euo pipefail
umask 077 # everything written here (auth store, log, pid, url) is the owner's alone
# shellcheck disable=SC1090
[ -f "$HOME/.pclc_env" ] && . "$HOME/.pclc_env"
SECRETS=$HOME/.pclc-secrets
if [ ! -s "$SECRETS/mlflow.env" ]; then
    echo "start_mlflow: $SECRETS/mlflow.env is missing: run cluster/make_secrets.sh on your machine, then ray up" >&2
    exit 2
fi

STATE=$HOME/pclc-mlflow
PROJECT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd) # this script's project: the server's gate comes from it
PORT=${PCLC_MLFLOW_PORT:-5000}
BACKEND=${PCLC_MLFLOW_BACKEND:-sqlite:///$STATE/mlflow.db}
# SQLAlchemy 2.1 reads a bare postgresql:// as psycopg 3; the nodes install psycopg2-binary (README).
case "$BACKEND" in postgresql://*) BACKEND="postgresql+psycopg2://${BACKEND#postgresql://}" ;; esac
# A password in the backend URI (better: ~/.pgpass) leaves it before the URI reaches a command line or this
# script's output: the server gets it as PGPASSWORD, which libpq reads. printf is a builtin: no process sees it.
if [[ $BACKEND =~ ^([A-Za-z0-9+.-]+://[^:/@]*):([^/]*)@(.*)$ ]]; then
    case "$BACKEND" in
        postgresql*) ;;
        *)
            echo "start_mlflow: leave the password out of PCLC_MLFLOW_BACKEND (${BASH_REMATCH[1]}:***@…)" >&2
            exit 2
            ;;
    esac
    PGPASSWORD=$(printf %s "${BASH_REMATCH[2]}" | python -c 'import sys, urllib.parse as u; print(u.unquote(sys.stdin.read()), end="")')
    export PGPASSWORD
    BACKEND="${BASH_REMATCH[1]}@${BASH_REMATCH[3]}"
fi
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

# MLflow's basic-auth app: its users in their own SQLite file, the admin's password made once.
AUTH=$STATE/auth
mkdir -p "$AUTH"
chmod 700 "$AUTH"
for secret in admin_password flask_secret_key; do # the key signs the UI's forms (CSRF protection)
    if [ ! -s "$AUTH/$secret" ]; then
        python -c 'import secrets; print(secrets.token_hex(24))' >"$AUTH/$secret"
    fi
    chmod 600 "$AUTH/$secret"
done
# auth_cache_ttl_seconds: a login checked once a minute per server worker, not on every request (MLflow
# hashes the password each time otherwise: 550-900 ms a request against 220-260 ms, at load 11 on 2 cores);
# a changed password reaches the other workers within that minute.
printf '[mlflow]\ndefault_permission = READ\ndatabase_uri = sqlite:///%s\nadmin_username = admin\n%s\n%s\n' \
    "$AUTH/basic_auth.db" "authorization_function = mlflow.server.auth:authenticate_request_basic_auth" \
    "auth_cache_ttl_seconds = 60" >"$AUTH/basic_auth.ini"

# Requests must name this address (workers) or localhost (an SSH tunnel's end): MLflow's own
# default accepts only RFC 1918 addresses, and nothing else needs to be accepted.
ALLOWED="$HOST,$HOST:*,localhost,localhost:*,127.0.0.1,127.0.0.1:*"
# A browser may send requests only from the tunnel's origin (http://localhost:PORT): MLflow's own check
# lets every localhost origin through, so sweeps.mlflow_gate (MLflow's server, its basic-auth app behind an
# origin gate) refuses the others; MLflow still blocks other hosts' writes by itself.
ORIGINS="http://localhost:$PORT,http://127.0.0.1:$PORT"

# setsid + nohup: the server outlives the SSH session `ray up` runs this in; it leads its own
# process group, so stop_mlflow.sh stops it together with its web workers.
# MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false: MLflow 3's job runner (a huey consumer per job type, nine processes
# beside the web workers) serves GenAI jobs no sweep uses; it only takes the head's CPU and memory.
MLFLOW_AUTH_CONFIG_PATH=$AUTH/basic_auth.ini MLFLOW_AUTH_ADMIN_PASSWORD=$(cat "$AUTH/admin_password") \
    MLFLOW_FLASK_SERVER_SECRET_KEY=$(cat "$AUTH/flask_secret_key") MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false \
    PCLC_MLFLOW_ORIGINS=$ORIGINS PYTHONPATH=$PROJECT${PYTHONPATH:+:$PYTHONPATH} \
    setsid nohup python -m sweeps.mlflow_gate server --app-name basic-auth --host "$HOST" --port "$PORT" \
    --workers "$WORKERS" --allowed-hosts "$ALLOWED" --cors-allowed-origins "$ORIGINS" \
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

# The sweeps' login: created, or its password set to the file's (a rotation), with the admin's login.
if ! python - "$URL" "$AUTH/admin_password" "$SECRETS/mlflow.env" <<'EOF'; then
"""Create the user of mlflow.env on the server, or reset its password to the file's."""
import base64, json, sys, urllib.error, urllib.request

url, admin_file, env_file = sys.argv[1:]
login = dict(line.strip().split("=", 1) for line in open(env_file) if "=" in line)
user, password = login["MLFLOW_TRACKING_USERNAME"], login["MLFLOW_TRACKING_PASSWORD"]
admin = base64.b64encode(b"admin:" + open(admin_file).read().strip().encode()).decode()


def call(method, path, body):
    request = urllib.request.Request(
        url + path, json.dumps(body).encode(), method=method,
        headers={"Authorization": "Basic " + admin, "Content-Type": "application/json"},
    )
    urllib.request.urlopen(request, timeout=30).close()


try:
    call("POST", "/api/2.0/mlflow/users/create", {"username": user, "password": password})
except urllib.error.HTTPError as err:
    if err.code != 400 or "RESOURCE_ALREADY_EXISTS" not in err.read().decode():
        sys.exit(f"creating the MLflow user {user}: HTTP {err.code}")
    call("PATCH", "/api/2.0/mlflow/users/update-password", {"username": user, "password": password})
EOF
    echo "start_mlflow: could not set up the MLflow login of $SECRETS/mlflow.env; the end of $STATE/server.log:" >&2
    tail -n 30 "$STATE/server.log" >&2
    exit 1
fi
echo "$URL" >"$STATE/url"
echo "start_mlflow: MLflow tracking server at $URL (backend $BACKEND, artifacts $ARTIFACTS; login required:" \
    "the sweeps' in $SECRETS/mlflow.env, the admin's in $AUTH/admin_password)"
