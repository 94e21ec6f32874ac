"""The MLflow contract between the writer (`sweeps`) and the reader (`analysis`): one module both import.

What the two sides must agree on, beyond the metric names (`pclc.metrics`, which also maps a metric
name to its MLflow spelling): the tag names of the run layout, how a config value is written as an
MLflow param and read back, and where the tracking store is. Plain Python: no MLflow import here, so
`pclc` stays free of it and both sides share the words without sharing a client.

Layout: one parent run per sweep (tag `pclc.role` = `sweep`), one child run per trial (`pclc.role` =
`trial`, `mlflow.parentRunId` = the parent, `pclc.trial_id` = Tune's trial id).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from pclc.metrics import FINALIST_PREFIX
from pclc.redact import take_password

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


def normalize_tracking_uri(uri: str) -> str:
    """An MLflow URI every process can use: sqlite paths made absolute; file stores refused (ValueError); a
    password moved out of the URI into the environment variable its client reads (`pclc.redact.take_password`),
    so that nothing which stores or prints the URI holds it."""
    if uri.startswith("sqlite:///"):
        return "sqlite:///" + str(Path(uri.removeprefix("sqlite:///")).expanduser().resolve())
    if is_file_store(uri):
        raise ValueError(f"{uri!r}: {NO_FILE_STORE}")
    return take_password(uri)
