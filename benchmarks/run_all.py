"""Every benchmark in one run, one table of ratios: where the system stands at a glance.

Each benchmark runs in its own process (Ray and torch threads do not leak between them) and
hands its numbers back as JSON.

    python benchmarks/run_all.py                # full sizes (~10 min on 2 cores)
    python benchmarks/run_all.py --smoke-test   # small sizes (~2 min): checks the plumbing, ratios mean little
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent


def run(script: str, smoke: bool, out: Path) -> dict:
    cmd = [sys.executable, str(HERE / script), "--json", str(out)] + (["--smoke-test"] if smoke else [])
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{script} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return json.loads(out.read_text())


def rows(smoke: bool, tmp: Path) -> list[tuple[str, float, str, bool]]:
    """(measure, ratio, target, met) for every benchmark."""
    attack = run("attack_cost.py", smoke, tmp / "attack.json")
    evaluation = run("eval_cost.py", smoke, tmp / "eval.json")
    sweep = run("sweep_overhead.py", smoke, tmp / "sweep.json")
    over, speed = sweep["overhead"], sweep["speedup"]
    worst = max(attack["rows"], key=lambda r: r["ratio"])
    writes = run("tracking_writes.py", smoke, tmp / "writes.json")
    training = run("training_cost.py", smoke, tmp / "training.json")
    adversarial = {m: [r for r in training["rows"] if r["mode"] == m] for m in ("pgd", "trades")}
    return tracking_rows(writes) + [
        (
            f"PGD-k time / k input-gradient passes (worst, k={worst['k']})",
            attack["worst_ratio"],
            "≤ 1.30",
            attack["worst_ratio"] <= 1.30,
        ),
        (
            "APGD-CE time / k input-gradient passes (worst k)",
            attack["worst_apgd_ratio"],
            "≤ 1.30",
            attack["worst_apgd_ratio"] <= 1.30,
        ),
        *(
            (
                f"{mode.upper()} training epoch / its floor (k input-gradient passes + training passes), worst",
                max(r["floor_ratio"] for r in found),
                "≤ 1.30",
                max(r["floor_ratio"] for r in found) <= 1.30,
            )
            for mode, found in adversarial.items()
        ),
        *(
            (f"{mode.upper()} training epoch / standard epoch (k={r['k']}, {r['dataset']})", r["ratio"], "(info)", True)
            for mode, found in adversarial.items()
            for r in found
        ),
        ("final evaluation / whole trial, digits pclc train", evaluation["eval_share"], "(info)", True),
        (
            "digits pclc train wall time / 60 s",
            evaluation["train_wall_s"] / 60,
            "≤ 1.00",
            evaluation["train_wall_s"] <= 60,
        ),
        ("quickstart wall time (2 at a time) / 300 s", speed["two_s"] / 300, "≤ 1.00", speed["two_s"] <= 300),
        ("Ray Tune + MLflow trial / direct run_trial", over["ratio"], "≤ 1.10", over["ratio"] <= 1.10),
        ("whole sweep per trial / direct run_trial", over["sweep_ratio"], "(info)", True),
        ("quickstart: 2 concurrent trials vs 1 (speed-up)", speed["speedup"], "≥ 1.70", speed["speedup"] >= 1.70),
    ]


def object_store_rows(smoke: bool, tmp: Path) -> list[tuple[str, float, str, bool]]:
    """One row per dataset: its bytes in the object store as stored / as float32 (uint8 sources: 0.25)."""
    table = []
    for r in run("object_store.py", smoke, tmp / "store.json")["rows"]:
        kept_float = r["dataset"] == "digits"  # float32 at the source (values k/16): ratio 1 by design
        name = f"object store, {r['dataset']}: {r['after'] / 1e6:.1f} MB stored / {r['before'] / 1e6:.1f} MB float32"
        ratio = r["after"] / r["before"]
        table.append((name, ratio, "(info)" if kept_float else "≤ 0.30", kept_float or ratio <= 0.30))
    return table


def trial_cost_rows(smoke: bool, tmp: Path) -> list[tuple[str, float, str, bool]]:
    """The digits trial by phase (CPU seconds, one thread): the signal's share of training, and after / before."""
    digits = run("trial_cost.py", smoke, tmp / "trial_cost.json")["cases"]["digits"]
    before, after = digits["before"], digits["after"]
    share = after["signal / training"]
    return [
        ("per-epoch signal / training, digits, default cadence (CPU s)", share, "≤ 0.20", share <= 0.20),
        (
            "digits trial after / before issue 28 (CPU s, w/o data)",
            after["trial (w/o data)"] / before["trial (w/o data)"],
            "(info)",
            True,
        ),
        (
            "final evaluation: standard AutoAttack / all of it, digits",
            after["eval: autoattack"] / after["eval: total"],
            "(info)",
            True,
        ),
    ]


def tracking_rows(writes: dict) -> list[tuple[str, float, str, bool]]:
    """MLflow server writes/s, PostgreSQL over SQLite, per writer count (none when psycopg2 is missing)."""
    if "skipped" in writes:
        print(f"tracking_writes.py skipped: {writes['skipped']}", file=sys.stderr)
        return []
    rate = {(r["backend"], r["writers"]): r["writes_per_s"] for r in writes["rows"]}
    return [
        (
            f"MLflow server writes/s, PostgreSQL / SQLite, {n} writers ({rate['postgresql', n]:.1f} vs "
            f"{rate['sqlite', n]:.1f}/s)",
            ratio,
            "(info)",
            True,
        )
        for n, ratio in ((int(k), v) for k, v in writes["pg_over_sqlite"].items())
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke-test", action="store_true", help="small sizes: checks that every benchmark runs")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="pclc-bench-all-") as tmp:
        table = rows(args.smoke_test, Path(tmp)) + object_store_rows(args.smoke_test, Path(tmp))
        table += trial_cost_rows(args.smoke_test, Path(tmp))
    load = os.getloadavg()[0]
    print(
        f"\npclc-sweeps benchmarks ({'smoke test' if args.smoke_test else 'full'}; "
        f"{os.cpu_count()} CPUs, load {load:.1f})"
    )
    width = max(len(r[0]) for r in table)
    print(f"| {'measure':<{width}} | ratio | target | met |")
    print(f"| {'-' * width} | ----- | ------ | --- |")
    for name, ratio, target, met in table:
        print(f"| {name:<{width}} | {ratio:5.2f} | {target:>6} | {'yes' if met else 'NO':>3} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
