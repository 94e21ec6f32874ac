#!/usr/bin/env bash
# Stop the MLflow server that start_mlflow.sh started on this node (by its pid file), if it runs.
# `ray down` does not stop it: on cloud nodes the machine goes away, on your own machines run
#   ray exec ray_cluster_local.yaml 'bash ~/pclc-sweeps/cluster/stop_mlflow.sh'
# The SQLite store and the artifacts stay in ~/pclc-mlflow for the next start.
set -euo pipefail

STATE=$HOME/pclc-mlflow
PIDFILE=$STATE/server.pid
[ -f "$PIDFILE" ] || exit 0
pid=$(cat "$PIDFILE")
# A stale pid file may name an unrelated process by now: only stop an MLflow server.
if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q 'mlflow'; then
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" # the whole process group: server and workers
    for _ in $(seq 40); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.25
    done
    kill -KILL -- "-$pid" 2>/dev/null || true
    echo "stop_mlflow: stopped the MLflow server (pid $pid)"
fi
rm -f "$PIDFILE" "$STATE/url"
