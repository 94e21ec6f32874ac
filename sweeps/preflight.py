"""The tracking store, probed before Ray starts: a server that does not answer or a SQLite file in a missing
folder is one clear error (exit 2), not a failure after the first trial trained."""

from __future__ import annotations

import os
from pathlib import Path


class TrackingStoreError(ValueError):
    """The MLflow tracking store cannot be reached or created; found before Ray starts."""


def check_tracking_store(uri: str, *, timeout: float = 5.0) -> None:
    """Fail fast when `uri` cannot work: a server that does not answer, a SQLite file in a missing folder.

    Only connection failures count: any HTTP answer (even 401/404 from a proxy) means a server is there.
    """
    if uri.startswith("sqlite:///"):
        db = Path(uri.removeprefix("sqlite:///"))
        if not db.parent.is_dir():
            raise TrackingStoreError(
                f"tracking URI {uri}: folder {db.parent} does not exist; create it or point --tracking-uri elsewhere"
            )
        if db.exists() and not db.is_file():
            raise TrackingStoreError(f"tracking URI {uri}: {db} is not a file")
        if not os.access(db if db.exists() else db.parent, os.W_OK):
            raise TrackingStoreError(f"tracking URI {uri}: {db if db.exists() else db.parent} is not writable")
        return
    if uri.startswith(("http://", "https://")):
        import urllib.error
        import urllib.request

        try:
            with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout):
                return
        except urllib.error.HTTPError:
            return  # something answered
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise TrackingStoreError(
                f"MLflow tracking server {uri} cannot be reached ({reason}); start it "
                f"(mlflow server --host 127.0.0.1 --port PORT) or check --tracking-uri"
            ) from None
