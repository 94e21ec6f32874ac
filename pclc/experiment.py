"""One trial, top to bottom: data → model → train → evaluate. The only entry a sweep calls.

`run_trial` knows nothing of Ray or MLflow: it hands every epoch's metrics and a checkpoint to a
`Reporter` (`on_epoch(metrics, state)`), and the final evaluation once at the end (`on_final(evaluation)`).
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from pclc import metrics as M
from pclc.attacks import AttackSuite, check_classes
from pclc.config import OPTIMIZATION_FIELDS, ConfigError, TrialConfig
from pclc.contract import OUTCOMES_ARTIFACT, WEIGHTS_FILE
from pclc.data import Dataset, load_stored, pixels
from pclc.evaluate import epoch_left_out, epoch_robust_acc, evaluate
from pclc.files import write_atomic
from pclc.gpu import fp32_precision
from pclc.models import create_model
from pclc.outcomes import Outcomes
from pclc.samples import DESIGN, SampleDraw, draw
from pclc.train import (
    Trainer,
    accuracy,
    checkpoint_due,
    fit,
    isolated_rng,
    load_checkpoint,
    save_checkpoint,
    seed_everything,
    select_device,
)


@dataclass(frozen=True)
class Evaluation:
    """A trial's end: the final metrics, the evaluation's plain-English warnings, the resolved config, and
    the per-sample outcomes its accuracies are the means of (test-split indices of `config`'s dataset)."""

    metrics: dict[str, float]
    warnings: list[str]
    config: dict[str, Any]
    outcomes: Outcomes | None = None  # written beside metrics.json (the sweep: logged with evaluation.json)
    samples: dict[str, str] | None = None  # per subset, its size and class coverage (SampleDraw.coverage)

    def to_dict(self) -> dict[str, Any]:
        """The payload of metrics.json (and of the sweep's evaluation.json); the outcomes have their own file."""
        payload: dict[str, Any] = {"metrics": self.metrics, "warnings": self.warnings, "config": self.config}
        if self.samples is not None:
            payload["samples"] = {"design": DESIGN, **self.samples}
        return payload


class Reporter(Protocol):
    """Where `run_trial` reports: each trained epoch with a checkpoint, then the final evaluation once."""

    def on_epoch(self, metrics: dict[str, float], state: dict[str, Any] | None) -> None:
        """An epoch's metrics, with the trainer's checkpoint when one is due (`checkpoint_every`, the
        scheduler's rungs, the last epoch), else None."""

    def on_final(self, evaluation: Evaluation) -> None: ...


class Silent:
    """A reporter that keeps nothing: for callers that only want `run_trial`'s return value."""

    def on_epoch(self, metrics: dict[str, float], state: dict[str, Any] | None) -> None:
        pass

    def on_final(self, evaluation: Evaluation) -> None:
        pass


class OutputError(ValueError):
    """The output folder cannot take files: found before training, not after it."""


def ensure_writable(folder: str | Path) -> None:
    """Prove now, not after hours of training, that `folder` can be made and take a file.

    Leaves no trace: folders made for the probe are removed again (a run that fails later on
    bad data must not leave an empty output folder behind).
    """
    path = Path(folder)
    first_new = next((p for p in [path, *path.parents] if not p.exists() and p.parent.exists()), None)
    for attempt in range(10):
        try:
            path.mkdir(parents=True, exist_ok=True)
            probe = path / ".pclc-write-probe"
            probe.write_bytes(b"\0" * 4096)
            probe.unlink()
            break
        except OSError as exc:
            if isinstance(exc, FileNotFoundError) and attempt < 9:
                continue  # a trial beside it cleaned up a parent it had just made: again
            raise OutputError(f"output folder {path} cannot be written ({exc.strerror or exc})") from None
    if first_new is not None:  # bottom-up and only while empty: a trial beside it may be making its own folder there
        for made in [path, *path.parents]:
            try:
                made.rmdir()
            except OSError:
                break
            if made == first_new:
                break


@dataclass
class Prepared:
    """What every trial of a sweep shares: the data and the substitute for transfer attacks."""

    data: Dataset
    substitute_state: dict[str, torch.Tensor] | None = None


def substitute_config(cfg: TrialConfig) -> TrialConfig:
    """The substitute: a separately seeded CE model (same architecture unless one is named)."""
    return cfg.model_copy(
        update={
            "model": cfg.substitute_model or cfg.model,
            "epochs": cfg.substitute_epochs or cfg.epochs,
            "seed": cfg.substitute_seed,
            "loss": "ce",
            "warmup_epochs": 0,
            "training": "standard",  # an adversarially trained substitute would be a different transfer attack
        }
    )


# What `fit` reads from the substitute's config (its loss is CE: no margin, weight or warm-up).
SUBSTITUTE_FIELDS = ("model", "epochs", "seed", *OPTIMIZATION_FIELDS, "bf16", "device")


def substitute_key(cfg: TrialConfig) -> dict[str, Any]:
    """Every field that decides the substitute's weights besides its data: two configs with the same key share one."""
    sub = substitute_config(cfg)
    return {k: getattr(sub, k) for k in SUBSTITUTE_FIELDS}


def _substitute_cache_path(cfg: TrialConfig) -> Path | None:
    if cfg.cache_dir is None:
        return None
    key = {
        "dataset": cfg.dataset,
        "data_root": cfg.data_root,
        "train_limit": cfg.train_limit,
        "samples": DESIGN,  # the training split it learnt from: drawn by content since stratified-v1
        **substitute_key(cfg),
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()
    return Path(cfg.cache_dir) / f"substitute-{key['model']}-{digest[:12]}.pt"


def train_substitute(cfg: TrialConfig, data: Dataset) -> dict[str, torch.Tensor]:
    """Train (or load from `cache_dir`) the transfer-attack substitute once; return its weights."""
    cache = _substitute_cache_path(cfg)
    if cache is not None and cache.is_file():
        return load_checkpoint(cache)
    sub = substitute_config(cfg)
    device = select_device(sub.device)
    seed_everything(sub.seed)
    model = _build(sub.model, data, device)
    fit(sub, model, data.to(device), device)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        save_checkpoint(state, cache)
    return state


def prepare(cfg: TrialConfig) -> Prepared:
    """Load the data and train the substitute: done once per sweep, shared with every trial.

    The data stays as stored (uint8 images: a quarter of float32's bytes in the object store and
    the cache); each trial makes float pixels batch by batch on its own device.
    """
    data = load_stored(cfg.dataset, data_root=cfg.data_root, download=cfg.download)
    if cfg.train_limit is not None:
        data = data.subset_train(cfg.train_limit, seed=0)
    substitute = None
    if "transfer" in cfg.attacks:
        with isolated_rng():  # the substitute seeds itself; the caller's random draws stay its own
            substitute = train_substitute(cfg, data)
    return Prepared(data=data, substitute_state=substitute)


def _build(name: str, data: Dataset, device: torch.device) -> nn.Module:
    """The model `name`, shaped for `data`, on `device`."""
    return create_model(name, input_shape=data.input_shape, num_classes=data.num_classes).to(device)


def draw_subsets(cfg: TrialConfig, data: Dataset) -> SampleDraw:
    """The evaluated, AutoAttack and per-epoch subsets of `data`'s test split that `cfg`'s limits ask for."""
    return draw(
        data.x_test,
        data.y_test,
        num_classes=data.num_classes,
        eval_limit=cfg.eval_limit,
        aa_limit=cfg.aa_limit,
        epoch_samples=cfg.epoch_eval_samples,
    )


def gpu_hours(device: torch.device, seconds: float) -> float:
    """GPU-hours of `seconds` on `device`, counting a whole GPU (a sweep scales it to the trial's share): 0 on a CPU."""
    return seconds / 3600.0 if device.type == "cuda" else 0.0


def run_trial(
    cfg: TrialConfig,
    reporter: Reporter,
    *,
    prepared: Prepared | None = None,
    resume: dict[str, Any] | None = None,
    device: str | None = None,
    checkpoint_at: Collection[int] = (),
    signal_at: Collection[int] = (),
) -> dict[str, float]:
    """Train and score one configuration; returns the final metrics (DESIGN.md schema).

    `device` overrides `cfg.device` (a sweep passes "cpu" for a trial given no GPU); `checkpoint_at`
    adds epochs that report a checkpoint to `cfg.checkpoint_every` and the last one, and `signal_at` epochs
    that compute the per-epoch signal to its cadence (`TrialConfig.signal_epochs`): a scheduler's rungs.
    """
    # ---- set-up: device, seeds, threads, data shared by the sweep
    started = time.perf_counter()
    if cfg.out_dir:
        ensure_writable(cfg.out_dir)
    device = select_device(device or cfg.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick the fastest kernels (not bit-reproducible)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    prepared = prepared or prepare(cfg)
    try:  # an attack the data's class count cannot run is refused now, not after training
        check_classes(cfg.attacks, prepared.data.num_classes, where=f"dataset {cfg.dataset}")
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    generator = seed_everything(cfg.seed)  # after preparing: the same draws whoever prepared, whatever the attacks
    # the samples every number is about: a stratified draw of the test split, the same for every trial (pclc.samples)
    drawn = draw_subsets(cfg, prepared.data)
    data = prepared.data.to(device)
    picked = torch.as_tensor(drawn.evaluated, device=device)
    x_eval, y_eval = pixels(data.x_test[picked]), data.y_test[picked]
    x_epoch, y_epoch = x_eval[: drawn.epoch], y_eval[: drawn.epoch]

    # ---- model (and the substitute for transfer attacks)
    model = _build(cfg.model, data, device)
    substitute = None
    if prepared.substitute_state is not None:
        with isolated_rng():  # its random init is overwritten at once: it must not consume the trial's draws
            substitute = _build(cfg.substitute_model or cfg.model, data, device)
        substitute.load_state_dict(prepared.substitute_state)

    # ---- train: CE warm-up, then the configured loss; report every epoch, with a checkpoint when due
    trainer = Trainer(cfg, model, device, generator)
    if resume is not None:
        trainer.load_state_dict(resume)
    train_loss = float("nan")
    # The cost counts every attempt: what earlier ones spent up to their last checkpoint travels in it.
    spent = {
        M.TRIAL_SECONDS: 0.0,
        M.TRAIN_SECONDS: 0.0,
        M.SIGNAL_SECONDS: 0.0,
        M.GPU_HOURS: 0.0,
        **(resume or {}).get("spent", {}),
    }
    train_seconds = spent[M.TRAIN_SECONDS]  # training epochs and their per-epoch signal, not the reporting
    signal_seconds = spent[M.SIGNAL_SECONDS]  # of which the per-epoch signal

    def cost(now: float) -> dict[str, float]:
        return {
            M.TRIAL_SECONDS: spent[M.TRIAL_SECONDS] + now - started,
            M.TRAIN_SECONDS: train_seconds,
            M.SIGNAL_SECONDS: signal_seconds,
            M.GPU_HOURS: spent[M.GPU_HOURS] + gpu_hours(device, now - started),
        }

    # the per-epoch signal costs 2–3× an epoch's training: it runs where it is read (a cadence, a scheduler's rungs)
    signal_epochs = set(cfg.signal_epochs(also=signal_at)) if len(y_epoch) else set()
    while trainer.epoch < cfg.epochs:
        epoch_started = time.perf_counter()
        train_loss = trainer.train_epoch(data.x_train, data.y_train)
        with fp32_precision():  # scored in IEEE fp32, as the final evaluation is
            epoch_metrics = {
                M.EPOCH: trainer.epoch,
                M.TRAIN_LOSS: train_loss,
                M.CLEAN_ACC: accuracy(model, x_eval, y_eval),
            }
            if trainer.epoch in signal_epochs:
                signal_started = time.perf_counter()
                epoch_metrics[M.EPOCH_ROBUST_ACC] = epoch_robust_acc(
                    model, x_epoch, y_epoch, eps=cfg.headline_eps, steps=cfg.epoch_attack_steps
                )
                signal_seconds += time.perf_counter() - signal_started
        # the cost so far, every epoch: a trial the scheduler stops early still says what it cost
        train_seconds += time.perf_counter() - epoch_started
        so_far = cost(time.perf_counter())
        epoch_metrics[M.TRAIN_SECONDS] = so_far[M.TRAIN_SECONDS]
        epoch_metrics[M.SIGNAL_SECONDS] = so_far[M.SIGNAL_SECONDS]
        epoch_metrics[M.GPU_HOURS] = so_far[M.GPU_HOURS]
        due = checkpoint_due(trainer.epoch, every=cfg.checkpoint_every, last=cfg.epochs, also=checkpoint_at)
        reporter.on_epoch(epoch_metrics, {**trainer.state_dict(), "spent": so_far} if due else None)

    # ---- evaluate: the attack suite, robust accuracy, probability gap, masking checks (IEEE fp32, no TF32)
    evaluation_started = time.perf_counter()
    with fp32_precision():
        result = evaluate(
            model,
            x_eval,
            y_eval,
            AttackSuite.from_config(cfg),
            substitute=substitute,
            headline_eps=cfg.headline_eps,
            masking_eps=cfg.masking_eps,
        )
    now = time.perf_counter()
    final = {**result.metrics, M.EPOCH: cfg.epochs, **cost(now), M.EVAL_SECONDS: now - evaluation_started}
    if math.isfinite(train_loss):  # a trial resumed after its last epoch trained no epoch here
        final[M.TRAIN_LOSS] = train_loss
    # the samples scored, as test-split indices with their labels: what paired tests and per-class tables read
    outcomes = (
        result.outcomes.at(dataset=cfg.dataset, indices=drawn.evaluated, labels=drawn.labels)
        if result.outcomes is not None
        else None
    )
    # the per-epoch signal's own left-out attacks (the evaluation names those of the final suite)
    signal = [str(x) for x in epoch_left_out(data.num_classes)] if cfg.epoch_eval_samples else []
    warnings = [*drawn.warnings, *signal, *result.warnings]
    evaluation = Evaluation(
        metrics=final, warnings=warnings, config=cfg.to_dict(), outcomes=outcomes, samples=drawn.coverage()
    )
    if cfg.out_dir:
        write_outputs(cfg, evaluation, model)
    reporter.on_final(evaluation)
    return final


def write_outputs(cfg: TrialConfig, evaluation: Evaluation, model: nn.Module) -> Path:
    """metrics.json (metrics, warnings, resolved config, the samples drawn), the per-sample outcomes.json and,
    if asked, the final weights."""
    out = Path(cfg.out_dir)  # type: ignore[arg-type]
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / "metrics.json", json.dumps(evaluation.to_dict(), indent=2, sort_keys=True))
    if evaluation.outcomes is not None:
        write_atomic(out / OUTCOMES_ARTIFACT, evaluation.outcomes.to_json())
    if cfg.save_weights:
        save_checkpoint({k: v.detach().cpu() for k, v in model.state_dict().items()}, out / WEIGHTS_FILE)
    return out
