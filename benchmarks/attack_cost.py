"""What PGD and APGD cost on top of their gradient computations: wall time of a k-step attack over
k input-gradient passes.

The floor of any k-step gradient attack is k forward+backward passes of the batch with respect to the
input only (model frozen). `pclc.attacks.craft` should stay within 1.3× that floor, for advertorch's PGD
and for the reference APGD-CE (pyautoattack) alike; the `raw` column is advertorch called directly on a
model whose weights still require grad, for comparison.

    python benchmarks/attack_cost.py                 # CIFAR-sized CNN, batch 256, k = 5, 10, 20
    python benchmarks/attack_cost.py --smoke-test    # seconds, for CI
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from bench_json import write_numbers
from torch import nn

from pclc.attacks import AttackSuite, build_pgd_ce, craft, frozen

TARGET_RATIO = 1.3


def cnn(channels: int, size: int, width: int, classes: int = 10) -> nn.Module:
    """A fixed VGG-style CNN (random weights: timing does not need training)."""
    return nn.Sequential(
        nn.Conv2d(channels, width, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(width, width, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(width, 2 * width, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(2 * width * (size // 4) ** 2, 128),
        nn.ReLU(),
        nn.Linear(128, classes),
    )


def interleaved(fns: dict[str, Callable[[], object]], repeats: int, device: torch.device) -> dict[str, float]:
    """Median wall time (s) of each fn, timed round-robin so machine-load drift hits all of them alike."""

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    times: dict[str, list[float]] = {name: [] for name in fns}
    for fn in fns.values():  # warm-up
        fn()
    for _ in range(repeats):
        for name, fn in fns.items():
            sync()
            start = time.perf_counter()
            fn()
            sync()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def floor(model: nn.Module, x: torch.Tensor, y: torch.Tensor, k: int) -> None:
    """k forward+backward passes w.r.t. the input only: what any k-step gradient attack must pay."""
    loss_fn = nn.CrossEntropyLoss(reduction="sum")
    with frozen(model):
        for _ in range(k):
            xi = x.detach().requires_grad_()
            torch.autograd.grad(loss_fn(model(xi), y), xi)


def raw_advertorch(model: nn.Module, x: torch.Tensor, y: torch.Tensor, suite: AttackSuite) -> None:
    """advertorch's PGD called directly, weights still requiring grad (what a naive caller gets)."""
    model.eval()
    build_pgd_ce(model, 8 / 255, suite).perturb(x, y)
    model.zero_grad(set_to_none=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, nargs="+", default=[5, 10, 20], help="PGD iterations k")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--size", type=int, default=32, help="image side (3 channels)")
    parser.add_argument("--width", type=int, default=32, help="CNN width (filters of the first conv)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--smoke-test", action="store_true", help="tiny sizes, for CI")
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    args = parser.parse_args(argv)
    if args.smoke_test:
        args.steps, args.batch, args.size, args.width, args.repeats = [2, 4], 16, 8, 8, 3
    if args.threads:
        torch.set_num_threads(args.threads)

    device = torch.device(args.device)
    torch.manual_seed(0)
    model = cnn(3, args.size, args.width).to(device).eval()
    x = torch.rand(args.batch, 3, args.size, args.size, device=device)
    with torch.no_grad():  # labels = the model's own predictions: every point starts correct, so APGD
        y = model(x).argmax(dim=1)  # attacks all of them (it skips points that are already misclassified)

    print(
        f"device {device}, threads {torch.get_num_threads()}, batch {args.batch}×3×{args.size}×{args.size}, "
        f"width {args.width}, median of {args.repeats}"
    )
    print(
        f"{'k':>4} {'floor ms':>10} {'craft ms':>10} {'ratio':>7} {'raw ms':>10} {'raw ratio':>9} "
        f"{'apgd ms':>10} {'apgd ratio':>10}"
    )
    worst, worst_apgd, rows = 0.0, 0.0, []
    for k in args.steps:
        # APGD-CE with k iterations: k gradient passes plus one at the start, on every point (all start correct).
        suite = AttackSuite(attacks=("pgd_ce",), eps=(8 / 255,), steps=k, batch_size=args.batch, aa_steps=k)
        t = interleaved(
            {
                "floor": lambda k=k: floor(model, x, y, k),
                "craft": lambda suite=suite: craft("pgd_ce", model, x, y, eps=8 / 255, suite=suite),
                "raw": lambda suite=suite: raw_advertorch(model, x, y, suite),
                "apgd": lambda suite=suite: craft("apgd_ce", model, x, y, eps=8 / 255, suite=suite),
            },
            args.repeats,
            device,
        )
        t_floor, t_craft, t_raw, t_apgd = t["floor"], t["craft"], t["raw"], t["apgd"]
        ratio, apgd_ratio = t_craft / t_floor, t_apgd / t_floor
        worst, worst_apgd = max(worst, ratio), max(worst_apgd, apgd_ratio)
        rows.append(
            {
                "k": k,
                "floor_s": t_floor,
                "craft_s": t_craft,
                "raw_s": t_raw,
                "ratio": ratio,
                "apgd_s": t_apgd,
                "apgd_ratio": apgd_ratio,
            }
        )
        print(
            f"{k:>4} {1e3 * t_floor:>10.1f} {1e3 * t_craft:>10.1f} {ratio:>7.2f} {1e3 * t_raw:>10.1f} "
            f"{t_raw / t_floor:>9.2f} {1e3 * t_apgd:>10.1f} {apgd_ratio:>10.2f}"
        )
    note = " (smoke sizes: a fixed ~0.5 ms per call dominates, the ratio means little)" if args.smoke_test else ""
    for name, value in (("PGD craft", worst), ("APGD-CE craft", worst_apgd)):
        verdict = "within" if value <= TARGET_RATIO else "ABOVE"
        print(f"worst {name}/floor ratio {value:.2f}: {verdict} the {TARGET_RATIO} target{note}")
    write_numbers(args, worst_ratio=worst, worst_apgd_ratio=worst_apgd, target=TARGET_RATIO, rows=rows)


if __name__ == "__main__":
    main()
