"""The head's MLflow server: MLflow's basic-auth app behind an origin gate (run by cluster/start_mlflow.sh).

`python -m sweeps.mlflow_gate server --app-name basic-auth …` is `mlflow server` with one change: the
basic-auth app it serves is wrapped in `OriginGate`. MLflow's own cross-origin check (`--cors-allowed-origins`)
lets every localhost origin through, and answers its CORS preflight with credentials allowed: a page on any
other local port of the user's browser could read and write through the SSH tunnel with the login the
browser has cached. The gate answers 403 to any request whose `Origin` is not one of `PCLC_MLFLOW_ORIGINS`
(the tunnel's, e.g. http://localhost:5000); requests without one (API clients, page loads) go on to the login.
Everything else (the admin bootstrap, users, permissions) is MLflow's own.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

ORIGINS_ENV = "PCLC_MLFLOW_ORIGINS"  # comma-separated origins a browser may send requests from
REFUSED = b"cross-origin request refused: open MLflow through its SSH tunnel (docs/cluster.md)\n"

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


class OriginGate:
    """ASGI middleware: a request from a browser page of another origin is refused before the app sees it."""

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]], allowed: set[str]) -> None:
        self.app, self.allowed = app, allowed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            origin = dict(scope.get("headers") or []).get(b"origin")
            if origin is not None and origin.decode("latin-1") not in self.allowed:
                await send(
                    {"type": "http.response.start", "status": 403, "headers": [(b"content-type", b"text/plain")]}
                )
                await send({"type": "http.response.body", "body": REFUSED})
                return
        await self.app(scope, receive, send)


def allowed_origins() -> set[str]:
    """The origins of `PCLC_MLFLOW_ORIGINS`; none set means none allowed (API clients send no Origin)."""
    return {o.strip().rstrip("/") for o in os.environ.get(ORIGINS_ENV, "").split(",") if o.strip()}


def create_app() -> OriginGate:
    """The app factory uvicorn's workers call: MLflow's basic-auth app (FastAPI under uvicorn), gated."""
    from mlflow.server.auth import create_app as basic_auth_app

    app = basic_auth_app()
    if not hasattr(app, "router"):  # a Flask app: MLflow was started with gunicorn or waitress
        raise RuntimeError("sweeps.mlflow_gate serves MLflow under uvicorn only (no --gunicorn/--waitress-opts)")
    return OriginGate(app, allowed_origins())


def main() -> None:
    """`mlflow server`, with `--app-name basic-auth` resolved to `create_app` (MLflow finds apps by entry point:
    this points its lookup at the gate for that one name, so MLflow's basic-auth bootstrap still runs)."""
    import mlflow.server
    from mlflow.cli import cli

    find_app = mlflow.server._find_app

    def gated(app_name: str) -> str:
        return "sweeps.mlflow_gate:create_app" if app_name == "basic-auth" else find_app(app_name)

    mlflow.server._find_app = gated
    cli(prog_name="mlflow")


if __name__ == "__main__":
    main()
