"""`pclc evaluate`, the command: choose the finalists (by run id, or the top N of a sweep), re-score each with
`sweeps.finalists.evaluate_run` (here one after the other, or one Ray task each with `--address`), print the
table. The re-scoring itself (chunked AutoAttack with resume, logging into the trial's run) is `sweeps.finalists`.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from pclc import contract as C
from pclc import metrics as M
from sweeps.finalists import ATTACK, ChunkSaved, Finalist, FinalistError, Settings, attempt, attempt_on_worker

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

_QUIET_MLFLOW = {**C.MLFLOW_CLIENT_ENV, "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}  # the one retry policy


# --------------------------------------------------------------------------- choosing runs


def resolve_uri(uri: str | None) -> str:
    """The store to read: `pclc analyze`'s rules (default `sqlite:///<abs cwd>/mlflow.db`, which must exist)."""
    from analysis.load import AnalysisError, resolve_tracking_uri

    try:
        return resolve_tracking_uri(uri)
    except AnalysisError as err:
        raise FinalistError(str(err)) from None


def select_runs(
    client: MlflowClient,
    *,
    run_ids: list[str] | None = None,
    experiment: str | None = None,
    top: int = 1,
    objective: str | None = None,
    mode: str | None = None,
) -> list[str]:
    """The run ids to re-score: `run_ids` as given (each checked to exist), or the `top` finished trial
    runs of `experiment`'s latest sweep by `objective` (default: the sweep's headline and its direction)."""
    from mlflow.exceptions import MlflowException

    from sweeps.tracking import retrying

    if run_ids:
        ids = list(dict.fromkeys(run_ids))
        missing = []
        for rid in ids:
            try:
                retrying(client.get_run, rid)
            except MlflowException:
                missing.append(rid)
        if missing:
            where = client.tracking_uri
            raise FinalistError(
                f"no run {', '.join(map(repr, missing))} in {where}; pass trial (child) run ids "
                "as MLflow shows them, or choose with --experiment NAME --top N"
            )
        return ids
    if experiment is None:
        raise FinalistError("choose the runs: --run-id ID [ID …], or --experiment NAME --top N")
    from analysis.load import AnalysisError, canonical_metric, load_sweep

    try:
        sweep = load_sweep(experiment, tracking_uri=client.tracking_uri, client=client)
    except AnalysisError as err:
        raise FinalistError(str(err)) from None
    metric = canonical_metric(objective) if objective else sweep.headline
    direction = mode or sweep.direction(metric)
    trials = sweep.trials
    if metric not in trials:
        known = ", ".join(m for m in sweep.metrics if not m.startswith(M.FINALIST_PREFIX)) or "none"
        raise FinalistError(
            f"no finished trial of experiment {experiment!r} has the metric {metric!r}; its metrics: {known}"
        )
    ranked = trials[trials[metric].notna()].sort_values(metric, ascending=direction == "min", kind="stable")
    if ranked.empty:
        raise FinalistError(f"experiment {experiment!r} has no finished trial with a value of {metric!r}")
    return list(ranked["run_id"][:top])


# --------------------------------------------------------------------------- many runs


def run_local(run_ids: Iterable[str], settings: Settings) -> list[Finalist]:
    """One run after the other in this process (no Ray)."""
    return [attempt(rid, settings) for rid in run_ids]


def run_ray(run_ids: list[str], settings: Settings, address: str) -> list[Finalist]:
    """One Ray task per run (a GPU each when the cluster has GPUs and the device allows), gathered."""
    import ray

    try:
        ray.init(address=address, include_dashboard=False, configure_logging=False)
    except (ConnectionError, RuntimeError) as exc:
        raise FinalistError(f"cannot join the Ray cluster at --address {address!r}: {exc}") from None
    try:
        gpus = float(ray.cluster_resources().get("GPU", 0))
        num_gpus = 1 if gpus >= 1 and settings.device in ("auto", "cuda") else 0
        task = ray.remote(num_cpus=1, num_gpus=num_gpus)(attempt_on_worker)
        refs = [task.remote(rid, settings) for rid in run_ids]
        out = []
        for rid, ref in zip(run_ids, refs):
            try:
                out.append(ray.get(ref))
            except Exception as exc:  # the task crashed (after Ray's retries): keep the others' results
                first = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
                out.append(Finalist(run_id=rid, error=f"run {rid}: the Ray task failed: {first[:400]}"))
        return out
    finally:
        ray.shutdown()


def _fmt(v: float | None) -> str:
    return "-" if v is None or not math.isfinite(v) else f"{v:.4f}"


def format_table(results: list[Finalist]) -> str:
    """run id, trial config, trial robust_acc, finalist robust_acc (headline eps), other eps, n."""
    extra = sorted({e for r in results if not r.error for e in r.eps if e != r.headline_eps})
    head = [
        "run",
        "config",
        "trial robust_acc",
        "finalist robust_acc",
        *(f"finalist eps={M.format_eps(e)}" for e in extra),
        "n",
        "note",
    ]
    rows = []
    for r in results:
        if r.error:
            rows.append([r.run_id, "-", "-", "-", *("-" for _ in extra), "-", "failed (see above)"])
            continue
        per_eps = [r.metrics.get(M.finalist_key(M.robust_key(ATTACK, e))) if e in r.eps else None for e in extra]
        note = (
            "already scored" if r.skipped else (f"resumed ({r.chunks_reused} chunks kept)" if r.chunks_reused else "")
        )
        rows.append(
            [
                r.run_id,
                r.label,
                _fmt(r.trial_robust_acc),
                _fmt(r.metrics.get(M.finalist_key(M.ROBUST_ACC))),
                *map(_fmt, per_eps),
                str(r.n),
                note,
            ]
        )
    widths = [max(len(str(c)) for c in col) for col in zip(head, *rows)]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip() for row in [head, *rows]]
    return "\n".join(lines)


# --------------------------------------------------------------------------- the command


def settings_from_args(args: argparse.Namespace, tracking_uri: str) -> Settings:
    if args.eps is not None:
        bad = [e for e in args.eps if not 0.0 < e <= 1.0]
        if bad:
            raise FinalistError(f"--eps {bad}: every eps must be in (0, 1] (pixels in [0, 1])")
    state_dir = (
        Path(args.state_dir).expanduser().resolve() if args.state_dir else Path.cwd().resolve() / "runs" / "finalists"
    )
    return Settings(
        tracking_uri=tracking_uri,
        limit=args.limit,
        eps=tuple(args.eps) if args.eps else None,
        batch_size=args.batch_size,
        device=args.device,
        chunk_size=args.chunk_size,
        aa_steps=args.aa_steps,
        square_queries=args.square_queries,
        state_dir=str(state_dir),
        force=args.force,
    )


def evaluate_command(args: argparse.Namespace, *, on_chunk: ChunkSaved | None = None) -> int:
    """`pclc evaluate`: choose, re-score, log, print the table; 2 when a run could not be re-scored.
    `on_chunk`: see ChunkSaved (a test's fault seam; the `pclc` command passes none)."""
    added = [k for k in _QUIET_MLFLOW if k not in os.environ]  # for this call only: main may run in a longer process
    os.environ.update({k: _QUIET_MLFLOW[k] for k in added})
    try:
        return _evaluate(args, on_chunk)
    finally:
        for k in added:
            os.environ.pop(k, None)


def _evaluate(args: argparse.Namespace, on_chunk: ChunkSaved | None) -> int:
    from mlflow.tracking import MlflowClient

    uri = resolve_uri(args.tracking_uri)
    settings = replace(settings_from_args(args, uri), on_chunk=on_chunk)
    client = MlflowClient(uri)
    run_ids = select_runs(
        client, run_ids=args.run_id, experiment=args.experiment, top=args.top, objective=args.objective, mode=args.mode
    )
    if not args.run_id:
        print(f"pclc evaluate: the top {len(run_ids)} of {args.experiment!r}: {', '.join(run_ids)}", file=sys.stderr)
    results = run_ray(run_ids, settings, args.address) if args.address else run_local(run_ids, settings)
    for r in results:
        if r.error:
            print(f"pclc evaluate: error: {r.error}", file=sys.stderr)
    print(format_table(results))
    print(f"state files: {settings.state_dir}", file=sys.stderr)
    failed = [r.run_id for r in results if r.error]
    if failed:
        print(
            f"pclc evaluate: error: {len(failed)} of {len(results)} runs could not be re-scored: {', '.join(failed)}",
            file=sys.stderr,
        )
        return 2
    return 0
