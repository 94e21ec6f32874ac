"""Does the per-epoch ASHA signal rank trials like the final AutoAttack-grade robust accuracy?

Runs an ablation sweep file's grid (variants × seeds) in-process, no Ray, and for every trial takes
the final-epoch weights and scores two per-epoch signals on the same per-epoch subset:
- before: PGD-CE, min(5, attack_steps) steps (what `epoch_robust_acc` was),
- after: per-sample worst of APGD-CE and APGD-T (top-3 targets), `epoch_attack_steps` steps (what it is),
then prints Spearman's ρ of each against the final `robust_acc` (worst case including AutoAttack), and
the science table: clean, classic-attack and AutoAttack-grade robust accuracy per variant (mean ± sd).

    python benchmarks/epoch_signal.py                                # sweeps/configs/ablation_digits.yaml
    python benchmarks/epoch_signal.py --smoke-test                   # 4 short trials, for CI
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import statistics
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def one_trial(job: tuple[dict[str, Any], str]) -> dict[str, Any]:
    """Train and evaluate one grid point; both signals on its final-epoch weights."""
    import torch

    from pclc import metrics as M
    from pclc.attacks import AttackSuite, run_suite
    from pclc.config import make_config
    from pclc.evaluate import epoch_robust_acc
    from pclc.experiment import Silent, _build, prepare, run_trial

    values, variant = job
    torch.set_num_threads(1)
    cfg = make_config(values)
    prepared = prepare(cfg)
    last: dict[str, Any] = {}

    class KeepLastState(Silent):
        def on_epoch(self, metrics: dict[str, float], state: dict[str, Any] | None) -> None:
            if state is not None:  # the last epoch always checkpoints
                last["state"] = state

    final = run_trial(cfg, KeepLastState(), prepared=prepared)
    model = _build(cfg.model, prepared.data, torch.device("cpu"))
    model.load_state_dict(last["state"]["model"])
    x = prepared.data.x_test[: cfg.eval_limit][: cfg.epoch_eval_samples]
    y = prepared.data.y_test[: cfg.eval_limit][: cfg.epoch_eval_samples]
    pgd = AttackSuite(attacks=("pgd_ce",), eps=(cfg.headline_eps,), steps=min(5, cfg.attack_steps))
    return {
        "variant": variant,
        "seed": cfg.seed,
        "margin": cfg.margin,
        "lc_weight": cfg.lc_weight,
        "before": run_suite(model, x, y, pgd).accuracy("pgd_ce", cfg.headline_eps),
        "after": epoch_robust_acc(model, x, y, eps=cfg.headline_eps, steps=cfg.epoch_attack_steps),
        **{k: final.get(k, float("nan")) for k in (M.CLEAN_ACC, M.ROBUST_ACC, M.ROBUST_ACC_CLASSIC, M.ROBUST_ACC_AA)},
    }


def label(row: dict[str, Any]) -> str:
    knobs = {
        "ce": "",
        "pc": f" ξ={row['margin']}",
        "lc": f" λ={row['lc_weight']}",
        "pclc": f" ξ={row['margin']} λ={row['lc_weight']}",
    }
    return row["variant"] + knobs.get(row["variant"], "")


def mean_sd(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * statistics.mean(values):.1f} ± {100 * sd:.1f}"


def main(argv: list[str] | None = None) -> None:
    from scipy.stats import spearmanr

    from sweeps.config import load_sweep

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", nargs="?", default=str(ROOT / "sweeps/configs/ablation_digits.yaml"))
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--smoke-test", action="store_true")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    sets = ["trial.save_weights=false"]
    if args.smoke_test:
        sets += [
            "trial.epochs=3",
            "trial.warmup_epochs=1",
            "trial.eval_limit=64",
            "trial.aa_limit=32",
            "trial.aa_steps=5",
            "trial.square_queries=50",
            "trial.substitute_epochs=1",
            "seeds=[0, 1]",
            "trial.epoch_eval_samples=32",
        ]
    sweep = load_sweep(args.config, sets)
    overrides = sweep.trial_overrides()
    if args.smoke_test:
        overrides = [o for o in overrides if o["variant"] in ("ce", "pclc")][:4]
    base = sweep.trial.model_dump()
    jobs = [({**base, **{k: v for k, v in o.items() if k != "variant"}}, o["variant"]) for o in overrides]
    with mp.get_context("spawn").Pool(args.processes) as pool:
        rows = pool.map(one_trial, jobs)

    truth = [r["robust_acc"] for r in rows]
    rho = {k: float(spearmanr([r[k] for r in rows], truth).statistic) for k in ("before", "after")}
    print(f"{sweep.name}: {len(rows)} trials; final-epoch signal vs final robust_acc (AutoAttack-grade worst case)")
    print("| per-epoch signal | Spearman ρ |")
    print("| --- | --- |")
    print(f"| before: PGD-CE, {min(5, sweep.trial.attack_steps)} steps | {rho['before']:.3f} |")
    print(f"| after: APGD-CE + APGD-T (top-3), {sweep.trial.epoch_attack_steps} steps | {rho['after']:.3f} |")
    print("\n| variant | n | clean % | classic attacks % | AutoAttack-grade % | headline robust_acc % |")
    print("| --- | --- | --- | --- | --- | --- |")
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(label(r), []).append(r)
    for name, rs in groups.items():
        cols = [mean_sd([r[k] for r in rs]) for k in ("clean_acc", "robust_acc_classic", "robust_acc_aa", "robust_acc")]
        print(f"| {name} | {len(rs)} | " + " | ".join(cols) + " |")
    if args.json:
        args.json.write_text(json.dumps({"spearman": rho, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
