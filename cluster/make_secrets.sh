#!/usr/bin/env bash
# Make the cluster's shared secrets once, on YOUR machine, before the first `ray up` (docs/cluster.md,
# "Who can reach what"). The cluster files copy this folder to ~/.pclc-secrets on every node through their
# file_mounts (rsync keeps the modes: folder 700, files 600); nothing else holds them.
#   ray_auth_token  Ray's token (RAY_AUTH_MODE=token): every Ray process and client must present it
#   mlflow.env      MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD: the login the sweep's driver, its
#                   trials and `pclc analyze` use on the head's MLflow server (start_mlflow.sh creates the user)
# MLflow's admin password is not here: start_mlflow.sh makes it on the head at the first `ray up`.
#
#   bash cluster/make_secrets.sh [FOLDER]           # default ~/.pclc/cluster-secrets; keeps what exists
#   bash cluster/make_secrets.sh --rotate [FOLDER]  # new token and password; then `ray up` again
set -euo pipefail

rotate=0
if [ "${1:-}" = --rotate ]; then
    rotate=1
    shift
fi
DIR=${1:-$HOME/.pclc/cluster-secrets}
umask 077
mkdir -p "$DIR"
chmod 700 "$DIR"
new_secret() { python3 -c 'import secrets; print(secrets.token_hex(32))'; }

if [ "$rotate" = 1 ] || [ ! -s "$DIR/ray_auth_token" ]; then
    new_secret >"$DIR/ray_auth_token.tmp"
    mv "$DIR/ray_auth_token.tmp" "$DIR/ray_auth_token"
fi
if [ "$rotate" = 1 ] || [ ! -s "$DIR/mlflow.env" ]; then
    printf 'MLFLOW_TRACKING_USERNAME=pclc\nMLFLOW_TRACKING_PASSWORD=%s\n' "$(new_secret)" >"$DIR/mlflow.env.tmp"
    mv "$DIR/mlflow.env.tmp" "$DIR/mlflow.env"
fi
chmod 600 "$DIR/ray_auth_token" "$DIR/mlflow.env"
echo "make_secrets: the cluster's Ray token and MLflow login are in $DIR (mode 600)"
