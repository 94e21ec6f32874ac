"""Do the two maintained AutoAttack packages agree? Standard AutoAttack from `pyautoattack` (the
reference code, what pclc uses) and from `torchattacks` on the same trained models and samples.

pclc pins pyautoattack; torchattacks is not a dependency (it pins requests 2.25, which breaks MLflow's
stack), so install it by hand, without its dependencies, to run this:

    pip install --no-deps torchattacks==3.5.1
    python benchmarks/aa_agreement.py                  # CE and PC-LC on digits, 256 samples, eps 0.1
    python benchmarks/aa_agreement.py --smoke-test     # tiny, seconds
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from pclc.attacks import AttackSuite, frozen, run_suite
from pclc.config import make_config
from pclc.experiment import _build, prepare
from pclc.train import Trainer, seed_everything


def trained(loss: str, epochs: int, data) -> torch.nn.Module:
    cfg = make_config(
        {
            "loss": loss,
            "epochs": epochs,
            "warmup_epochs": min(3, epochs - 1),
            "lr": 0.003,
            "attacks": ["fgsm"],
            "seed": 0,
            "device": "cpu",
        }
    )
    generator = seed_everything(cfg.seed)
    model = _build(cfg.model, data, torch.device("cpu"))
    trainer = Trainer(cfg, model, torch.device("cpu"), generator)
    while trainer.epoch < cfg.epochs:
        trainer.train_epoch(data.x_train, data.y_train)
    return model.eval()


def torchattacks_standard(model, x, y, eps: float, queries: int) -> float:
    import torchattacks

    attack = torchattacks.AutoAttack(model, norm="Linf", eps=eps, version="standard", n_classes=10, seed=0)
    for sub in attack._autoattack.attacks:  # the same Square budget on both sides
        if type(sub).__name__ == "Square":
            sub.n_queries = queries
    with frozen(model):
        x_adv = attack(x, y)
        return (model(x_adv).argmax(1) == y).float().mean().item()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke-test", action="store_true")
    parser.add_argument("--n", type=int, default=256, help="test samples")
    parser.add_argument("--eps", type=float, default=0.1)
    parser.add_argument("--queries", type=int, default=5000, help="Square queries (the reference's 5000)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    if args.smoke_test:
        args.n, args.queries = 32, 100
    torch.set_num_threads(1)
    data = prepare(make_config({"attacks": ["fgsm"]})).data
    x, y = data.x_test[: args.n], data.y_test[: args.n]
    rows = []
    print(f"standard AutoAttack, eps {args.eps}, {args.n} digits test samples, Square {args.queries} queries")
    print(f"| {'model':<6} | pyautoattack | torchattacks | difference (points) |")
    print("| ------ | ------------ | ------------ | ------------------- |")
    for loss in ("ce", "pclc"):
        model = trained(loss, 2 if args.smoke_test else 10, data)
        suite = AttackSuite(attacks=("autoattack",), eps=(args.eps,), aa_limit=None, square_queries=args.queries)
        t = time.perf_counter()
        ours = run_suite(model, x, y, suite).accuracy("autoattack", args.eps)
        t_ours, t = time.perf_counter() - t, time.perf_counter()
        theirs = torchattacks_standard(model, x, y, args.eps, args.queries)
        t_theirs = time.perf_counter() - t
        rows.append(
            {
                "model": loss,
                "pyautoattack": ours,
                "torchattacks": theirs,
                "pyautoattack_s": t_ours,
                "torchattacks_s": t_theirs,
            }
        )
        print(f"| {loss:<6} | {100 * ours:>11.1f}% | {100 * theirs:>11.1f}% | {100 * (theirs - ours):>+19.1f} |")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "eps": args.eps, "n": args.n}, indent=2))


if __name__ == "__main__":
    main()
