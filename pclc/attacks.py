"""The adversarial attack suite: advertorch attacks behind one spec and one runner.

advertorch 0.2.3 predates torch 1.9, so its compatibility shim lives here, and only here,
installed before the first `import advertorch`. Every attack is L∞, untargeted, clipped to
[0, 1] and run in fp32 on a frozen model (no weight gradients, eval mode).
"""

from __future__ import annotations

import collections.abc
import contextlib
import importlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterator, Protocol

import torch
from torch import nn

from pclc.registry import Registry

if TYPE_CHECKING:
    from pclc.config import TrialConfig


# ------------------------------------------------------------------ advertorch shim (torch 2.x)
def zero_gradients(x: Any) -> None:
    """Detach and zero the `.grad` of a tensor, or of every tensor in a (nested) iterable.

    torch < 1.9 shipped this in `torch.autograd.gradcheck`; advertorch imports it from there.
    """
    if isinstance(x, torch.Tensor):
        if x.grad is not None:
            x.grad.detach_()
            x.grad.zero_()
    elif isinstance(x, collections.abc.Iterable) and not isinstance(x, (str, bytes)):
        for item in x:
            zero_gradients(item)


def _install_advertorch_shim() -> None:
    """Give torch 2.x what advertorch 0.2.3 imports; leaves a torch that has it untouched.

    The other advertorch code paths this suite uses (FGSM, PGD, BIM, MIM, SPSA, CWLoss, MarginalLoss)
    were read and run on torch 2.x: they need no other change as long as eps / step sizes are Python
    floats (their `batch_multiply` refuses ints), which the builders below guarantee.
    """
    # `torch.autograd.gradcheck` as an attribute is the *function*; patch the module itself.
    module = importlib.import_module("torch.autograd.gradcheck")
    if not hasattr(module, "zero_gradients"):
        module.zero_gradients = zero_gradients  # type: ignore[attr-defined]


_install_advertorch_shim()

from advertorch.attacks import (  # noqa: E402  (the shim must run first)
    GradientSignAttack,
    LinfBasicIterativeAttack,
    LinfPGDAttack,
    LinfSPSAAttack,
    MomentumIterativeAttack,
)
from advertorch.loss import LogitMarginLoss  # noqa: E402

CLIP = (0.0, 1.0)  # pixels live in [0, 1]: no normalisation layer, as in the authors' code
SPSA_DELTA = 0.01  # SPSA finite-difference scale, in pixels (advertorch's default)
SPSA_CHUNK = 32  # SPSA perturbation samples evaluated per forward (memory ∝ chunk × batch)
TRANSFER_ATTACKS = frozenset({"transfer"})  # crafted on the substitute model, scored on the target


class Attack(Protocol):
    """What the runner needs from an attack (every advertorch attack is one)."""

    def perturb(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor: ...


# ------------------------------------------------------------------ the suite spec
def _config_default(name: str) -> Any:
    # Defaults are declared once, in TrialConfig; import late so this module stays light.
    from pclc.config import TrialConfig

    return TrialConfig.model_fields[name].default


@dataclass(frozen=True)
class AttackSuite:
    """Which attacks, at which L∞ radii, with which budget. Step size = step_scale · eps / steps.

    Example:
        >>> suite = AttackSuite(attacks=("fgsm", "pgd_ce"), eps=(0.1, 0.2), steps=10)
        >>> suite.step_size(0.2)
        0.05
    """

    attacks: tuple[str, ...]
    eps: tuple[float, ...]
    steps: int = field(default_factory=lambda: _config_default("attack_steps"))
    step_scale: float = field(default_factory=lambda: _config_default("step_scale"))
    spsa_samples: int = field(default_factory=lambda: _config_default("spsa_samples"))
    batch_size: int = field(default_factory=lambda: _config_default("eval_batch_size"))
    seed: int = 0  # every craft() call starts from this seed: results don't depend on attack order

    def __post_init__(self) -> None:
        object.__setattr__(self, "attacks", tuple(self.attacks))
        object.__setattr__(self, "eps", tuple(sorted({float(e) for e in self.eps})))
        unknown = [a for a in self.attacks if a not in ATTACK_BUILDERS]
        if unknown:
            raise ValueError(f"unknown attack(s) {unknown}; choose from {ATTACK_BUILDERS.names()}")
        if len(set(self.attacks)) != len(self.attacks):
            raise ValueError(f"attacks listed twice in {list(self.attacks)}")
        if not self.eps or not all(0.0 < e <= 1.0 for e in self.eps):
            raise ValueError(f"eps {list(self.eps)} must be non-empty radii in (0, 1] (pixels in [0, 1])")
        for name, lo in (("steps", 1), ("spsa_samples", 1), ("batch_size", 1)):
            if getattr(self, name) < lo:
                raise ValueError(f"{name} = {getattr(self, name)} must be ≥ {lo}")
        if self.step_scale <= 0:
            raise ValueError(f"step_scale = {self.step_scale} must be > 0")

    @classmethod
    def from_config(cls, cfg: TrialConfig) -> AttackSuite:
        """The suite a trial config asks for (fields attacks, eps, attack_steps, step_scale, …)."""
        return cls(
            attacks=tuple(cfg.attacks),
            eps=tuple(cfg.eps),
            steps=cfg.attack_steps,
            step_scale=cfg.step_scale,
            spsa_samples=cfg.spsa_samples,
            batch_size=cfg.eval_batch_size,
            seed=cfg.seed,
        )

    def step_size(self, eps: float) -> float:
        return float(self.step_scale * eps / self.steps)


# ------------------------------------------------------------------ attack builders
ATTACK_BUILDERS: Registry[Attack] = Registry("attack")
"""name → builder(model, eps, suite) returning an object with `perturb(x, y)`."""


def _ce() -> nn.Module:
    # Sum, not mean: the per-sample gradient does not shrink with the batch size (advertorch's default).
    return nn.CrossEntropyLoss(reduction="sum")


@ATTACK_BUILDERS.register("fgsm")
def build_fgsm(model: nn.Module, eps: float, suite: AttackSuite) -> Attack:
    """One signed-gradient step of size eps on the CE loss (Goodfellow et al.)."""
    return GradientSignAttack(model, loss_fn=_ce(), eps=float(eps), clip_min=CLIP[0], clip_max=CLIP[1])


def _pgd(model: nn.Module, eps: float, suite: AttackSuite, loss_fn: nn.Module) -> Attack:
    return LinfPGDAttack(
        model, loss_fn=loss_fn, eps=float(eps), nb_iter=suite.steps, eps_iter=suite.step_size(eps),
        rand_init=True, clip_min=CLIP[0], clip_max=CLIP[1],
    )


@ATTACK_BUILDERS.register("pgd_ce")
def build_pgd_ce(model: nn.Module, eps: float, suite: AttackSuite) -> Attack:
    """PGD with random start on the CE loss (Madry et al.)."""
    return _pgd(model, eps, suite, _ce())


# The transfer attack is PGD-CE on the substitute: the runner passes the substitute as `model`.
ATTACK_BUILDERS.register("transfer")(build_pgd_ce)


@ATTACK_BUILDERS.register("pgd_cw")
def build_pgd_cw(model: nn.Module, eps: float, suite: AttackSuite) -> Attack:
    """PGD with random start on the CW margin loss max_{j≠y} z_j − z_y: immune to a saturated softmax.

    Not advertorch's `CWLoss`: it clamps at margin + 50 ≥ 0, so its gradient is exactly zero for
    samples whose logit margin exceeds 50 — the very confident models this suite must not trust.
    """
    return _pgd(model, eps, suite, LogitMarginLoss(reduction="sum"))


@ATTACK_BUILDERS.register("mim")
def build_mim(model: nn.Module, eps: float, suite: AttackSuite) -> Attack:
    """Momentum iterative attack (Dong et al.), CE summed over the batch as in the authors' notebook."""
    return MomentumIterativeAttack(
        model, loss_fn=_ce(), eps=float(eps), nb_iter=suite.steps, decay_factor=1.0,
        eps_iter=suite.step_size(eps), clip_min=CLIP[0], clip_max=CLIP[1],
    )


@ATTACK_BUILDERS.register("bim")
def build_bim(model: nn.Module, eps: float, suite: AttackSuite) -> Attack:
    """Basic iterative attack: PGD without the random start (Kurakin et al.)."""
    return LinfBasicIterativeAttack(
        model, loss_fn=_ce(), eps=float(eps), nb_iter=suite.steps, eps_iter=suite.step_size(eps),
        clip_min=CLIP[0], clip_max=CLIP[1],
    )


@ATTACK_BUILDERS.register("spsa")
def build_spsa(model: nn.Module, eps: float, suite: AttackSuite) -> Attack:
    """Gradient-free SPSA (Uesato et al.) on the margin loss; Adam's lr is the suite's step size."""
    return LinfSPSAAttack(
        model, eps=float(eps), delta=SPSA_DELTA, lr=suite.step_size(eps), nb_iter=suite.steps,
        nb_sample=suite.spsa_samples, max_batch_size=min(suite.spsa_samples, SPSA_CHUNK),
        clip_min=CLIP[0], clip_max=CLIP[1],
    )


# ------------------------------------------------------------------ the runner
@contextlib.contextmanager
def frozen(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode and no parameter gradients while attacking; both restored afterwards, even on error.

    advertorch calls `loss.backward()`, which would otherwise accumulate gradients into the weights
    (and spend time computing them).
    """
    requires_grad = [(p, p.requires_grad) for p in model.parameters()]
    training = [(m, m.training) for m in model.modules()]
    try:
        for p, _ in requires_grad:
            p.requires_grad_(False)
        model.eval()
        yield model
    finally:
        for p, flag in requires_grad:
            p.requires_grad_(flag)
        for m, flag in training:
            m.training = flag


def _device_of(model: nn.Module) -> torch.device:
    first = next(model.parameters(), None)
    return first.device if first is not None else torch.device("cpu")


@contextlib.contextmanager
def _seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Fresh seeded RNG for the attack's random starts; the caller's RNG state is put back."""
    cuda = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        torch.random.default_generator.manual_seed(seed)
        if cuda:
            with torch.cuda.device(device):
                torch.cuda.manual_seed(seed)
        yield


def _fp32(device: torch.device) -> contextlib.AbstractContextManager[Any]:
    # Attacks run in fp32 even when called inside a training loop's bf16 autocast.
    return torch.autocast(device.type, enabled=False)


@torch.no_grad()
def predict_logits(model: nn.Module, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    """The model's fp32 logits for x, in batches, on x's device."""
    device = _device_of(model)
    with _fp32(device):
        chunks = [model(x[i : i + batch_size].to(device, torch.float32)).float() for i in range(0, len(x), batch_size)]
    return torch.cat(chunks).to(x.device) if chunks else torch.empty(0, 0, device=x.device)


def _source_model(name: str, model: nn.Module, substitute: nn.Module | None) -> nn.Module:
    if name not in TRANSFER_ATTACKS:
        return model
    if substitute is None:
        raise ValueError(
            f"attack {name!r} crafts its examples on a substitute model: pass substitute=…, "
            f"or drop {name!r} from the suite's attacks"
        )
    return substitute


def craft(
    name: str,
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    suite: AttackSuite,
    substitute: nn.Module | None = None,
) -> torch.Tensor:
    """Adversarial versions of `x` by attack `name` at L∞ radius `eps` (the one attack runner).

    Batched by `suite.batch_size`, in fp32, with the attacked model frozen and a fresh RNG seeded
    by `suite.seed`. Transfer attacks craft on `substitute`. Returns a tensor on x's device.
    """
    source = _source_model(name, model, substitute)
    attack = ATTACK_BUILDERS.create(name, model=source, eps=float(eps), suite=suite)
    device = _device_of(source)
    out: list[torch.Tensor] = []
    with frozen(source), torch.enable_grad(), _fp32(device), _seeded(suite.seed, device):
        for i in range(0, len(x), suite.batch_size):
            xb = x[i : i + suite.batch_size].to(device, torch.float32)
            yb = y[i : i + suite.batch_size].to(device)
            out.append(attack.perturb(xb, yb).detach().to(x.device))
    return torch.cat(out) if out else x.detach().clone()


@dataclass(frozen=True)
class SuiteResult:
    """Per-sample outcome of a suite run; all tensors on the CPU.

    `adv_pred[(attack, eps)]` is the target model's prediction on each sample's adversarial
    version; samples the model already gets wrong are not attacked and keep their clean prediction.
    """

    y: torch.Tensor  # (N,) true labels
    clean_logits: torch.Tensor  # (N, K)
    adv_pred: dict[tuple[str, float], torch.Tensor]  # (attack, eps) → (N,) predicted class

    @property
    def clean_probs(self) -> torch.Tensor:
        return torch.softmax(self.clean_logits, dim=1)

    @property
    def clean_pred(self) -> torch.Tensor:
        return self.clean_logits.argmax(dim=1)

    @property
    def clean_correct(self) -> torch.Tensor:
        return self.clean_pred == self.y

    @property
    def attacks(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(a for a, _ in self.adv_pred))

    @property
    def eps(self) -> tuple[float, ...]:
        return tuple(sorted({e for _, e in self.adv_pred}))

    def pred(self, attack: str, eps: float) -> torch.Tensor:
        try:
            return self.adv_pred[(attack, float(eps))]
        except KeyError:
            raise ValueError(f"({attack!r}, eps={eps}) was not run; ran {sorted(self.adv_pred)}") from None

    def robust(self, attack: str, eps: float) -> torch.Tensor:
        """(N,) bool: still classified correctly after the attack (clean-wrong samples are not)."""
        return self.pred(attack, eps) == self.y

    def worst(self, eps: float) -> torch.Tensor:
        """(N,) bool: still correct after every attack run at `eps` (per-sample worst case)."""
        flags = [self.robust(a, eps) for a in self.attacks if (a, float(eps)) in self.adv_pred]
        if not flags:
            raise ValueError(f"no attack was run at eps={eps}; ran eps {list(self.eps)}")
        return torch.stack(flags).all(dim=0)

    def accuracy(self, attack: str, eps: float) -> float:
        return self.robust(attack, eps).float().mean().item()


def run_suite(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    suite: AttackSuite,
    *,
    substitute: nn.Module | None = None,
) -> SuiteResult:
    """Run every (attack, eps) of `suite` against `model` on (x, y).

    Each attack runs on every clean-correct sample, so its robust accuracy is its own; clean-wrong
    samples are skipped (non-robust for free, as in AutoAttack). 'transfer' needs `substitute`.

    Example:
        >>> result = run_suite(model, x, y, AttackSuite(attacks=("fgsm",), eps=(0.1,)))
        >>> result.accuracy("fgsm", 0.1)
    """
    if len(x) != len(y) or len(x) == 0:
        raise ValueError(f"need as many labels as inputs, and at least one: got {len(x)} inputs, {len(y)} labels")
    for name in suite.attacks:
        _source_model(name, model, substitute)  # fail before any work if the substitute is missing
    y_cpu = y.detach().cpu().long()
    with frozen(model):
        clean_logits = predict_logits(model, x, suite.batch_size).cpu()
        clean_pred = clean_logits.argmax(dim=1)
        standing = (clean_pred == y_cpu).nonzero().squeeze(1)
        index = standing.to(x.device)
        adv_pred: dict[tuple[str, float], torch.Tensor] = {}
        for name in suite.attacks:
            for eps in suite.eps:
                pred = clean_pred.clone()
                if len(standing):
                    x_adv = craft(name, model, x[index], y[index], eps=eps, suite=suite, substitute=substitute)
                    pred[standing] = predict_logits(model, x_adv, suite.batch_size).argmax(dim=1).cpu()
                adv_pred[(name, eps)] = pred
    return SuiteResult(y=y_cpu, clean_logits=clean_logits, adv_pred=adv_pred)

