"""The `pclc` command: `train` (no Ray), `sweep` (Ray Tune), `evaluate` (full AutoAttack), `analyze` (report).

`train` scores one run; `evaluate` re-scores chosen trials' saved weights; `analyze` turns MLflow runs into a report.

The composition root of the three packages: it lives in `sweeps` (the top of the dependency
chain) so that `pclc` itself never imports Ray; Ray is imported only when `sweep` or `evaluate --address` runs.
Bad input exits with code 2 and one clear message; `--debug` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, FileNotFoundError, PermissionError)


def _train(args: argparse.Namespace) -> int:
    from pclc.config import load_config
    from pclc.experiment import Silent, run_trial
    from pclc.run_folder import (
        CHECKPOINT,
        CheckpointKeeper,
        RunFolderError,
        claim,
        discard_if_empty,
        find_interrupted,
        new_run_folder,
        resumable,
        run_stem,
    )
    from pclc.train import load_checkpoint

    if args.resume and args.overwrite:
        raise RunFolderError("--resume continues the run in out_dir, --overwrite replaces it: choose one")
    cfg = load_config(args.config, args.set)
    config = cfg.to_dict()  # out_dir aside: what a resume must match
    made = None  # a default folder made for this run: removed again if the run is refused before its first epoch
    if cfg.out_dir is None:  # one run, one folder: a new one, or with --resume the newest interrupted run of cfg
        parent, stem = Path("runs"), run_stem(cfg.dataset, cfg.model, cfg.loss)
        if args.resume:
            found = find_interrupted(parent, stem, config)
            if found is None:
                raise RunFolderError(
                    f"--resume: no interrupted run of this config under {parent.resolve()}/{stem}-*; "
                    "give its out_dir, or start it without --resume"
                )
            cfg.out_dir = str(found)
        else:
            made = new_run_folder(parent, stem)
            cfg.out_dir = str(made)
    elif args.resume:
        if problem := resumable(cfg.out_dir, config):
            raise RunFolderError(f"--resume: {problem}")
    else:
        claim(cfg.out_dir, overwrite=args.overwrite)
    resume = load_checkpoint(Path(cfg.out_dir) / CHECKPOINT) if args.resume else None
    if resume is not None:
        print(f"resuming {cfg.out_dir} after epoch {resume['epoch']}", file=sys.stderr)

    keeper = CheckpointKeeper(Silent() if args.quiet else EpochPrinter(), cfg.out_dir, config)
    try:
        final = run_trial(cfg, keeper, resume=resume)
    except BaseException:
        if made is not None:  # nothing of a run that never finished an epoch stays behind
            discard_if_empty(made)
        raise
    keeper.finished()
    print(json.dumps(final, indent=2, sort_keys=True))
    print(f"wrote {cfg.out_dir}/metrics.json", file=sys.stderr)
    return 0


class EpochPrinter:
    """`pclc train`'s reporter: one line per epoch on stderr (the final metrics go to stdout as JSON)."""

    def on_epoch(self, metrics: dict[str, float], state: object) -> None:
        shown = ", ".join(f"{k}={v:.4g}" for k, v in metrics.items())
        print(f"[epoch] {shown}", file=sys.stderr, flush=True)

    def on_final(self, evaluation: Any) -> None:
        """Which samples the numbers are about, and the evaluation's warnings, before the JSON."""
        if evaluation.samples:
            shown = "; ".join(f"{k}: {v}" for k, v in evaluation.samples.items())
            print(f"[samples] a stratified draw of the test split: {shown}", file=sys.stderr, flush=True)
        for warning in evaluation.warnings:
            print(f"[warning] {warning}", file=sys.stderr, flush=True)


def _preflight_sweep(args: argparse.Namespace) -> None:
    """What a sweep can get wrong before Ray starts, checked before Ray is even imported:
    the sweep file, an `npz:` data file (and attacks its class count cannot run), and the MLflow store
    (a dead server fails in seconds)."""
    from pclc.attacks import check_classes
    from pclc.config import ConfigError
    from pclc.contract import default_tracking_uri, normalize_tracking_uri
    from pclc.data import check_npz, npz_num_classes
    from sweeps.config import check_tracking_store, read_sweep_file
    from sweeps.preflight import local_gpu_problem
    from sweeps.storage import experiment_path, read_metadata, storage_root

    cfg = read_sweep_file(args.config, args.set, smoke=args.smoke_test)
    uri = normalize_tracking_uri(args.tracking_uri) if args.tracking_uri else cfg.tracking_uri
    if uri is None:  # a sweep being resumed goes on logging to the store it began with: probe that one
        uri = read_metadata(experiment_path(storage_root(cfg, args.storage_path), cfg.name)).get("tracking_uri")
    # None: the default <cwd>/mlflow.db (made by the sweep if missing; a file there must be a database)
    check_tracking_store(uri or default_tracking_uri())
    if args.address is None and cfg.resources.gpu:  # a local Ray offers this machine's GPUs, no more
        import torch

        if problem := local_gpu_problem(cfg, torch.cuda.device_count()):
            raise ConfigError(problem)
    if cfg.trial.dataset.startswith("npz:"):
        check_npz(cfg.trial.dataset.removeprefix("npz:"))
        classes = npz_num_classes(cfg.trial.dataset.removeprefix("npz:"))
        try:  # (the named data sets have 10 or more classes: every attack is defined for them)
            check_classes(cfg.trial.attacks, classes, where=f"dataset {cfg.trial.dataset}")
        except ValueError as exc:
            raise ConfigError(str(exc)) from None


def _sweep(args: argparse.Namespace) -> int:
    from pclc.config import ConfigError

    if args.dry_run:  # no MLflow probe, no Ray: only the sweep file and one measured epoch
        from sweeps.config import read_sweep_file
        from sweeps.estimate import dry_run

        cluster = None
        if args.cluster:  # read before the epoch is measured: a file that cannot be sized fails at once
            from sweeps.cluster_file import ClusterFileError, read_capacity

            try:
                cluster = read_capacity(args.cluster)
            except ClusterFileError as exc:
                raise ConfigError(str(exc)) from None
        return dry_run(read_sweep_file(args.config, args.set, smoke=args.smoke_test), sys.stdout, cluster)
    if args.cluster:
        raise ConfigError("--cluster FILE sizes a --dry-run to that cluster's workers; add --dry-run")
    _preflight_sweep(args)
    from sweeps.driver import sweep_command

    return sweep_command(args)


def _evaluate(args: argparse.Namespace) -> int:
    from sweeps.config import check_tracking_store
    from sweeps.finalists_command import evaluate_command, resolve_uri

    check_tracking_store(resolve_uri(args.tracking_uri))  # a dead store is named as such, before any run id
    return evaluate_command(args)


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    # light: sweeps.finalists loads torch and MLflow only when it runs
    from sweeps.finalists import DEFAULT_AA_STEPS, DEFAULT_CHUNK, DEFAULT_SQUARE_QUERIES

    ev = sub.add_parser(
        "evaluate",
        help="re-score chosen trials' weights with the full standard AutoAttack, into their MLflow runs",
        description="Re-score the saved weights of chosen trials with the reference's standard AutoAttack "
        "(APGD-CE, APGD-T, FAB-T, Square) and log finalist/* metrics into the same MLflow child runs. "
        "Resumable: finished chunks are kept in --state-dir.",
    )
    pick = ev.add_mutually_exclusive_group(required=True)
    pick.add_argument("--run-id", nargs="+", metavar="ID", help="MLflow child (trial) run ids")
    pick.add_argument(
        "--experiment", metavar="NAME", help="a sweep's experiment: re-score the --top N of its latest sweep"
    )
    ev.add_argument("--top", type=_positive, metavar="N", help="with --experiment: how many runs (default 1)")
    ev.add_argument("--objective", help="with --experiment: the metric that ranks runs (default: the sweep's headline)")
    ev.add_argument(
        "--mode", choices=("max", "min"), help="with --experiment: which end is best (default: the objective's)"
    )
    ev.add_argument("--tracking-uri", help="MLflow URI (default sqlite:///<cwd>/mlflow.db)")
    ev.add_argument(
        "--limit",
        type=_positive,
        metavar="N",
        help="score the first N of the stratified sample draw (default: all test samples)",
    )
    ev.add_argument("--eps", type=float, nargs="+", help="L∞ radii (default: each trial's headline_eps)")
    ev.add_argument("--batch-size", type=_positive, help="attack batch size (default: the trial's eval_batch_size)")
    ev.add_argument("--device", choices=("auto", "cpu", "cuda", "mps"), default="auto", help="auto: cuda → mps → cpu")
    ev.add_argument(
        "--aa-steps", type=_positive, default=DEFAULT_AA_STEPS, help="APGD / FAB iterations (%(default)s: standard)"
    )
    ev.add_argument(
        "--square-queries",
        type=_positive,
        default=DEFAULT_SQUARE_QUERIES,
        help="Square Attack queries (%(default)s: standard)",
    )
    ev.add_argument(
        "--chunk-size",
        type=_positive,
        default=DEFAULT_CHUNK,
        help="samples scored and saved at a time: the unit of resume (default %(default)s)",
    )
    ev.add_argument("--state-dir", help="where chunks are saved (default <cwd>/runs/finalists)")
    ev.add_argument("--force", action="store_true", help="score again runs that already hold this re-score")
    ev.add_argument("--address", help="Ray cluster address: one Ray task per run (default: this process, no Ray)")
    ev.set_defaults(func=_evaluate, parser=ev)


def add_sweep_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of `pclc sweep` (and so of `python -m sweeps`, which is `pclc sweep`)."""
    parser.add_argument("config", help="a sweep file, e.g. sweeps/configs/quickstart.yaml")
    parser.add_argument("--resume", action="store_true", help="continue the sweep stored under storage_path")
    parser.add_argument(
        "--retry-failed",
        action="store_true",
        help="on resume, also re-run trials that failed for a reason that would repeat (NaN loss, bad config or data)",
    )
    parser.add_argument("--address", default=None, help="Ray cluster address ('auto' joins a running cluster)")
    parser.add_argument("--tracking-uri", default=None, help="MLflow URI (default sqlite:///<cwd>/mlflow.db)")
    parser.add_argument("--storage-path", default=None, help="Ray results folder or URI (default <cwd>/ray_results)")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a sweep-file field, dotted for nesting (num_trials=4, trial.epochs=3); repeatable",
    )
    parser.add_argument(
        "--smoke-test",
        action="store_true",
        help="2 trials of 2 epochs on a data subset: checks the plumbing (--set still wins)",
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="start nothing: print the trial count, resources per trial, and the wall time and GPU-hours "
        "estimated from one epoch measured here",
    )
    parser.add_argument(
        "--cluster",
        metavar="FILE",
        help="with --dry-run: a `ray up` file (ray_cluster.yaml); trials at once are what its max_workers hold",
    )


def _analyze(argv: list[str]) -> int:
    from analysis.cli import main as analyze_main

    return analyze_main(argv)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pclc", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train and score one configuration, no Ray; prints metrics as JSON")
    train.add_argument("--config", help="a YAML file of TrialConfig fields")
    train.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override one field (repeatable)"
    )
    train.add_argument("--quiet", action="store_true", help="no per-epoch lines on stderr")
    train.add_argument(
        "--resume",
        action="store_true",
        help="continue an interrupted run from its last epoch's checkpoint: the one in out_dir, or by default "
        "the newest interrupted run of the same config under runs/",
    )
    train.add_argument(
        "--overwrite", action="store_true", help="replace the run an explicit out_dir holds (its files removed first)"
    )
    train.set_defaults(func=_train)

    sweep = sub.add_parser("sweep", help="run a sweep file with Ray Tune (+ Optuna), tracked in MLflow")
    add_sweep_arguments(sweep)
    sweep.set_defaults(func=_sweep)

    _add_evaluate(sub)

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
    if args.command == "evaluate":
        if args.experiment is None and (args.top is not None or args.objective or args.mode):
            args.parser.error("--top, --objective and --mode choose among an experiment's runs: add --experiment NAME")
        args.top = args.top or 1
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
