"""Where a trial's time goes, phase by phase, before and after issue 28: one table per case, one thread.

Phases: data (load the split, train the transfer substitute: once per sweep), training (the epochs alone),
the per-epoch signal (`epoch_robust_acc` at its cadence), the final evaluation by attack (`eval_seconds/*`,
summed over eps; `checks` = the clean pass, the masking probe and the zero-gradient check), and reporting
and tracking (metrics.json, outcomes.json and the weights, then the epochs' and the final metrics and the
evaluation artifact logged to a fresh SQLite MLflow store with `MlflowClient.log_batch`; the sweep's own
per-trial overhead is benchmarks/sweep_overhead.py's). Each case runs the same trial twice, interleaved:

- before: the signal at every epoch on 128 samples, each of its attacks on every point (the code before issue 28);
- after: the signal at the default cadence (`epoch_eval_points` log-spaced epochs, always the last) on the
  default `epoch_eval_samples`, each attack after the first only on the points the earlier ones left robust
  (the same worst case).

Seconds are the process's CPU seconds by default (`--clock cpu`: one thread, so what a trial costs even on a
busy machine; the standard AutoAttack's parts are its seconds split by the shares the reference's own wall clock
gives them). `--clock wall` for wall time.

Cases (nothing to download): digits/small_cnn (8×8), digits28/lenet5 (28×28), and a CIFAR-shaped case:
resnet20 on generated 32×32×3 data (class templates + noise, an `npz:` file written here) at reduced sizes.

    python benchmarks/trial_cost.py                 # the three cases (~10 min on 2 cores)
    python benchmarks/trial_cost.py --case digits   # one
    python benchmarks/trial_cost.py --smoke-test    # digits at tiny sizes (seconds), for CI
"""

from __future__ import annotations

import argparse
import functools
import json
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from bench_json import write_numbers

import pclc.experiment as experiment
from pclc import metrics as M
from pclc.config import make_config
from pclc.evaluate import epoch_robust_acc

SMALL_AA = {"aa_limit": 32, "eval_limit": 128, "epoch_eval_samples": 32, "square_queries": 300}
CASES: dict[str, dict[str, Any]] = {
    "digits": {"dataset": "digits", "model": "small_cnn"},  # the defaults of `pclc train`
    "digits28": {"dataset": "digits28", "model": "lenet5", "epochs": 6, "warmup_epochs": 2},
    "cifar_shaped": {  # CIFAR's radii (2/255, 4/255, 8/255): at 0.1 nothing of 32×32 survives, and nothing is measured
        "model": "resnet20",
        "epochs": 6,
        "warmup_epochs": 2,
        "substitute_epochs": 1,
        "eps": [0.00784, 0.0157, 0.0314],
        "headline_eps": 0.0314,
        "masking_eps": 0.25,
        **SMALL_AA,
    },
}
SMOKE = {
    "epochs": 3,
    "warmup_epochs": 1,
    "eval_limit": 32,
    "aa_limit": 16,
    "aa_steps": 5,
    "square_queries": 20,
    "substitute_epochs": 1,
    "epoch_eval_samples": 16,
    "epoch_attack_steps": 3,
    "train_limit": 300,
}


def cifar_shaped(path: Path, *, train: int, test: int, seed: int = 0) -> str:
    """An `npz:` data set shaped like CIFAR-10: 32×32×3 uint8, 10 classes, a smooth template per class plus
    noise (learnable, so the attacks have something to break)."""
    rng = np.random.default_rng(seed)
    templates = rng.uniform(0, 255, size=(10, 4, 4, 3))
    templates = templates.repeat(8, axis=1).repeat(8, axis=2)  # 32×32 blocks

    def split(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = np.arange(n) % 10
        x = 0.6 * templates[y] + rng.normal(0, 50, size=(n, 32, 32, 3)) + 50
        return np.clip(x, 0, 255).astype(np.uint8), y.astype(np.int64)

    x_train, y_train = split(train)
    x_test, y_test = split(test)
    np.savez(path, x=x_train, y=y_train, x_test=x_test, y_test=y_test)
    return f"npz:{path}"


class Tracked:
    """A reporter that does what a trial's reporter does with its numbers: the epochs' metrics and the final
    ones, and the evaluation as an artifact, logged to a real MLflow store; timed."""

    def __init__(self, uri: str) -> None:
        from mlflow import MlflowClient

        self.client = MlflowClient(uri)
        experiment_id = self.client.create_experiment(f"cost-{time.time_ns()}")
        self.run_id = self.client.create_run(experiment_id).info.run_id
        self.seconds = 0.0

    def _log(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(M.to_mlflow(k), float(v), now, step) for k, v in metrics.items()]
        for i in range(0, len(batch), 1000):
            self.client.log_batch(self.run_id, metrics=batch[i : i + 1000])

    def on_epoch(self, metrics: dict[str, float], state: dict[str, Any] | None) -> None:
        started = time.perf_counter()
        self._log(metrics, int(metrics[M.EPOCH]))
        self.seconds += time.perf_counter() - started

    def on_final(self, evaluation: experiment.Evaluation) -> None:
        started = time.perf_counter()
        self._log(evaluation.metrics, int(evaluation.metrics[M.EPOCH]))
        self.client.log_dict(self.run_id, evaluation.to_dict(), "evaluation.json")
        if evaluation.outcomes is not None:
            self.client.log_text(self.run_id, evaluation.outcomes.to_json(), "outcomes.json")
        self.seconds += time.perf_counter() - started


def run(cfg_fields: dict[str, Any], *, before: bool, tmp: Path) -> dict[str, float]:
    """One trial, timed by phase; `before` runs the signal as it ran before issue 28."""
    fields = dict(cfg_fields, threads=1, out_dir=str(tmp / f"out-{time.time_ns()}"))
    if before:  # the signal as before issue 28: every epoch, on 128 samples (unless the case sets its own)
        fields["epoch_eval_at"] = list(range(1, fields.get("epochs", 12) + 1))
        fields.setdefault("epoch_eval_samples", 128)
    cfg = make_config(fields)
    torch.set_num_threads(1)
    started = time.perf_counter()
    prepared = experiment.prepare(cfg)
    data_s = time.perf_counter() - started
    reporter = Tracked(f"sqlite:///{tmp}/mlflow.db")
    signal = epoch_robust_acc
    if before:  # every attack of the signal on every point, as before
        experiment.epoch_robust_acc = functools.partial(epoch_robust_acc, cascade=False)  # type: ignore[assignment]
    written = experiment.write_outputs
    wrote = [0.0]

    def timed_write(*args: Any, **kw: Any) -> Path:
        t = time.perf_counter()
        try:
            return written(*args, **kw)
        finally:
            wrote[0] += time.perf_counter() - t

    experiment.write_outputs = timed_write  # type: ignore[assignment]
    try:
        final = experiment.run_trial(cfg, reporter, prepared=prepared)
    finally:
        experiment.epoch_robust_acc, experiment.write_outputs = signal, written  # type: ignore[assignment]
    row: dict[str, float] = defaultdict(float)
    row["data"] = data_s
    row["training"] = final[M.TRAIN_SECONDS] - final[M.SIGNAL_SECONDS]
    row["signal"] = final[M.SIGNAL_SECONDS]
    prefix = M.EVAL_SECONDS + "/"
    for key, value in final.items():
        if key.startswith(prefix):
            part = key[len(prefix) :].split("/")[0]
            row["eval: " + ("checks" if part in ("clean", "masking_probe", "zero_gradients") else part)] += value
    # the ensemble's parts come by the reference's own (wall) clock: shown as their shares of its seconds here
    parts = [k for k in row if k.startswith("eval: autoattack.")]
    clocked = sum(row[k] for k in parts)
    for k in parts:
        row[k] *= row.get("eval: autoattack", 0.0) / clocked if clocked else 0.0
    row["eval: total"] = final[M.EVAL_SECONDS]
    row["reporting+tracking"] = reporter.seconds + wrote[0]
    row["trial (w/o data)"] = final[M.TRIAL_SECONDS] + reporter.seconds
    row["signal / training"] = row["signal"] / max(row["training"], 1e-9)
    row["robust_acc"] = final[M.ROBUST_ACC]
    return dict(row)


def table(name: str, before: dict[str, float], after: dict[str, float]) -> str:
    lines = [f"### {name}", "", "| phase | before (s) | after (s) | after / before |", "| --- | --- | --- | --- |"]
    keys = list(dict.fromkeys([*before, *after]))
    for key in keys:
        b, a = before.get(key, 0.0), after.get(key, 0.0)
        ratio = f"{a / b:.2f}" if b > 0 and key not in ("robust_acc", "signal / training") else ""
        fmt = "{:.2f}" if key in ("robust_acc", "signal / training") else "{:.1f}"
        lines.append(f"| {key} | {fmt.format(b)} | {fmt.format(a)} | {ratio} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--case", action="append", choices=sorted(CASES), help="repeatable; default: all three")
    parser.add_argument("--smoke-test", action="store_true", help="tiny sizes, for CI")
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    parser.add_argument(
        "--clock",
        choices=("cpu", "wall"),
        default="cpu",
        help="cpu (default): the process's CPU seconds, what a one-thread trial costs whatever else the machine runs",
    )
    args = parser.parse_args(argv)
    if args.clock == "cpu":  # every phase timer of the trial code reads time.perf_counter: make it this process's CPU
        time.perf_counter = time.process_time  # type: ignore[assignment]
    numbers: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="pclc-trial-cost-") as tmp_name:
        tmp = Path(tmp_name)
        for name in args.case or (["digits"] if args.smoke_test else list(CASES)):
            fields = dict(CASES[name])
            if name == "cifar_shaped":
                sizes = (300, 64) if args.smoke_test else (2000, 256)
                fields["dataset"] = cifar_shaped(tmp / "cifar_shaped.npz", train=sizes[0], test=sizes[1])
            if args.smoke_test:
                fields.update(SMOKE)
            before = run(fields, before=True, tmp=tmp)
            after = run(fields, before=False, tmp=tmp)
            print(table(name, before, after), "\n", flush=True)
            numbers[name] = {"before": before, "after": after}
    write_numbers(args, cases=numbers)
    if args.json is None:
        print(json.dumps({k: {p: round(v["after"][p], 2) for p in ("signal / training",)} for k, v in numbers.items()}))


if __name__ == "__main__":
    main()
