"""The MLflow contract between the writer (`sweeps`) and the reader (`analysis`): one module both import.

What the two sides must agree on, beyond the metric names (`pclc.metrics`, which also maps a metric
name to its MLflow spelling): the tag names of the run layout, how a config value is written as an
MLflow param and read back, and where the tracking store is. Plain Python: no MLflow import here, so
`pclc` stays free of it and both sides share the words without sharing a client.

Layout: one parent run per sweep (tag `pclc.role` = `sweep`), one child run per trial (`pclc.role` =
`trial`, `mlflow.parentRunId` = the parent, `pclc.trial_id` = Tune's trial id).
"""

from __future__ import annotations

import importlib.util
import json
import re
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pclc.metrics import FINALIST_PREFIX
from pclc.redact import mask_uri, take_password

# --------------------------------------------------------------------------- tags
PARENT = "mlflow.parentRunId"  # MLflow's own: a trial's parent (sweep) run
ROLE = "pclc.role"  # ROLE_SWEEP on the parent, ROLE_TRIAL on every child
ROLE_SWEEP, ROLE_TRIAL = "sweep", "trial"
MODE = "pclc.mode"  # optimize | ablation
HEADLINE = "pclc.headline_metric"
OBJECTIVE = "pclc.objective"  # JSON: [{"metric": …, "mode": "max" | "min"}, …], the headline first
EXPERIMENT_PATH = "pclc.experiment_path"  # the Ray experiment folder: how a resumed sweep finds its parent
RESUMED = "pclc.resumed"  # unix time of the last resume
# on the parent run, set when it is created: the sha256 of the resolved sweep file less where it is stored and
# tracked; a later driver continues this parent only when its sweep file hashes the same (sweeps.driver)
SWEEP_FINGERPRINT = "pclc.sweep_fingerprint"
GIT_COMMIT, VERSIONS = "git_commit", "versions"
TRIAL_ID = "pclc.trial_id"
VARIANT = "pclc.variant"  # ablation: the variant's label; confirmation: `search #k` or the reference's name
PHASE = "pclc.phase"  # which part of a sweep a trial run belongs to (none: an older sweep's search)
LOOK = "pclc.look"  # a sequential confirmation's later look a trial run belongs to (2, 3, …; none: the first look)
PHASE_SEARCH, PHASE_CONFIRM = "search", "confirm"  # the search (or ablation grid); its confirmation on fresh seeds
REFERENCE = "pclc.reference"  # on a reference arm's runs: the reference's name (e.g. ce)
REFERENCES = "pclc.references"  # on the parent run: JSON list of the reference names, in the sweep file's order
VERDICT = "pclc.verdict"  # on the parent run: JSON of the sweep file's verdict settings, e.g. {"margin": 0.03}
# the default equivalence margin of a verdict: 3 points of accuracy (a sweep file's `verdict: {margin: …}`; the
# writer records it under VERDICT, analysis.compare reads it from there)
DEFAULT_MARGIN = 0.03
SEARCH_TRIAL = "pclc.search_trial"  # on a confirmation run: the search trial whose configuration it re-trains
SWEEP = "pclc.sweep"  # the sweep's name, on every child
SEARCHED = "pclc.searched"  # JSON list of the TrialConfig fields the sweep varies
ATTEMPTS = "pclc.attempts"  # how many times the trial's run was opened (retries and resumes)
FAILURE = "pclc.failure_reason"
DETERMINISTIC = "pclc.failure_deterministic"  # "1": the failure would repeat (NaN loss, refused config, bad data)
FINAL = "pclc.final"  # "1" once the final evaluation is logged
STOPPED_EARLY = "pclc.stopped_early"  # "true" when a scheduler (ASHA) stopped the trial
LEFT_OUT = "pclc.attacks_left_out"  # the trial's "Attack left out: …" warnings (too few classes), joined by " | "
# on a finished trial: how its test samples were drawn (pclc.samples.DESIGN; a run without it scored the head of
# the test split), and per subset (evaluated, autoattack, epoch) its size and the classes it covers
SAMPLES = "pclc.samples"
SAMPLES_SUBSET = "pclc.samples."  # + the subset's name: e.g. pclc.samples.evaluated = "80 samples, 10/10 classes"
EVALUATION_ARTIFACT = "evaluation.json"  # metrics, warnings and resolved config of a finished trial
# Per-sample outcomes (pclc.outcomes: which test samples, correct or not under each attack × eps): a trial's,
# logged with evaluation.json, and `pclc evaluate`'s re-score of it, beside its `finalist/*` metrics.
OUTCOMES_ARTIFACT = "outcomes.json"
FINALIST_OUTCOMES_ARTIFACT = f"{FINALIST_PREFIX}{OUTCOMES_ARTIFACT}"
# A trial with `save_weights: true` writes its final weights to WEIGHTS_FILE in its output folder; the sweep logs
# that file into the artifact folder WEIGHTS_DIR, where `pclc evaluate` downloads it from (WEIGHTS_ARTIFACT).
WEIGHTS_FILE, WEIGHTS_DIR = "model.pt", "weights"
WEIGHTS_ARTIFACT = f"{WEIGHTS_DIR}/{WEIGHTS_FILE}"
# `pclc evaluate` on a trial's child run: "1" once a full AutoAttack re-score is logged, and its settings (JSON:
# n, aa_steps, square_queries and the eps it covers)
FINALIST, FINALIST_SETTINGS = "pclc.finalist", "pclc.finalist_settings"
# MLflow 3's experiment kind: model training (runs), not a GenAI app (traces). The 3.17 UI itself picks the
# view from its workflow switch instead (default GenAI), so the link we print names it: `experiment_ui_path`.
EXPERIMENT_KIND, CUSTOM_MODEL_DEVELOPMENT = "mlflow.experimentKind", "custom_model_development"


def experiment_ui_path(experiment_id: str) -> str:
    """The MLflow UI's address of an experiment's runs (append to http://host:port): its runs table, not the
    GenAI "Overview / Traces" page the 3.17 UI opens by default."""
    return f"/#/experiments/{experiment_id}?workflowType=machine_learning"


def samples_tags(samples: dict[str, str]) -> dict[str, str]:
    """The tags of an evaluation's `samples` block ({"design": …, subset: coverage, …}, pclc.experiment)."""
    return {(SAMPLES if k == "design" else SAMPLES_SUBSET + k): str(v) for k, v in samples.items()}


# --------------------------------------------------------------------------- params


def param_value(value: Any) -> str:
    """A TrialConfig value as an MLflow param: lists and mappings JSON-encoded, the rest str().

    >>> param_value([0.1, 0.2]), param_value(None), param_value(0.5)
    ('[0.1, 0.2]', 'None', '0.5')
    """
    return json.dumps(value) if isinstance(value, (list, dict, tuple)) else str(value)


_INT = re.compile(r"[+-]?\d+")


def parse_param(text: str | None) -> Any:
    """Inverse of `param_value`; lists come back as tuples so that table rows stay hashable.

    >>> parse_param("0.995"), parse_param("3"), parse_param("True"), parse_param("[0.1]"), parse_param("None")
    (0.995, 3, True, (0.1,), None)
    """
    if text is None:
        return None
    t = text.strip()
    if t in ("None", "null", ""):
        return None
    if t in ("True", "true", "False", "false"):
        return t in ("True", "true")
    if _INT.fullmatch(t):
        return int(t)
    try:
        return float(t)
    except ValueError:
        pass
    if t[:1] == "[":
        try:
            value = json.loads(t)
        except ValueError:
            return t
        return tuple(value) if isinstance(value, list) else t
    return t


# --------------------------------------------------------------------------- the tracking store

NO_FILE_STORE = "MLflow 3 has no file store; use sqlite:////abs/path/mlflow.db or http(s)://host:port"


def default_tracking_uri(cwd: str | Path | None = None) -> str:
    """`sqlite:///<abs cwd>/mlflow.db`: every trial process, whatever its working directory, needs the same path."""
    return f"sqlite:///{Path(cwd or Path.cwd()).resolve() / 'mlflow.db'}"


def is_file_store(uri: str) -> bool:
    """True for a URI MLflow 3 would read as a file store (a path, `file:`), which it no longer has."""
    return uri.startswith(("file:", "./", "/", "~")) or "://" not in uri


# The stores MLflow 3 tracks runs in: SQLite, a tracking server, or a database SQLAlchemy reaches.
SERVER_SCHEMES = ("http", "https")
DATABASE_SCHEMES = ("postgresql", "mysql", "mssql")
# PostgreSQL's Python drivers, best first: psycopg2 is what the cluster nodes install (cluster/setup_node.sh).
# A bare postgresql:// means whatever SQLAlchemy's default is (psycopg 3 since 2.1): the URI names one that is here.
POSTGRES_DRIVERS = ("psycopg2", "psycopg", "pg8000")
# Default ports of the SQLAlchemy databases MLflow tracks to (a URI without a port connects here).
DATABASE_PORTS = {"postgresql": 5432, "mysql": 3306, "mssql": 1433}
SQLITE_HEADER = b"SQLite format 3\x00"  # the first 16 bytes of every SQLite database file
TRACKING_FORMS = "sqlite:////abs/path/mlflow.db, http(s)://host:port or postgresql+psycopg2://user:pw@host:port/db"


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def normalize_tracking_uri(uri: str) -> str:
    """An MLflow URI every process can use, or a ValueError saying why not and which form works (the URI in it
    masked).

    sqlite paths are made absolute; a bare `postgresql://` names an installed driver
    (`postgresql+psycopg2://`); file stores, unknown schemes, a port that is not a number and a database
    driver that is not installed are refused. A password is moved out of the URI into the environment
    variable its client reads (`pclc.redact.take_password`), so nothing that stores or prints the URI holds it.

    >>> normalize_tracking_uri("http://127.0.0.1:5000")
    'http://127.0.0.1:5000'
    """
    if uri.startswith("sqlite:///"):
        return "sqlite:///" + str(Path(uri.removeprefix("sqlite:///")).expanduser().resolve())
    if is_file_store(uri):
        raise ValueError(f"{uri!r}: {NO_FILE_STORE}")
    try:
        checked = _checked_uri(uri)
    except ValueError as exc:
        raise ValueError(mask_uri(str(exc))) from None
    return take_password(checked)


def _checked_uri(uri: str) -> str:
    """`uri` if its scheme, port and driver can work (a bare `postgresql://` given an installed driver), else why not."""
    if any(c.isspace() or not c.isprintable() for c in uri):
        raise ValueError(f"tracking URI {uri!r} holds a space or a control character; a URI has none")
    parts = urlsplit(uri)
    scheme = parts.scheme.lower()
    base, _, driver = scheme.partition("+")
    if base == "sqlite":
        raise ValueError(f"tracking URI {uri!r}: expected sqlite:////abs/path/mlflow.db (three slashes, then the path)")
    if base not in (*SERVER_SCHEMES, *DATABASE_SCHEMES):
        raise ValueError(f"tracking URI {uri!r}: unknown scheme {scheme!r}; use {TRACKING_FORMS}")
    try:
        parts.port  # noqa: B018 (urllib checks the port only when asked)
    except ValueError:
        port = parts.netloc.rpartition(":")[2]
        raise ValueError(
            f"tracking URI {uri!r}: port {port!r} is not a port number 0–65535 (e.g. http://127.0.0.1:5000)"
        ) from None
    if base in SERVER_SCHEMES:
        if driver or not parts.hostname:
            raise ValueError(f"tracking URI {uri!r}: expected http(s)://host:port")
        return uri
    if base == "postgresql":
        rest = uri[len(scheme) :]
        if not driver:
            found = next((d for d in POSTGRES_DRIVERS if _installed(d)), None)
            if found is None:
                raise ValueError(
                    f"tracking URI {uri!r}: no PostgreSQL driver is installed; pip install psycopg2-binary, "
                    f"then use postgresql+psycopg2{rest}"
                )
            return f"postgresql+{found}{rest}"
        if driver in POSTGRES_DRIVERS and not _installed(driver):
            here = [d for d in POSTGRES_DRIVERS if _installed(d)]
            use = f"postgresql+{here[0]}{rest}" if here else "pip install psycopg2-binary"
            raise ValueError(f"tracking URI {uri!r}: PostgreSQL driver {driver} is not installed; use {use}")
    return uri


# --------------------------------------------------------------------------- talking to the store

# One policy for MLflow's own HTTP retries in every pclc process that talks to a tracking server (a trial, the
# driver, `pclc evaluate`, `pclc analyze`): a few quick tries, then the caller's own patience
# (`sweeps.tracking.patiently`) or one clear error. MLflow's default is 7 retries with minutes of back-off.
# Set as environment defaults (an explicit setting wins), since MLflow reads them there.
MLFLOW_CLIENT_ENV: dict[str, str] = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "20",
}
RUNS_PAGE = 1000  # runs per page of a paged search


def every_page(fetch: Callable[[str | None], Any]) -> list[Any]:
    """Every result of a paged MLflow search: `fetch(page_token)` returns one page (a list with `.token`, None
    after the last), e.g. `lambda token: client.search_runs(ids, max_results=RUNS_PAGE, page_token=token)`."""
    found: list[Any] = []
    token = None
    while True:
        page = fetch(token)
        found.extend(page)
        token = page.token
        if not token:
            return found


def sqlite_problem(path: Path) -> str | None:
    """Why the existing file `path` cannot be an MLflow SQLite store (a folder, not a database), else None.
    An empty file is one SQLite will make into a database."""
    if path.is_dir():
        return f"{path} is a folder, not an MLflow database file"
    try:
        with path.open("rb") as f:
            head = f.read(len(SQLITE_HEADER))
    except OSError as exc:
        return f"{path} cannot be read ({exc.strerror or exc})"
    if head and head != SQLITE_HEADER:
        return f"{path} is not an SQLite database (an MLflow store is one, e.g. mlflow.db)"
    return None


def database_problem(uri: str, *, timeout: float = 5.0) -> str | None:
    """Whether the database server of a SQLAlchemy tracking URI (postgresql+psycopg2://…) accepts a connection
    within `timeout` seconds: MLflow would otherwise retry for minutes, then print a traceback. A URI naming no
    host (a local Unix socket) is not probed. None when it answers."""
    parts = urlsplit(uri)
    base = parts.scheme.partition("+")[0]
    if base not in DATABASE_PORTS or not parts.hostname:
        return None
    port = parts.port or DATABASE_PORTS[base]
    try:
        with socket.create_connection((parts.hostname, port), timeout=timeout):
            return None
    except (OSError, UnicodeError) as exc:  # refused, timed out, unknown host, a host name IDNA cannot encode
        reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        shown = uri.replace(f"{parts.password}@", "***@") if parts.password else uri
        return (
            f"tracking database {shown} cannot be reached at {parts.hostname}:{port} ({reason}); start it or "
            "check --tracking-uri"
        )
