"""`--smoke-test`: the sweep file's shrink, as `--set` overrides (a few trials of a few epochs on a small subset),
so every entry point checks its plumbing in minutes. Applied by `sweeps.config.read_sweep_file`."""

from __future__ import annotations

import json
from typing import Any, Protocol


class SweepConfig(Protocol):
    """What the shrink reads of a `sweeps.config.SweepConfig` (named by shape: config imports this module)."""

    name: str
    mode: str
    space: dict[str, Any]
    initial_points: list[dict[str, Any]]
    variants: list[dict[str, Any]]
    seeds: list[int]
    confirm: Any

    def references(self) -> list[dict[str, Any]]: ...

    def planned_seeds(self) -> list[int]: ...


SMOKE_EPOCHS = 2  # `--smoke-test`: epochs per trial (a searched training length: this or one more)


def smoke_overrides(cfg: SweepConfig, *, epochs: int = SMOKE_EPOCHS) -> list[str]:
    """`--smoke-test`: 2 trials of 2 epochs on a small subset, cheap attacks, and a confirmation of the best on
    2 fresh seeds against the first reference: checks the plumbing."""
    sets = [
        f"trial.epochs={epochs}",
        "trial.warmup_epochs=1",
        "trial.train_limit=256",
        "trial.eval_limit=64",
        "trial.epoch_eval_samples=32",
        "trial.attack_steps=2",
        "trial.spsa_samples=8",
        "trial.substitute_epochs=1",
        "scheduler=none",
        f"name={cfg.name}-smoke",
        # AutoAttack still runs (the objective needs it), on a few samples with a small budget
        "trial.aa_limit=16",
        "trial.aa_steps=5",
        "trial.square_queries=50",
        "trial.epoch_attack_steps=2",
    ]
    refs = cfg.references()
    if refs:  # the first reference alone: the verdict's plumbing, at a third of the cost
        sets.append(f"reference={json.dumps(refs[:1])}")
    if cfg.mode == "optimize" and cfg.confirm.top:
        sets += ["confirm.top=1", f"confirm.seeds={json.dumps(cfg.planned_seeds()[:2])}", "confirm.looks=null"]
    if cfg.mode == "optimize":
        sets.append("num_trials=2")
        shrunk = {
            "epochs": (f"{{type: int, low: {epochs}, high: {epochs + 1}}}", epochs),
            "warmup_epochs": ("{type: int, low: 1, high: 2}", 1),
        }
        points = [dict(p) for p in cfg.initial_points]
        for key, (space, value) in shrunk.items():
            if key in cfg.space:
                sets.append(f"space.{key}={space}")
                points = [{**p, key: value} if key in p else p for p in points]
        if points != cfg.initial_points:
            sets.append(f"initial_points={json.dumps(points)}")
    else:
        first = [
            {k: (v[0] if isinstance(v, list) and k != "milestones" else v) for k, v in var.items()}
            for var in cfg.variants[:2]
        ]
        sets += [f"variants={json.dumps(first)}", f"seeds=[{cfg.seeds[0]}]", "looks=null"]
    return sets
