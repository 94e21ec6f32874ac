"""What the AutoAttack-grade evaluation costs a trial: `pclc train` on digits with the default suite.

Runs the laptop command exactly as a user would (`pclc train`, defaults: 12 epochs, the paper's
attacks at three eps, standard AutoAttack on a seeded 128-sample subset at the headline eps) and
reports its wall time (target < 60 s on 2 cores) and the final evaluation's share of the trial.

    python benchmarks/eval_cost.py                 # the default digits trial (~1 min)
    python benchmarks/eval_cost.py --smoke-test    # 2 epochs, tiny subsets (seconds), for CI
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_json import write_numbers

TRAIN_TARGET_S = 60.0
SMOKE = [
    "epochs=2",
    "warmup_epochs=1",
    "eval_limit=32",
    "aa_limit=16",
    "aa_steps=5",
    "square_queries=50",
    "substitute_epochs=1",
    "epoch_eval_samples=16",
]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke-test", action="store_true", help="tiny sizes, for CI")
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    args = parser.parse_args(argv)
    pclc = Path(sys.executable).with_name("pclc")
    with tempfile.TemporaryDirectory(prefix="pclc-eval-cost-") as tmp:
        sets = [f"out_dir={tmp}/run", "save_weights=false"] + (SMOKE if args.smoke_test else [])
        cmd = [str(pclc), "train", "--quiet"] + [a for s in sets for a in ("--set", s)]
        start = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wall = time.perf_counter() - start
        if proc.returncode != 0:
            raise SystemExit(f"pclc train failed:\n{proc.stderr[-3000:]}")
        metrics = json.loads((Path(tmp) / "run" / "metrics.json").read_text())["metrics"]
    share = metrics["eval_seconds"] / metrics["trial_seconds"]
    print(
        f"digits `pclc train` (default suite{', smoke sizes' if args.smoke_test else ''}): {wall:.1f} s wall, "
        f"trial {metrics['trial_seconds']:.1f} s, evaluation {metrics['eval_seconds']:.1f} s ({share:.0%})"
    )
    print(
        f"  clean {metrics['clean_acc']:.3f}, classic worst {metrics.get('robust_acc_classic', float('nan')):.3f}, "
        f"AutoAttack-grade worst {metrics.get('robust_acc_aa', float('nan')):.3f}, headline {metrics['robust_acc']:.3f}"
    )
    write_numbers(
        args,
        train_wall_s=wall,
        trial_s=metrics["trial_seconds"],
        eval_s=metrics["eval_seconds"],
        eval_share=share,
        target_s=TRAIN_TARGET_S,
    )


if __name__ == "__main__":
    main()
