"""Does the quickstart decide, and in how long: `pclc sweep sweeps/configs/quickstart.yaml` as a user runs it.

Runs the shipped quickstart in a fresh folder (its own local Ray, SQLite MLflow), times it end to end, and
reads its verdict: how many comparisons ended *better*, *worse* or *equivalent* (decided) and how many
*inconclusive*, and the trials per minute. Issue 27's goal: at least one decision where one exists (the
authors' PC-LC against CE, about 8 points apart on digits) within 8 minutes on 2 cores.

    python benchmarks/quickstart_verdict.py                              # the shipped file (~7 min)
    python benchmarks/quickstart_verdict.py --set 'confirm.looks=[3,5]'  # a variant of it
    python benchmarks/quickstart_verdict.py --smoke-test                 # `pclc sweep --smoke-test` (~1 min)
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_json import write_numbers

ROOT = Path(__file__).resolve().parents[1]
BUDGET_S = 8 * 60
DECIDED = ("better", "worse", "equivalent")


def verdict_lines(stdout: str) -> list[str]:
    """The verdict's comparison sentences, as the sweep printed them."""
    tail = stdout.split("\nverdict (")[-1] if "\nverdict (" in stdout else ""
    return [line.strip() for line in tail.splitlines() if " vs " in line and " points " in line]


def word(sentence: str) -> str:
    """The comparison's word: what follows the interval's parenthesis."""
    found = re.search(r"\), (better|worse|equivalent|inconclusive)", sentence)
    return found[1] if found else "?"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a sweep-file override")
    parser.add_argument("--smoke-test", action="store_true", help="`pclc sweep --smoke-test`: checks the plumbing")
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    args = parser.parse_args(argv)
    pclc = Path(sys.executable).with_name("pclc")
    with tempfile.TemporaryDirectory(prefix="pclc-quickstart-") as tmp:
        cmd = [str(pclc), "sweep", str(ROOT / "sweeps/configs/quickstart.yaml")]
        cmd += [a for s in args.set for a in ("--set", s)] + (["--smoke-test"] if args.smoke_test else [])
        started = time.perf_counter()
        proc = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"pclc sweep failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    trials = int(re.search(r"(\d+) trials: \d+ finished", proc.stdout)[1])
    sentences = verdict_lines(proc.stdout)
    words = [word(s) for s in sentences]
    decided = sum(w in DECIDED for w in words)
    load = os.getloadavg()[0]
    print(
        f"quickstart{' (smoke test)' if args.smoke_test else ''} {' '.join(args.set)}: {wall:.0f} s wall, "
        f"{trials} trials ({60 * trials / wall:.2f} per minute), load {load:.1f} at the end"
    )
    print(
        f"verdict: {decided} of {len(words)} comparisons decided ({', '.join(words)}); budget {BUDGET_S} s: "
        f"{'met' if wall <= BUDGET_S and decided else 'NOT met'}"
    )
    for s in sentences:
        print("  " + s)
    write_numbers(args, wall_s=wall, trials=trials, decided=decided, comparisons=len(words), words=words)


if __name__ == "__main__":
    main()
