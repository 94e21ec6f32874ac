"""What Ray Tune + MLflow cost, and what running trials side by side buys, in one run.

1. overhead: a trial's wall time under Ray Tune (Tune's `time_total_s`: the trainable from start to
   end, with MLflow logging and a checkpoint every epoch) divided by the same `run_trial` called
   directly in this process, for ~20 s trials. Target ≤ 1.10. Also printed: the whole sequential
   K-trial sweep's wall time per trial, which adds the once-per-sweep costs (worker start-up,
   Tuner and MLflow set-up, the final reconcile) spread over K trials.
2. speed-up: the quickstart's wall time (the search and its confirmation) with 1 concurrent trial divided
   by its time with 2. Target ≥ 1.7 on 2 cores. Its time with 2 is the quickstart's budget (≤ 300 s).

Both sides share the data/substitute prepared once (outside the timings), Ray is started once
(outside the timings), and every trial uses one torch thread.

    python benchmarks/sweep_overhead.py               # ~20 s trials, the full quickstart (~6 min)
    python benchmarks/sweep_overhead.py --smoke-test  # small trials, the smoke-test quickstart (~1 min)
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
OVERHEAD_TARGET, SPEEDUP_TARGET = 1.10, 1.7

# A ~20 s trial on one CPU thread: digits, 30 epochs, the full white-box suite plus transfer, 20 steps, and
# APGD-CE (a sweep only optimises numbers an AutoAttack-grade attack checked).
TRIAL_20S: dict[str, Any] = {
    "dataset": "digits",
    "model": "small_cnn",
    "epochs": 30,
    "warmup_epochs": 5,
    "eval_limit": None,
    "attacks": ["fgsm", "pgd_ce", "pgd_cw", "mim", "bim", "transfer", "apgd_ce"],
    "eps": [0.05, 0.1, 0.2],
    "headline_eps": 0.1,
    "attack_steps": 20,
    "substitute_epochs": 5,
    "save_weights": False,
    "threads": 1,
}
TRIAL_SMOKE: dict[str, Any] = {  # the plumbing only (the suite runs it): a few seconds per trial
    **TRIAL_20S,
    "epochs": 2,
    "warmup_epochs": 1,
    "train_limit": 256,
    "eval_limit": 64,
    "attack_steps": 3,
    "aa_steps": 5,
    "aa_limit": 16,
    "epoch_attack_steps": 2,
    "substitute_epochs": 1,
}


def _sweep(name: str, work: Path, trial: dict[str, Any], seeds: list[int]) -> Any:
    from sweeps.config import parse_sweep

    return parse_sweep(
        {
            "name": name,
            "mode": "ablation",
            "trial": trial,
            "variants": [{"loss": "pclc"}],
            "seeds": seeds,
            "reference": [],  # k trials of one configuration: no reference arms beside them
            "max_concurrent": 1,
            "max_retries": 0,
            "storage_path": str(work / "ray_results"),
            "tracking_uri": f"sqlite:///{work / 'mlflow.db'}",
        },
        source=name,
    )


def overhead(work: Path, trial: dict[str, Any], k: int) -> dict[str, float]:
    """Per-trial wall time in a sequential K-trial sweep / the same trials run directly."""
    import torch

    from pclc.experiment import Silent, prepare, run_trial
    from sweeps.driver import run_sweep

    cfg = _sweep("overhead", work, trial, seeds=list(range(k)))
    prepared = prepare(cfg.trial)
    torch.set_num_threads(1)

    def direct() -> float:
        times = []
        for seed in range(k):
            t0 = time.perf_counter()
            run_trial(cfg.trial_config({"seed": seed}), Silent(), prepared=prepared)
            times.append(time.perf_counter() - t0)
        return statistics.mean(times)

    before = direct()  # direct runs before and after the sweep: the machine's load drifts
    t0 = time.perf_counter()
    result = run_sweep(cfg, prepared=prepared, out=io.StringIO())
    sweep_per_trial = (time.perf_counter() - t0) / k
    after = direct()
    assert len(result.finished) == k, "a benchmark trial failed"
    trial = statistics.mean(r.metrics["time_total_s"] for r in result.grid)
    plain = statistics.mean([before, after])
    return {
        "direct_s": plain,
        "tune_trial_s": trial,
        "ratio": trial / plain,
        "sweep_per_trial_s": sweep_per_trial,
        "sweep_ratio": sweep_per_trial / plain,
        "k": float(k),
    }


def speedup(work: Path, smoke: bool) -> dict[str, float]:
    """The quickstart with 1 trial at a time, then 2 at a time (same trials: same seeds and points)."""
    from pclc.experiment import prepare
    from sweeps.config import read_sweep_file
    from sweeps.driver import run_sweep

    times: dict[int, float] = {}
    prepared = None
    for concurrent in (1, 2):
        cfg = read_sweep_file(
            ROOT / "sweeps/configs/quickstart.yaml",
            [
                f"name=quickstart-c{concurrent}",
                f"max_concurrent={concurrent}",
                f"storage_path={work / 'ray_results'}",
                f"tracking_uri=sqlite:///{work / 'mlflow.db'}",
            ],
            smoke=smoke,  # `pclc sweep --smoke-test`'s quickstart: 2 short trials
        )
        prepared = prepared or prepare(cfg.trial)
        t0 = time.perf_counter()
        result = run_sweep(cfg, prepared=prepared, out=io.StringIO())
        times[concurrent] = time.perf_counter() - t0
        assert len(result.finished) == cfg.num_trials, "a quickstart trial failed"
        assert len(result.finished) + len(result.confirmed) == len(result.trials), "a confirmation trial failed"
    # the whole quickstart: its search and the confirmation of the best and the references on fresh seeds
    return {"one_s": times[1], "two_s": times[2], "speedup": times[1] / times[2], "trials": float(len(result.trials))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke-test", action="store_true", help="small trials, a 2-trial quickstart")
    parser.add_argument("--trials", type=int, default=3, help="K, trials in the sequential overhead sweep")
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    args = parser.parse_args(argv)

    from sweeps.driver import ray_session, set_tune_environment

    with ray_session("local", num_cpus=2, log_to_driver=False):
        set_tune_environment()
        with tempfile.TemporaryDirectory(prefix="pclc-bench-") as tmp:
            work = Path(tmp)
            trial = TRIAL_SMOKE if args.smoke_test else TRIAL_20S
            over = overhead(work / "overhead", trial, 2 if args.smoke_test else args.trials)
            speed = speedup(work / "speedup", args.smoke_test)

    def verdict(ok: bool) -> str:  # smoke trials are too short for the targets: fixed costs dominate
        return "(smoke test: not judged)" if args.smoke_test else ("OK" if ok else "MISSED")

    cpus = os.cpu_count()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"\nsweep overhead ({'smoke test' if args.smoke_test else 'full'}; {cpus} CPUs, load {load:.1f}):")
    print(
        f"  Ray Tune trial / direct run_trial : {over['tune_trial_s']:.2f} s / {over['direct_s']:.2f} s = "
        f"{over['ratio']:.3f}   (target ≤ {OVERHEAD_TARGET})  {verdict(over['ratio'] <= OVERHEAD_TARGET)}"
    )
    print(
        f"  whole sweep per trial / direct    : {over['sweep_per_trial_s']:.2f} s / {over['direct_s']:.2f} s = "
        f"{over['sweep_ratio']:.3f}   (start-up and wrap-up spread over {int(over['k'])} trials)"
    )
    print(
        f"  quickstart speed-up, 2 vs 1 trial : {speed['one_s']:.1f} s / {speed['two_s']:.1f} s = "
        f"{speed['speedup']:.2f}x  over {int(speed['trials'])} trials  (target ≥ {SPEEDUP_TARGET})  "
        f"{verdict(speed['speedup'] >= SPEEDUP_TARGET)}"
    )
    if args.json:
        args.json.write_text(json.dumps({"overhead": over, "speedup": speed, "smoke_test": args.smoke_test}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
