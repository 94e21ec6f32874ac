"""The trial config: one typed, validated model, one loader (YAML + `--set key=value`).

Every default is declared once, with its unit or allowed values. An unknown key or a bad
value is refused with the field, the value and what is allowed, before anything trains.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Collection
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from pclc.knobs import AUTHORS


class ConfigError(ValueError):
    """A config that cannot run; the message names the field, the value and what is allowed."""


# How a model is optimised, besides its loss and epochs: what a sweep may vary per trial, and what
# decides a trained substitute (sweeps.config, sweeps.preparation).
OPTIMIZATION_FIELDS: tuple[str, ...] = (
    "batch_size",
    "optimizer",
    "lr",
    "momentum",
    "weight_decay",
    "schedule",
    "milestones",
    "gamma",
    "augment",
)


# The most epochs a trial may train: far above any paper-scale run (CIFAR-10 trains 200), low enough that a
# typo (1e12) is refused rather than scheduled.
MAX_EPOCHS = 10_000


def _accepts_bool(annotation: Any) -> bool:
    """Whether a field typed `annotation` takes true/false itself (bool, Any, or a union holding one)."""
    if annotation is bool or annotation is Any:
        return True
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return any(_accepts_bool(a) for a in typing.get_args(annotation))
    return False


def _list_item(annotation: Any) -> Any:
    """The item type of a `list[X]` field (or `list[X] | None`), else None."""
    if typing.get_origin(annotation) is list:
        return (typing.get_args(annotation) or (Any,))[0]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return next((i for a in typing.get_args(annotation) if (i := _list_item(a)) is not None), None)
    return None


class StrictModel(BaseModel):
    """A config model where true/false is never a number (pydantic would read `epochs: true` as 1 epoch) and
    inf/NaN are never values (`lc_weight: .inf` is refused by the file check, not after minutes of work).

    Strict in those two ways only: `3.0` for an int and numpy ints (Optuna, Tune) still validate."""

    model_config = ConfigDict(allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_numbers(cls, v: Any, info: ValidationInfo) -> Any:
        annotation = cls.model_fields[info.field_name].annotation if info.field_name else Any
        item = _list_item(annotation)
        if isinstance(v, bool) and not _accepts_bool(annotation) and item is None:
            raise ValueError(f"{str(v).lower()} is a boolean, not a number; give a number")
        if isinstance(v, list) and item is not None and not _accepts_bool(item) and any(isinstance(x, bool) for x in v):
            raise ValueError("holds a boolean (true/false), not a number; give numbers")
        return v


class TrialConfig(StrictModel):
    """Everything one trial needs: data → model → train → evaluate."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    # --- data
    dataset: str = "digits"  # a pclc.data registry name, or npz:/abs/path.npz
    data_root: str | None = None  # folder for torchvision datasets (made absolute)
    download: bool = False  # fetch torchvision datasets into data_root when missing
    train_limit: int | None = Field(None, ge=1)  # use at most this many training samples
    # test samples scored (clean + attacks), a seeded class-stratified draw of the test split (pclc.samples); None = all
    eval_limit: int | None = Field(512, ge=1)

    # --- model
    model: str = "small_cnn"  # a pclc.models registry name

    # --- loss: the paper's knobs
    loss: str = "pclc"  # a pclc.losses registry name: ce | pc | pclc | lc (LC alone, for ablation) | label_smoothing
    margin: float = Field(AUTHORS["margin"], gt=0.0, le=1.0)  # ξ, the PC probability margin (pclc.knobs)
    lc_weight: float = Field(AUTHORS["lc_weight"], ge=0.0)  # λ, weight of the logit constraint (pclc.knobs)
    smoothing: float = Field(0.1, ge=0.0, lt=1.0)  # α of loss label_smoothing (the negative control)

    # --- training mode: what the loss is taken on (pclc.training_modes)
    training: str = "standard"  # standard | pgd (Madry PGD adversarial training) | trades (Zhang et al.)
    adv_eps: float | None = Field(None, gt=0.0, le=1.0)  # L∞ radius of the training attack; None = headline_eps
    adv_steps: int = Field(10, ge=1)  # its iterations
    adv_step_size: float | None = Field(None, gt=0.0)  # its step; None = 2.5 · adv_eps / adv_steps
    trades_beta: float = Field(6.0, ge=0.0)  # TRADES' β: weight of KL(p(x) ‖ p(x′)) (its CIFAR-10 value)

    # --- training
    epochs: int = Field(12, ge=1, le=MAX_EPOCHS)  # total epochs, warm-up included (at most MAX_EPOCHS)
    warmup_epochs: int = Field(4, ge=0, le=MAX_EPOCHS)  # CE epochs before the configured loss (ignored for ce)
    reset_optimizer: bool = True  # fresh optimizer after warm-up, as the authors do
    batch_size: int = Field(64, ge=1)
    optimizer: Literal["adam", "sgd"] = "adam"
    lr: float = Field(1e-3, gt=0.0)
    momentum: float = Field(0.9, ge=0.0, lt=1.0)  # SGD only
    weight_decay: float = Field(0.0, ge=0.0)
    schedule: Literal["none", "step", "cosine"] = "none"
    milestones: list[int] = Field(default_factory=list)  # epochs (after warm-up) for step decay
    gamma: float = Field(0.2, gt=0.0, le=1.0)  # step decay factor
    augment: bool = False  # flip/shift augmentation (natural images only)
    seed: int = 0
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"  # auto: cuda → mps → cpu
    bf16: bool = True  # bf16 autocast for training on a CUDA GPU with native bf16 (not a T4); attacks run in IEEE fp32
    channels_last: bool = False  # channels-last memory format for model and batches (faster convolutions on GPUs)
    compile: bool = False  # torch.compile the training forward pass (attacks and evaluation run the plain model)
    checkpoint_every: int = Field(1, ge=1)  # epochs between checkpoints; also at the last epoch and ASHA's rungs
    threads: int | None = Field(None, ge=1)  # torch CPU threads; None leaves torch's default

    # --- evaluation: the attack suite
    # the paper's attacks (the comparison) and standard AutoAttack (what the headline must survive)
    attacks: list[str] = Field(
        default_factory=lambda: ["fgsm", "pgd_ce", "pgd_cw", "mim", "bim", "transfer", "autoattack"]
    )
    eps: list[float] = Field(default_factory=lambda: [0.05, 0.1, 0.2])  # L∞ radii, pixels in [0, 1]
    headline_eps: float = 0.1  # eps of the headline `robust_acc`; must be in `eps`
    attack_steps: int = Field(10, ge=1)  # iterations of PGD / MIM / BIM / SPSA
    step_scale: float = Field(2.5, gt=0.0)  # step size = step_scale * eps / attack_steps
    spsa_samples: int = Field(64, ge=2)  # SPSA perturbation samples per step (even)
    eval_batch_size: int = Field(256, ge=1)
    aa_eps: list[float] | None = None  # eps at which AutoAttack-grade attacks run; None = headline_eps only
    aa_limit: int | None = Field(128, ge=1)  # AutoAttack-grade attacks score the first aa_limit of the draw; None = all
    aa_steps: int = Field(100, ge=1)  # APGD / FAB iterations (the reference's 100)
    square_queries: int = Field(
        1000, ge=1
    )  # Square queries per sample in trials; `pclc evaluate` uses the reference 5000
    # attacks whose own number is not needed, only the worst case: each runs after the others, on the points they
    # left robust, and logs no robust_acc/<attack>/… (nor a family worst that would hold it): less work, same robust_acc
    worst_case_only: list[str] = Field(default_factory=list)
    masking_eps: float = Field(0.5, gt=0.0, le=1.0)  # large eps at which PGD must reach ~0 %
    # per-epoch APGD-CE + APGD-T on the draw's first N (0 = off); sweeps that stop trials on it set more (256–512)
    epoch_eval_samples: int = Field(64, ge=0)
    epoch_attack_steps: int = Field(25, ge=1)  # their iterations; 10 overstated at 28×28 (benchmarks/epoch_signal.py)
    # the epochs that compute that signal: None = `epoch_eval_points` log-spaced epochs, always the last; a sweep
    # with a scheduler adds its rungs (it reads the signal there). Clean accuracy is scored every epoch.
    epoch_eval_at: list[int] | None = None
    # the default cadence's points: 1, √epochs, epochs (one point on 64 digits samples costs ~4 digits epochs)
    epoch_eval_points: int = Field(3, ge=1)

    # --- transfer attack: the substitute model
    substitute_model: str | None = None  # None: same architecture as `model`
    substitute_epochs: int | None = Field(None, ge=1, le=MAX_EPOCHS)  # None: same as `epochs`
    substitute_seed: int = 1000
    cache_dir: str | None = None  # keep trained substitutes here, reused across sweeps (made absolute)

    # --- output
    out_dir: str | None = None  # where metrics.json and weights go (made absolute)
    save_weights: bool = True

    @field_validator("attacks")
    @classmethod
    def _known_attacks(cls, v: list[str]) -> list[str]:
        from pclc.attacks import ATTACK_BUILDERS

        bad = [a for a in v if a not in ATTACK_BUILDERS]
        if bad:
            raise ValueError(f"unknown attack(s) {bad}; choose from: {ATTACK_BUILDERS.choices()}")
        if len(set(v)) != len(v):
            raise ValueError(f"attacks listed twice in {v}")
        return v

    @field_validator("eps")
    @classmethod
    def _eps_in_pixel_range(cls, v: list[float]) -> list[float]:
        if not v:
            raise ValueError("eps grid is empty; give at least one radius in (0, 1]")
        bad = [e for e in v if not 0.0 < e <= 1.0]
        if bad:
            raise ValueError(f"eps {bad} outside the pixel range (0, 1]")
        return sorted(set(v))

    @field_validator("data_root", "out_dir", "cache_dir")
    @classmethod
    def _absolute(cls, v: str | None) -> str | None:
        # Ray Tune runs each trial in its own working directory: resolve paths once, here.
        return None if v is None else str(Path(v).expanduser().resolve())

    @field_validator("dataset")
    @classmethod
    def _known_dataset(cls, v: str) -> str:
        from pclc.data import DATASETS

        if v.startswith("npz:"):
            return "npz:" + str(Path(v[4:]).expanduser().resolve())
        DATASETS.get(v)  # raises, naming the choices
        return v

    @field_validator("loss")
    @classmethod
    def _known_loss(cls, v: str) -> str:
        from pclc.losses import LOSSES

        LOSSES.get(v)  # raises, naming the choices
        return v

    @field_validator("training")
    @classmethod
    def _known_training(cls, v: str) -> str:
        from pclc.training_modes import TRAINING_MODES

        TRAINING_MODES.get(v)  # raises, naming the choices
        return v

    @field_validator("model", "substitute_model")
    @classmethod
    def _known_model(cls, v: str | None) -> str | None:
        from pclc.models import MODELS

        if v is not None:
            MODELS.get(v)
        return v

    @model_validator(mode="after")
    def _consistent(self) -> TrialConfig:
        if self.headline_eps not in self.eps:
            raise ValueError(f"headline_eps {self.headline_eps} is not in the eps grid {self.eps}")
        if self.adv_step_size is not None and self.adv_step_size > (self.adv_eps or self.headline_eps):
            raise ValueError(
                f"adv_step_size {self.adv_step_size} exceeds the training attack's radius "
                f"{self.adv_eps or self.headline_eps} (adv_eps): one step would cross the whole eps-ball"
            )
        if self.aa_eps is not None and not set(self.aa_eps) <= set(self.eps):
            raise ValueError(f"aa_eps {self.aa_eps} must be radii of the eps grid {self.eps}")
        if not set(self.worst_case_only) <= set(self.attacks):
            raise ValueError(f"worst_case_only {self.worst_case_only} must be attacks of the suite {self.attacks}")
        if set(self.worst_case_only) == set(self.attacks):
            raise ValueError(f"worst_case_only {self.worst_case_only} holds every attack: keep at least one exact")
        from pclc.losses import NO_WARMUP

        if self.warmup_epochs > self.epochs and self.loss not in NO_WARMUP:  # CE has no warm-up: the knob is ignored
            raise ValueError(f"warmup_epochs {self.warmup_epochs} exceeds epochs {self.epochs}")
        if self.epoch_eval_at is not None and any(e < 1 for e in self.epoch_eval_at):
            raise ValueError(f"epoch_eval_at {self.epoch_eval_at}: epochs count from 1")
        return self

    def signal_epochs(self, also: Collection[int] = ()) -> tuple[int, ...]:
        """The epochs that compute the per-epoch signal (`epoch_robust_acc`): `epoch_eval_at`, or
        `epoch_eval_points` log-spaced epochs; always the last, and `also` (a scheduler's rungs). None without
        signal samples. Epochs past `epochs` are dropped (a sweep may vary `epochs`).

        >>> TrialConfig(epochs=12).signal_epochs(), TrialConfig(epochs=100).signal_epochs(also=(3,))
        ((1, 3, 12), (1, 3, 10, 100))
        """
        if not self.epoch_eval_samples:
            return ()
        n = self.epochs
        if self.epoch_eval_at is not None:
            chosen = set(self.epoch_eval_at)
        else:
            k = self.epoch_eval_points
            chosen = {round(n ** (i / (k - 1))) for i in range(k)} if k > 1 else set()
        return tuple(sorted(e for e in chosen | set(also) | {n} if 1 <= e <= n))

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


def _explain(err: ValidationError, source: str) -> str:
    lines = [f"invalid config ({source}):"]
    for e in err.errors():
        field = ".".join(str(p) for p in e["loc"]) or "(config)"
        value = e.get("input")
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            allowed = ", ".join(TrialConfig.model_fields)
            lines.append(f"  {field}: unknown key; allowed keys: {allowed}")
        else:
            lines.append(f"  {field} = {value!r}: {msg}")
    return "\n".join(lines)


def parse_override(item: str) -> tuple[str, Any]:
    """`key=value` → (key, value), the value read as YAML (so 0.1, true, [0.1, 0.2] work)."""
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected key=value")
    key, _, raw = item.partition("=")
    key = key.strip()
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {key}: cannot read value {raw!r}: {exc}") from None
    return key, value


def read_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML mapping from `path` (safe loader), with a clear error otherwise."""
    p = Path(path)
    if p.is_dir():
        raise ConfigError(f"config file {p} is a folder, not a file; name the YAML file in it")
    if not p.is_file():
        raise ConfigError(f"config file {p} does not exist")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"config file {p} is not a text file (byte {exc.object[exc.start]:#04x} at offset {exc.start} is not "
            "UTF-8); a config is a YAML text file"
        ) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {p} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {p} must hold a mapping of key: value, not {type(data).__name__}")
    return data


def make_config(values: dict[str, Any] | None = None, *, source: str = "config") -> TrialConfig:
    """Validate a dict into a TrialConfig, raising ConfigError that names every bad field."""
    try:
        return TrialConfig(**(values or {}))
    except ValidationError as err:
        raise ConfigError(_explain(err, source)) from None


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> TrialConfig:
    """The one config loader: defaults ← YAML file ← `--set key=value` overrides."""
    values: dict[str, Any] = read_yaml(path) if path else {}
    for item in overrides or []:
        key, value = parse_override(item)
        values[key] = value
    source = ", ".join(filter(None, [str(path) if path else "", "--set" if overrides else ""])) or "defaults"
    return make_config(values, source=source)
