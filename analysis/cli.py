"""`pclc analyze` / `python -m analysis`: a sweep's MLflow runs → plots, report.md and report.html.

Problems the user can fix (unknown experiment, no finished runs, a missing database, an unreachable
server) print one clear message and exit with code 2, without a traceback.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from mlflow.exceptions import MlflowException

from analysis.load import FAILED, RUNNING, STOPPED, AnalysisError, Sweep, connect, load_sweep
from pclc import contract as C


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pclc analyze", description="Plots and a report (report.md, report.html) from a sweep's MLflow runs."
    )
    parser.add_argument("--experiment", help="MLflow experiment name (the sweep's `name`)")
    parser.add_argument(
        "--tracking-uri", help="MLflow tracking URI (default: sqlite:///<abs cwd>/mlflow.db; a *.db path also works)"
    )
    parser.add_argument("--out", help="output folder (default: <abs cwd>/reports/<experiment>)")
    parser.add_argument("--parent-run", help="a sweep's parent run id (default: the experiment's latest sweep)")
    parser.add_argument(
        "--no-log-artifacts", action="store_true", help="do not log the report as artifacts of the parent run"
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    return parser


def _no_finished(sweep: Sweep) -> AnalysisError:
    c = sweep.counts()
    where = f"experiment {sweep.experiment!r}" + (f" (sweep run {sweep.parent_run_id})" if sweep.parent_run_id else "")
    if c["total"] == 0:
        return AnalysisError(f"{where} has no trial runs yet; run the sweep first (pclc sweep CONFIG.yaml)")
    msg = (
        f"{where} has no finished runs with a finite headline metric {sweep.headline!r}: {c['finished']} finished, "
        f"{c[FAILED]} failed, {c[STOPPED]} stopped early, {c[RUNNING]} running or scheduled."
    )
    reasons = sweep.runs.loc[sweep.runs["outcome"] == FAILED, "failure_reason"].dropna()
    if len(reasons):
        msg += f" First failure: {reasons.iloc[0]}"
    if c[RUNNING]:
        msg += " Wait for the running trials to finish, then analyse again."
    return AnalysisError(msg)


def main(argv: list[str] | None = None) -> int:
    """Run the analysis; returns the exit code (0 done, 2 a problem the message explains)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as stop:  # argparse has printed the usage error (or --help)
        return int(stop.code or 0)
    if args.experiment is None and args.parent_run is None:
        parser.print_usage(sys.stderr)
        print("pclc analyze: error: give --experiment NAME (or --parent-run ID)", file=sys.stderr)
        return 2
    with _env_defaults(QUIET_MLFLOW):
        return _run(args)


# A dead server should fail in seconds, not after MLflow's minutes of retries (the one policy, pclc.contract);
# no download progress bars.
QUIET_MLFLOW = {**C.MLFLOW_CLIENT_ENV, "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}


@contextmanager
def _env_defaults(values: dict[str, str]) -> Iterator[None]:
    """Set the variables the user has not set, for this call only (main may run inside a longer process)."""
    added = [k for k in values if k not in os.environ]
    os.environ.update({k: values[k] for k in added})
    try:
        yield
    finally:
        for k in added:
            os.environ.pop(k, None)


def report_folder(root: Path, experiment: str) -> Path:
    """`root/<experiment>`, the name made one plain folder name (`../../x` → `_x`, `/etc/x` → `_etc_x`):
    MLflow accepts any experiment name, and the report must land under `root` whatever it is."""
    name = re.sub(r"[^\w.-]+", "_", experiment).lstrip(".") or "_"
    out = (root / name).resolve()
    if out.parent != root.resolve():  # cannot happen with the name above; the guarantee is checked, not assumed
        raise AnalysisError(f"experiment {experiment!r}: no folder for it under {root}")
    return out


def _run(args: argparse.Namespace) -> int:
    from analysis.report import write_report  # matplotlib and optuna load only when there is work

    try:
        client, uri = connect(args.tracking_uri)
        sweep = load_sweep(args.experiment, tracking_uri=uri, parent_run_id=args.parent_run, client=client)
        if sweep.trials.empty:
            raise _no_finished(sweep)
        out = Path(args.out).resolve() if args.out else report_folder(Path.cwd() / "reports", sweep.experiment)
        report = write_report(sweep, out, client=client, log_to_mlflow=not args.no_log_artifacts)
    except AnalysisError as err:
        if args.debug:
            raise
        print(f"pclc analyze: error: {err}", file=sys.stderr)
        return 2
    except MlflowException as err:
        if args.debug:
            raise
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        print(f"pclc analyze: error: MLflow: {first[:400]}", file=sys.stderr)
        return 2

    c = sweep.counts()
    print(
        f"analysed {c['analysed']} of {c['total']} trial runs of {sweep.experiment!r} "
        f"({c['finished']} finished, {c[FAILED]} failed, {c[STOPPED]} stopped early, {c[RUNNING]} running)"
    )
    for note in sweep.notes:
        print(f"note: {note}")
    drawn = [p.name for p in report.plots if p.path is not None]
    print(f"plots: {len(drawn)} drawn" + (f", {len(report.skipped)} skipped:" if report.skipped else ""))
    for name, reason in report.skipped.items():
        print(f"  skipped {name}: {reason}")
    if report.artifact_uri:
        print(f"logged to the sweep's parent run {sweep.parent_run_id}: {report.artifact_uri}")
    elif report.log_error:
        print(f"warning: could not log the report to the parent run: {report.log_error}", file=sys.stderr)
    print(f"report: {report.markdown}")
    print(f"        {report.html}  (self-contained: open it in a browser)")
    if report.verdict is not None:
        print(f"verdict ({report.verdict.metric}, from the {report.verdict.source}):")
        for sentence in report.verdict.summary() or ["(nothing to compare)"]:
            print(f"  {sentence}")
    return 0
