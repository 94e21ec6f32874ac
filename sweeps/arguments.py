"""Arguments of `pclc sweep` / `python -m sweeps`, declared once for both (no Ray import here)."""

from __future__ import annotations

import argparse


def add_sweep_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="a sweep file, e.g. sweeps/configs/quickstart.yaml")
    parser.add_argument("--resume", action="store_true", help="continue the sweep stored under storage_path")
    parser.add_argument(
        "--retry-failed", action="store_true",
        help="on resume, also re-run trials that failed for a reason that would repeat (NaN loss, bad config or data)",
    )  # fmt: skip
    parser.add_argument("--address", default=None, help="Ray cluster address ('auto' joins a running cluster)")
    parser.add_argument("--tracking-uri", default=None, help="MLflow URI (default sqlite:///<cwd>/mlflow.db)")
    parser.add_argument("--storage-path", default=None, help="Ray results folder or URI (default <cwd>/ray_results)")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE",
        help="override a sweep-file field, dotted for nesting (num_trials=4, trial.epochs=3); repeatable",
    )  # fmt: skip
    parser.add_argument("--smoke-test", action="store_true", help="2 trials of 2 epochs on a data subset: checks the plumbing")
    parser.add_argument(
        "--dry-run", action="store_true",
        help="start nothing: print the trial count, resources per trial, and the wall time and GPU-hours "
        "estimated from one epoch measured here",
    )  # fmt: skip
