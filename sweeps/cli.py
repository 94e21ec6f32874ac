"""The `pclc` command: `train` (one run, no Ray), `sweep` (Ray Tune), `analyze` (MLflow → report).

The composition root of the three packages: it lives in `sweeps` (the top of the dependency
chain) so that `pclc` itself never imports Ray; Ray is imported only when `sweep` runs.
Bad input exits with code 2 and one clear message; `--debug` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime
from pathlib import Path

USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, FileNotFoundError, PermissionError)


def _train(args: argparse.Namespace) -> int:
    from pclc.config import load_config
    from pclc.experiment import run_trial

    cfg = load_config(args.config, args.set)
    if cfg.out_dir is None:
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        cfg.out_dir = str(Path("runs") / f"train-{cfg.dataset.replace(':', '_').replace('/', '_')}-{cfg.model}-{cfg.loss}-{stamp}")

    def report(metrics: dict[str, float], state: object) -> None:
        if state is not None and not args.quiet:
            shown = ", ".join(f"{k}={v:.4g}" for k, v in metrics.items())
            print(f"[epoch] {shown}", file=sys.stderr, flush=True)

    final = run_trial(cfg, report)
    print(json.dumps(final, indent=2, sort_keys=True))
    print(f"wrote {cfg.out_dir}/metrics.json", file=sys.stderr)
    return 0


def _preflight_sweep(args: argparse.Namespace) -> None:
    """What a sweep can get wrong before Ray starts, checked before Ray is even imported:
    the sweep file, an `npz:` data file, and the MLflow store (a dead server fails in seconds)."""
    from pclc.data import check_npz
    from sweeps.config import check_tracking_store, load_sweep, normalize_tracking_uri

    cfg = load_sweep(args.config, list(getattr(args, "set", None) or []))
    uri = normalize_tracking_uri(args.tracking_uri) if args.tracking_uri else cfg.tracking_uri
    if uri is not None:  # None: the default <cwd>/mlflow.db (or, on resume, the store the sweep began with)
        check_tracking_store(uri)
    if cfg.trial.dataset.startswith("npz:"):
        check_npz(cfg.trial.dataset.removeprefix("npz:"))


def _sweep(args: argparse.Namespace) -> int:
    _preflight_sweep(args)
    from sweeps.driver import sweep_command

    return sweep_command(args)


def _analyze(argv: list[str]) -> int:
    from analysis.cli import main as analyze_main

    return analyze_main(argv)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pclc", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train and score one configuration, no Ray; prints metrics as JSON")
    train.add_argument("--config", help="a YAML file of TrialConfig fields")
    train.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override one field (repeatable)")
    train.add_argument("--quiet", action="store_true", help="no per-epoch lines on stderr")
    train.set_defaults(func=_train)

    sweep = sub.add_parser("sweep", help="run a sweep file with Ray Tune (+ Optuna), tracked in MLflow")
    from sweeps.arguments import add_sweep_arguments

    add_sweep_arguments(sweep)
    sweep.set_defaults(func=_sweep)

    # Parsed by analysis.cli itself (see main): listed here for `pclc --help`.
    sub.add_parser("analyze", help="plots and a report from a sweep's MLflow runs (pclc analyze --help)")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv  # accepted anywhere: `pclc --debug train` and `pclc train --debug`
    argv = [a for a in argv if a != "--debug"]
    if argv[:1] == ["analyze"]:  # analysis owns its arguments and its error handling
        return _analyze(argv[1:] + (["--debug"] if debug else []))
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except USER_ERRORS as exc:
        if debug:
            raise
        print(f"pclc {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
