"""What adversarial training costs: a training epoch in each mode over a standard epoch, and over its floor.

A k-step inner attack cannot cost less than k forward+backward passes of the batch with respect to the
input, so the floor of a PGD-AT epoch is k such passes over every batch plus one standard epoch, and that
of a TRADES epoch k passes plus two standard epochs (its loss runs the clean and the adversarial batch).
`ratio` = epoch time / standard epoch time; `floor ratio` = epoch time / its floor, both measured here:
near 1 means the inner attack adds nothing of its own (the runner's set-up per batch, the seed draw, the
frozen model).

    python benchmarks/training_cost.py                 # digits (8×8) and digits28 (28×28), k = 5, 10
    python benchmarks/training_cost.py --smoke-test    # seconds, for CI
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from attack_cost import floor, interleaved
from bench_json import write_numbers

from pclc.attacks import frozen
from pclc.config import make_config
from pclc.data import batches, load_dataset, pixels
from pclc.models import create_model
from pclc.train import Trainer, seed_everything

MODES = ("standard", "pgd", "trades")
TRAINING_PASSES = {"standard": 1, "pgd": 1, "trades": 2}  # standard epochs' worth of training passes in a mode


def trainer(dataset, mode: str, k: int, batch: int) -> Trainer:
    cfg = make_config(
        {"loss": "ce", "training": mode, "adv_steps": k, "adv_eps": 0.1, "batch_size": batch, "epochs": 1000}
    )
    model = create_model(cfg.model, input_shape=dataset.input_shape, num_classes=dataset.num_classes)
    return Trainer(cfg, model, torch.device("cpu"), seed_everything(0))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, nargs="+", default=[5, 10], help="inner-attack iterations k")
    parser.add_argument("--datasets", nargs="+", default=["digits", "digits28"])
    parser.add_argument("--samples", type=int, default=512, help="training samples per timed epoch")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--smoke-test", action="store_true", help="tiny sizes, for CI")
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    args = parser.parse_args(argv)
    if args.smoke_test:
        args.steps, args.datasets, args.samples, args.repeats = [2], ["digits"], 128, 2
    torch.set_num_threads(args.threads)

    print(
        f"small_cnn, CE, batch {args.batch}, {args.samples} samples per epoch, threads {args.threads}, median of {args.repeats}"
    )
    print(f"{'dataset':<9} {'mode':<8} {'k':>3} {'epoch s':>9} {'ratio':>7} {'floor s':>8} {'floor ratio':>11}")
    rows = []
    for name in args.datasets:
        data = load_dataset(name)
        x, y = pixels(data.x_train[: args.samples]), data.y_train[: args.samples]
        for k in args.steps:
            trainers = {mode: trainer(data, mode, k, args.batch) for mode in MODES}
            model = trainers["standard"].model

            def gradients(k: int = k, x: torch.Tensor = x, y: torch.Tensor = y, model=model) -> None:
                with frozen(model):
                    for xb, yb in batches(x, y, args.batch, shuffle=False):
                        floor(model, xb, yb, k)

            fns = {m: (lambda t=t, x=x, y=y: t.train_epoch(x, y)) for m, t in trainers.items()}
            times = interleaved({**fns, "gradients": gradients}, args.repeats, torch.device("cpu"))
            for mode in MODES:
                seconds = times[mode]
                least = TRAINING_PASSES[mode] * times["standard"] + (times["gradients"] if mode != "standard" else 0)
                row = {
                    "dataset": name,
                    "mode": mode,
                    "k": k,
                    "epoch_s": seconds,
                    "ratio": seconds / times["standard"],
                    "floor_s": least,
                    "floor_ratio": seconds / least,
                }
                rows.append(row)
                print(
                    f"{name:<9} {mode:<8} {k:>3} {seconds:>9.3f} {row['ratio']:>7.2f} {least:>8.3f} "
                    f"{row['floor_ratio']:>11.2f}"
                )
    adversarial = [r for r in rows if r["mode"] != "standard"]
    worst = max(adversarial, key=lambda r: r["floor_ratio"])
    print(f"worst floor ratio: {worst['floor_ratio']:.2f} ({worst['dataset']}, {worst['mode']}, k={worst['k']})")
    write_numbers(args, rows=rows, worst_floor_ratio=worst["floor_ratio"], worst=worst)


if __name__ == "__main__":
    main()
