"""The adversarial attack suite: one spec and one runner over two families of attacks.

- The paper's protocol (advertorch: FGSM, PGD-CE, PGD-CW, MIM, BIM, SPSA, transfer), kept for comparison.
- AutoAttack-grade attacks from the reference code (`pyautoattack`: APGD-CE, APGD-DLR, APGD-T, FAB-T,
  Square and the standard `autoattack` ensemble): the ones a robustness number must survive. They run
  on the first `aa_limit` evaluated samples (a stratified draw, `pclc.samples`): they cost 10–100× more.

advertorch 0.2.3 predates torch 1.9, so its compatibility shim lives here, and only here,
installed before the first `import advertorch`. Every attack is L∞, clipped to [0, 1] and run
in fp32 on a frozen model (no weight gradients, eval mode).

One room (~815 lines, above 800): the attack registry and its one runner. Each builder is small; they share the
suite spec, the per-sample cascade and the advertorch shim, which must be installed before any of them imports
advertorch. A new attack is one decorated builder here.
"""

from __future__ import annotations

import collections.abc
import contextlib
import importlib
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol

import torch
from torch import nn

from pclc.gpu import fp32_precision
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
from pyautoattack import AutoAttack  # noqa: E402
from pyautoattack.autopgd_base import APGDAttack, APGDAttack_targeted  # noqa: E402
from pyautoattack.fab_pt import FABAttack_PT  # noqa: E402
from pyautoattack.square import SquareAttack  # noqa: E402

CLIP = (0.0, 1.0)  # pixels live in [0, 1]: no normalisation layer, as in the authors' code
SPSA_DELTA = 0.01  # SPSA finite-difference scale, in pixels (advertorch's default)
SPSA_CHUNK = 32  # SPSA perturbation samples evaluated per forward (memory ∝ chunk × batch)
AA_LOGGER = "pclc.autoattack"  # the reference code's own warnings (zero gradients, Square) land here


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
    aa_steps: int = field(default_factory=lambda: _config_default("aa_steps"))
    aa_targets: int = 9  # target classes of APGD-T / FAB-T, capped at K − 1 (the reference's 9)
    square_queries: int = field(default_factory=lambda: _config_default("square_queries"))
    aa_limit: int | None = field(default_factory=lambda: _config_default("aa_limit"))
    aa_eps: tuple[float, ...] | None = None  # eps at which AutoAttack-grade attacks run; None = all of `eps`
    # attacks only the per-sample worst case needs: each runs after the others, on the points they left robust
    # at its eps, and has no number of its own (`SuiteResult.robust` refuses it)
    worst_only: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "attacks", tuple(self.attacks))
        object.__setattr__(self, "worst_only", tuple(self.worst_only))
        if not set(self.worst_only) <= set(self.attacks):
            raise ValueError(f"worst_only {list(self.worst_only)} must be attacks of the suite {list(self.attacks)}")
        object.__setattr__(self, "eps", tuple(sorted({float(e) for e in self.eps})))
        if self.aa_eps is not None:
            object.__setattr__(self, "aa_eps", tuple(sorted({float(e) for e in self.aa_eps})))
            if not set(self.aa_eps) <= set(self.eps):
                raise ValueError(f"aa_eps {list(self.aa_eps)} must be radii of the eps grid {list(self.eps)}")
        unknown = [a for a in self.attacks if a not in ATTACK_BUILDERS]
        if unknown:
            raise ValueError(f"unknown attack(s) {unknown}; choose from: {ATTACK_BUILDERS.choices()}")
        if len(set(self.attacks)) != len(self.attacks):
            raise ValueError(f"attacks listed twice in {list(self.attacks)}")
        if not self.eps or not all(0.0 < e <= 1.0 for e in self.eps):
            raise ValueError(f"eps {list(self.eps)} must be non-empty radii in (0, 1] (pixels in [0, 1])")
        for name, lo in (
            ("steps", 1),
            ("spsa_samples", 1),
            ("batch_size", 1),
            ("aa_steps", 1),
            ("aa_targets", 1),
            ("square_queries", 1),
            ("aa_limit", 1),
        ):
            if getattr(self, name) is not None and getattr(self, name) < lo:
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
            aa_steps=cfg.aa_steps,
            square_queries=cfg.square_queries,
            aa_limit=cfg.aa_limit,
            aa_eps=tuple(cfg.aa_eps) if cfg.aa_eps is not None else (cfg.headline_eps,),
            worst_only=tuple(cfg.worst_case_only),
        )

    @property
    def order(self) -> tuple[str, ...]:
        """The order attacks run in: those with numbers of their own first, then the worst-case-only ones."""
        return tuple(a for a in self.attacks if a not in self.worst_only) + self.worst_only

    def step_size(self, eps: float) -> float:
        return float(self.step_scale * eps / self.steps)

    def eps_for(self, attack: str) -> tuple[float, ...]:
        """The radii `attack` runs at: AutoAttack-grade attacks only at `aa_eps` (they cost 10–100×)."""
        return self.aa_eps if attack in AUTOATTACK and self.aa_eps is not None else self.eps

    def aa_subset(self, n: int) -> torch.Tensor:
        """(n,) bool: the samples AutoAttack-grade attacks score: the first `aa_limit` (all when None).

        The evaluated samples come in `pclc.samples`' stratified draw order, so the first `aa_limit` are
        themselves a stratified draw, the same for every trial, and hold the per-epoch subset (or lie in it).
        """
        mask = torch.zeros(n, dtype=torch.bool)
        mask[: n if self.aa_limit is None else self.aa_limit] = True
        return mask


# ------------------------------------------------------------------ attack builders
@dataclass(frozen=True)
class AttackInfo:
    """What an attack is, registered with its builder: every list of attacks is derived from these."""

    box: Literal["white", "black", "mixed"]  # uses the model's gradients / only its outputs / an ensemble of both
    family: Literal["classic", "autoattack"]  # the paper's protocol, or AutoAttack-grade (aa_subset, aa_eps)
    cost: Callable[[AttackSuite], int]  # model passes per sample per radius (a forward + backward is one)
    substitute: bool = False  # crafted on a substitute model, scored on the target
    min_classes: int = 2  # fewest classes its loss is defined for (see `left_out`)
    why: str = ""  # ... and the reason, when that is more than 2
    parts: tuple[str, ...] = ()  # a composite's registered attacks, run in order where each is defined


def _classic(box: Literal["white", "black"], cost: Callable[[AttackSuite], int], **kw: Any) -> AttackInfo:
    return AttackInfo(box=box, family="classic", cost=cost, **kw)


def _aa(box: Literal["white", "black", "mixed"], cost: Callable[[AttackSuite], int], **kw: Any) -> AttackInfo:
    return AttackInfo(box=box, family="autoattack", cost=cost, **kw)


def _steps(suite: AttackSuite) -> int:
    return suite.steps


def _aa_steps(suite: AttackSuite) -> int:
    return suite.aa_steps


def _aa_targeted(suite: AttackSuite) -> int:
    return suite.aa_steps * suite.aa_targets


ATTACK_BUILDERS: Registry[Attack] = Registry("attack")
"""name → builder(model, eps, suite) returning an object with `perturb(x, y)`; info: its `AttackInfo`."""


def _ce() -> nn.Module:
    # Sum, not mean: the per-sample gradient does not shrink with the batch size (advertorch's default).
    return nn.CrossEntropyLoss(reduction="sum")


@ATTACK_BUILDERS.register("fgsm", info=_classic("white", lambda s: 1))
def build_fgsm(model: nn.Module, eps: float, suite: AttackSuite) -> Attack:
    """One signed-gradient step of size eps on the CE loss (Goodfellow et al.)."""
    return GradientSignAttack(model, loss_fn=_ce(), eps=float(eps), clip_min=CLIP[0], clip_max=CLIP[1])


def _iterative(eps: float, suite: AttackSuite, loss_fn: nn.Module) -> dict[str, Any]:
    """What the paper's iterative attacks (PGD, MIM, BIM) share: the suite's steps and step size in [0, 1]."""
    return {
        "loss_fn": loss_fn,
        "eps": float(eps),
        "nb_iter": suite.steps,
        "eps_iter": suite.step_size(eps),
        "clip_min": CLIP[0],
        "clip_max": CLIP[1],
    }


def _pgd(model: nn.Module, eps: float, suite: AttackSuite, loss_fn: nn.Module) -> Attack:
    return LinfPGDAttack(model, rand_init=True, **_iterative(eps, suite, loss_fn))


@ATTACK_BUILDERS.register("pgd_ce", info=_classic("white", _steps))
def build_pgd_ce(model: nn.Module, eps: float, suite: AttackSuite) -> Attack:
    """PGD with random start on the CE loss (Madry et al.)."""
    return _pgd(model, eps, suite, _ce())


@ATTACK_BUILDERS.register("pgd_cw", info=_classic("white", _steps))
def build_pgd_cw(model: nn.Module, eps: float, suite: AttackSuite) -> Attack:
    """PGD with random start on the CW margin loss max_{j≠y} z_j − z_y: immune to a saturated softmax.

    Not advertorch's `CWLoss`: it clamps at margin + 50 ≥ 0, so its gradient is exactly zero for
    samples whose logit margin exceeds 50 — the very confident models this suite must not trust.
    """
    return _pgd(model, eps, suite, LogitMarginLoss(reduction="sum"))


@ATTACK_BUILDERS.register("mim", info=_classic("white", _steps))
def build_mim(model: nn.Module, eps: float, suite: AttackSuite) -> Attack:
    """Momentum iterative attack (Dong et al.), CE summed over the batch as in the authors' notebook."""
    return MomentumIterativeAttack(model, decay_factor=1.0, **_iterative(eps, suite, _ce()))


@ATTACK_BUILDERS.register("bim", info=_classic("white", _steps))
def build_bim(model: nn.Module, eps: float, suite: AttackSuite) -> Attack:
    """Basic iterative attack: PGD without the random start (Kurakin et al.)."""
    return LinfBasicIterativeAttack(model, **_iterative(eps, suite, _ce()))


@ATTACK_BUILDERS.register("spsa", info=_classic("black", lambda s: s.steps * s.spsa_samples))
def build_spsa(model: nn.Module, eps: float, suite: AttackSuite) -> Attack:
    """Gradient-free SPSA (Uesato et al.) on the margin loss; Adam's lr is the suite's step size."""
    return LinfSPSAAttack(
        model,
        eps=float(eps),
        delta=SPSA_DELTA,
        lr=suite.step_size(eps),
        nb_iter=suite.steps,
        nb_sample=suite.spsa_samples,
        max_batch_size=min(suite.spsa_samples, SPSA_CHUNK),
        clip_min=CLIP[0],
        clip_max=CLIP[1],
    )


# The transfer attack is PGD-CE on the substitute: the runner passes the substitute as `model`. Black box
# from the target's side: it never sees the target's gradients.
ATTACK_BUILDERS.register("transfer", info=_classic("black", _steps, substitute=True))(build_pgd_ce)


# ------------------------------------------------------------------ AutoAttack-grade (pyautoattack)
# The reference code seeds the global RNG in every perturb(); the runner's `_seeded` puts it back.
def _num_classes(model: nn.Module, x: torch.Tensor) -> int:
    """K: the width of the model's output on one sample of x."""
    with torch.no_grad():
        return int(model(x[:1]).shape[1])


def _n_targets(model: nn.Module, x: torch.Tensor, suite: AttackSuite) -> int:
    return max(1, min(suite.aa_targets, _num_classes(model, x) - 1))


class _Lazy:
    """Builds the reference attack at the first batch, when the class count and device are known."""

    def __init__(self, make: Any, model: nn.Module) -> None:
        self.make, self.model, self.attack = make, model, None

    def perturb(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.attack is None:
            self.attack = self.make(x)
        return self.attack.perturb(x, y)


def _apgd_settings(eps: float, suite: AttackSuite) -> dict[str, Any]:
    """What both APGDs take from the suite: the reference's settings (one restart, L∞, our seed and logger)."""
    return {
        "n_iter": suite.aa_steps,
        "norm": "Linf",
        "n_restarts": 1,
        "eps": float(eps),
        "seed": suite.seed,
        "logger": logging.getLogger(AA_LOGGER),
    }


def _apgd(model: nn.Module, eps: float, suite: AttackSuite, loss: str) -> Attack:
    return APGDAttack(model, loss=loss, eot_iter=1, rho=0.75, **_apgd_settings(eps, suite))


def _apgd_targeted(model: nn.Module, eps: float, suite: AttackSuite, targets: int) -> APGDAttack_targeted:
    return APGDAttack_targeted(model, n_target_classes=targets, **_apgd_settings(eps, suite))


@ATTACK_BUILDERS.register("apgd_ce", info=_aa("white", _aa_steps))
def build_apgd_ce(model: nn.Module, eps: float, suite: AttackSuite) -> Attack:
    """Auto-PGD on cross-entropy (Croce & Hein 2020): step size adapted, no tuning."""
    return _apgd(model, eps, suite, "ce")


# The reference's DLR losses divide by a gap between sorted logits (pyautoattack/autopgd_base.py): the
# untargeted one by z_(1) − z_(3) (`dlr_loss`: x_sorted[:, -3]), the targeted one by z_(1) − (z_(3) + z_(4)) / 2
# (`dlr_loss_targeted`: x_sorted[:, -4]). With fewer classes that index does not exist (an IndexError).
# FAB-T (it picks targets from the sorted logits up to the K-th), Square (its margin is max_{j≠y} z_j − z_y)
# and the CE / CW-margin losses of the others need two classes, which every data set has.
@ATTACK_BUILDERS.register(
    "apgd_dlr",
    info=_aa("white", _aa_steps, min_classes=3, why="its DLR loss divides by the gap to the 3rd largest logit"),
)
def build_apgd_dlr(model: nn.Module, eps: float, suite: AttackSuite) -> Attack:
    """Auto-PGD on the DLR loss: a logit-ratio loss that is invariant to logit scale (no softmax to saturate)."""
    return _apgd(model, eps, suite, "dlr")


@ATTACK_BUILDERS.register(
    "apgd_t",
    info=_aa(
        "white",
        _aa_targeted,
        min_classes=4,
        why="its targeted DLR loss divides by the gap to the mean of the 3rd and 4th largest logits",
    ),
)
def build_apgd_t(model: nn.Module, eps: float, suite: AttackSuite) -> Attack:
    """Auto-PGD on the targeted DLR loss, one run per top-min(9, K−1) false class: what breaks PC-LC."""
    return _Lazy(lambda x: _apgd_targeted(model, eps, suite, _n_targets(model, x, suite)), model)


@ATTACK_BUILDERS.register("fab_t", info=_aa("white", _aa_targeted))
def build_fab_t(model: nn.Module, eps: float, suite: AttackSuite) -> Attack:
    """Targeted FAB (Croce & Hein 2020): minimal-norm adversarials, kept only when within eps."""
    return _Lazy(
        lambda x: FABAttack_PT(
            model,
            norm="Linf",
            n_restarts=1,
            n_iter=suite.aa_steps,
            eps=float(eps),
            seed=suite.seed,
            targeted=True,
            n_target_classes=_n_targets(model, x, suite),
            device=x.device,
        ),
        model,
    )


@ATTACK_BUILDERS.register("square", info=_aa("black", lambda s: s.square_queries))
def build_square(model: nn.Module, eps: float, suite: AttackSuite) -> Attack:
    """Square Attack (Andriushchenko et al.): score-based black box, `square_queries` queries per sample."""
    return SquareAttack(
        model,
        norm="Linf",
        n_queries=suite.square_queries,
        eps=float(eps),
        p_init=0.8,
        n_restarts=1,
        seed=suite.seed,
        resc_schedule=False,
    )


class _StandardAutoAttack:
    """The reference's standard AutoAttack: APGD-CE → APGD-T → FAB-T → Square, each on the points
    the previous ones left robust (its `run_standard_evaluation`, unchanged)."""

    def __init__(self, model: nn.Module, eps: float, suite: AttackSuite) -> None:
        self.model, self.eps, self.suite = model, float(eps), suite

    def perturb(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        aa = AutoAttack(
            self.model, eps=self.eps, norm="Linf", version="standard", seed=self.suite.seed, device=x.device
        )
        aa.logger = logging.getLogger(AA_LOGGER)
        targets = _n_targets(self.model, x, self.suite)
        # The standard version's APGDs, built by the same builders as the standalone attacks (same settings,
        # with the suite's iterations); the ensemble's order and its robust-points bookkeeping stay the reference's.
        aa.apgd = _apgd(self.model, self.eps, self.suite, "ce")
        aa.apgd_targeted = _apgd_targeted(self.model, self.eps, self.suite, targets)
        aa.fab.n_iter, aa.fab.n_target_classes = self.suite.aa_steps, targets
        aa.square.n_queries = self.suite.square_queries
        # Fewer classes than a part needs: the ensemble runs the parts defined for them (`left_out` says
        # which it left out). With all four defined this keeps the reference's list as it is.
        undefined = {_REFERENCE_NAMES[p] for p in _undefined_parts("autoattack", _num_classes(self.model, x))}
        aa.attacks_to_run = [a for a in aa.attacks_to_run if a not in undefined]
        x_adv, _ = aa.run_standard_evaluation(x, y, batch_size=len(x))
        return x_adv


# Our names of the standard ensemble's parts → the reference's (its `attacks_to_run`), in its order.
_REFERENCE_NAMES = {"apgd_ce": "apgd-ce", "apgd_t": "apgd-t", "fab_t": "fab-t", "square": "square"}
_OUR_NAMES = {v: k for k, v in _REFERENCE_NAMES.items()}


@ATTACK_BUILDERS.register(
    "autoattack",
    info=_aa("mixed", lambda s: s.aa_steps * (1 + 2 * s.aa_targets) + s.square_queries, parts=tuple(_REFERENCE_NAMES)),
)
def build_autoattack(model: nn.Module, eps: float, suite: AttackSuite) -> Attack:
    """Standard AutoAttack (Croce & Hein 2020), the per-sample worst of its four attacks (of those defined
    for the model's class count: APGD-T needs 4)."""
    return _StandardAutoAttack(model, eps, suite)


# ------------------------------------------------------------------ lists derived from the registry
CLASSIC: tuple[str, ...] = ATTACK_BUILDERS.select(lambda i: i.family == "classic")  # the paper's protocol
AUTOATTACK: tuple[str, ...] = ATTACK_BUILDERS.select(lambda i: i.family == "autoattack")  # what a headline survives
ATTACKS: tuple[str, ...] = CLASSIC + AUTOATTACK  # the order of tables and plots
WHITE_BOX: tuple[str, ...] = ATTACK_BUILDERS.select(lambda i: i.box == "white")
BLACK_BOX: tuple[str, ...] = ATTACK_BUILDERS.select(lambda i: i.box == "black")
TRANSFER_ATTACKS: frozenset[str] = frozenset(ATTACK_BUILDERS.select(lambda i: i.substitute))


# ------------------------------------------------------------------ which attacks are defined for K classes
LEFT_OUT = "Attack left out"  # how each `LeftOut` sentence begins (in a trial's warnings)


@dataclass(frozen=True)
class LeftOut:
    """An attack, or a composite's part, that cannot run on a model of `has` classes (it needs `needs`)."""

    attack: str
    needs: int
    has: int
    why: str
    within: str | None = None  # the composite that ran without it; None: it was asked for on its own
    ran: tuple[str, ...] = ()  # what that composite ran instead

    def __str__(self) -> str:
        what = f"{self.within} ran {', '.join(self.ran) or 'nothing'} without {self.attack}" if self.within else ""
        return (
            f"{LEFT_OUT}: {what or f'{self.attack} was not run'}: {self.attack} needs at least {self.needs} "
            f"classes and the model has {self.has} ({self.why})"
        )


def _undefined_parts(name: str, num_classes: int) -> tuple[str, ...]:
    info: AttackInfo = ATTACK_BUILDERS.info(name)
    return tuple(p for p in info.parts if ATTACK_BUILDERS.info(p).min_classes > num_classes)


def left_out(attacks: Iterable[str], num_classes: int) -> list[LeftOut]:
    """What of `attacks` cannot run on `num_classes` classes: each attack asked for on its own that needs
    more (`within` None), and each part a composite will run without (`within` the composite).

    Example:
        >>> [(x.attack, x.within) for x in left_out(["fgsm", "apgd_t", "autoattack"], 3)]
        [('apgd_t', None), ('apgd_t', 'autoattack')]
    """
    out: list[LeftOut] = []
    for name in attacks:
        parts = ATTACK_BUILDERS.info(name).parts
        undefined = _undefined_parts(name, num_classes) if parts else (name,)
        ran = tuple(p for p in parts if p not in undefined)
        for attack in undefined:
            info: AttackInfo = ATTACK_BUILDERS.info(attack)
            if info.min_classes > num_classes:
                within = name if parts else None
                out.append(LeftOut(attack, info.min_classes, num_classes, info.why, within=within, ran=ran))
    return out


def defined_for(attacks: Iterable[str], num_classes: int) -> tuple[str, ...]:
    """The attacks of `attacks` that can run on `num_classes` classes (a composite can: it drops parts)."""
    alone = {x.attack for x in left_out(attacks, num_classes) if x.within is None}
    return tuple(a for a in attacks if a not in alone)


def check_classes(attacks: Iterable[str], num_classes: int, *, where: str = "the model") -> None:
    """Refuse, in one message naming them and the class count, attacks asked for on their own that are
    not defined for `num_classes` classes (a composite never is refused: it runs the parts it can)."""
    alone = [x for x in left_out(attacks, num_classes) if x.within is None]
    if alone:
        needs = "; ".join(f"{x.attack} needs at least {x.needs} ({x.why})" for x in alone)
        raise ValueError(
            f"attacks {[x.attack for x in alone]} are not defined for the {num_classes} classes of {where}: "
            f"{needs}. Drop them from attacks (autoattack runs the parts defined for {num_classes} classes)"
        )


class AAFlags(logging.Handler):
    """Collects the reference AutoAttack's own warnings, and the number behind its Square check.

    Its zero-gradient warning is collected as said but not counted: it fires on the CE gradient alone,
    which rounds to exactly 0 on confidently classified points (see `zero_gradient_points`).
    """

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.square_gain = 0.0  # accuracy Square removed after the white-box attacks had run
        self.messages: list[str] = []
        self.parts: dict[str, float] = {}  # the last ensemble run: seconds per part (our names), in its order
        self._clock = 0.0

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if record.levelno >= logging.WARNING:
            self.messages.append(text)
        if text.startswith("initial accuracy"):  # a new ensemble run
            self.parts, self._clock = {}, 0.0
        elif text.startswith("robust accuracy after") and "(total time " in text:
            # "robust accuracy after APGD-T: 51.56% (total time 7.5 s)": the reference's own clock, cumulative
            part = text.split("after ")[1].split(":")[0].lower()
            total = float(text.split("(total time ")[1].split(" s")[0])
            self.parts[_OUR_NAMES.get(part, part)] = total - self._clock
            self._clock = total
        if text.startswith("Square Attack has decreased the robust accuracy of"):
            self.square_gain = max(self.square_gain, float(text.split(" of ")[1].split("%")[0]) / 100)

    @contextlib.contextmanager
    def listening(self) -> Iterator[AAFlags]:
        logger = logging.getLogger(AA_LOGGER)
        level, propagate = logger.level, logger.propagate
        logger.addHandler(self)
        logger.setLevel(logging.DEBUG)
        logger.propagate = False  # the reference logs every batch at DEBUG: keep it out of the trial's log
        try:
            yield self
        finally:
            logger.removeHandler(self)
            logger.setLevel(level)
            logger.propagate = propagate


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


@contextlib.contextmanager
def _fp32(device: torch.device) -> Iterator[None]:
    # Attacks run in fp32 even when called inside a training loop's bf16 autocast, and in IEEE fp32:
    # no TF32 convolutions or matmuls (SPSA's finite differences and the masking checks read small gaps).
    with torch.autocast(device.type, enabled=False), fp32_precision():
        yield


@torch.no_grad()
def predict_logits(model: nn.Module, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    """The model's fp32 logits for x, in batches, on x's device."""
    device = _device_of(model)
    with _fp32(device):
        chunks = [model(x[i : i + batch_size].to(device, torch.float32)).float() for i in range(0, len(x), batch_size)]
    return torch.cat(chunks).to(x.device) if chunks else torch.empty(0, 0, device=x.device)


def zero_gradient_points(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> torch.Tensor:
    """(N,) bool on the CPU: samples whose input gradient is exactly zero under cross-entropy *and* under
    the CW margin loss (max_{j≠y} z_j − z_y), so that no gradient-based attack can move them.

    CE alone is no test: on a confidently classified point its gradient rounds to exactly 0 in fp32,
    and which points cross that line depends on the CPU's kernels. The margin loss reads the logits
    directly, so its gradient is zero only where the model's own input gradient is (quantised or
    non-differentiable inputs, dead layers): the masking this check is for.
    """
    device = _device_of(model)
    out: list[torch.Tensor] = []
    with frozen(model), torch.enable_grad(), _fp32(device):
        for i in range(0, len(x), batch_size):
            xb = x[i : i + batch_size].to(device, torch.float32).requires_grad_(True)
            yb = y[i : i + batch_size].to(device).view(-1, 1)
            z = model(xb).float()
            ce = nn.functional.cross_entropy(z, yb.squeeze(1), reduction="sum")
            margin = (z.scatter(1, yb, float("-inf")).max(dim=1).values - z.gather(1, yb).squeeze(1)).sum()
            zero = [
                torch.autograd.grad(loss, xb, retain_graph=True)[0].flatten(1).abs().sum(1) == 0
                for loss in (ce, margin)
            ]
            out.append((zero[0] & zero[1]).cpu())
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.bool)


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
    return run_attack(attack, source, x, y, suite)


def run_attack(attack: Attack, model: nn.Module, x: torch.Tensor, y: torch.Tensor, suite: AttackSuite) -> torch.Tensor:
    """`attack.perturb` over x in batches of `suite.batch_size`: fp32, `model` frozen, the RNG seeded by
    `suite.seed` and put back afterwards. What `craft` runs, and what adversarial training runs its
    inner attack with (pclc.training_modes)."""
    device = _device_of(model)
    out: list[torch.Tensor] = []
    with frozen(model), torch.enable_grad(), _fp32(device), _seeded(suite.seed, device):
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
    `scored[(attack, eps)]` marks the samples an attack scored: all of them for the classic attacks,
    the fixed AutoAttack subset for the AutoAttack-grade ones. Accuracies are over the scored samples;
    worst cases over the samples every attack in question scored.
    """

    y: torch.Tensor  # (N,) true labels
    clean_logits: torch.Tensor  # (N, K)
    adv_pred: dict[tuple[str, float], torch.Tensor]  # (attack, eps) → (N,) predicted class
    scored: dict[tuple[str, float], torch.Tensor] = field(default_factory=dict)  # (attack, eps) → (N,) bool
    flags: dict[str, float] = field(default_factory=dict)  # the reference AutoAttack's own checks
    messages: list[str] = field(default_factory=list)  # ... and its warnings, word for word
    left_out: list[LeftOut] = field(default_factory=list)  # composites' parts not defined for the class count
    worst_only: tuple[str, ...] = ()  # attacks run only on points the others left robust: no number of their own
    seconds: dict[tuple[str, float], float] = field(default_factory=dict)  # (attack, eps) → wall time it took
    # (composite, eps) → its parts' seconds by the reference's own clock (the ensemble's cascade, in its order)
    part_seconds: dict[tuple[str, float], dict[str, float]] = field(default_factory=dict)
    clean_seconds: float = 0.0  # the one clean forward pass every attack shares

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

    def mask(self, attack: str, eps: float) -> torch.Tensor:
        """(N,) bool: the samples `attack` scored at `eps`."""
        self.pred(attack, eps)
        return self.scored.get((attack, float(eps)), torch.ones(len(self.y), dtype=torch.bool))

    def robust(self, attack: str, eps: float) -> torch.Tensor:
        """(N,) bool: still classified correctly after the attack (clean-wrong samples are not)."""
        if attack in self.worst_only:
            raise ValueError(
                f"{attack!r} ran for the worst case only (on the points the other attacks left robust): "
                "it has no accuracy of its own; run it without worst_case_only for one"
            )
        return self._robust(attack, eps)

    def _robust(self, attack: str, eps: float) -> torch.Tensor:
        return self.pred(attack, eps) == self.y

    def exact(self, attacks: Iterable[str]) -> bool:
        """Whether the per-sample worst over `attacks` is exact: none of them is worst-case-only, or all the
        attacks that ran before them are among `attacks`."""
        names = set(attacks)
        return not (names & set(self.worst_only)) or set(self.attacks) <= names

    def worst(self, eps: float, attacks: tuple[str, ...] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(robust, scored): still correct after every attack of `attacks` (default all) run at `eps`,
        on the samples all of them scored (per-sample worst case)."""
        names = [a for a in (attacks or self.attacks) if (a, float(eps)) in self.adv_pred]
        if not names:
            raise ValueError(
                f"no attack of {list(attacks or self.attacks)} was run at eps={eps}; ran {sorted(self.adv_pred)}"
            )
        if not self.exact(names):
            raise ValueError(
                f"the worst case over {names} is not exact: {sorted(set(names) & set(self.worst_only))} ran only "
                "on the points the other attacks left robust"
            )
        robust = torch.stack([self._robust(a, eps) for a in names]).all(dim=0)
        scored = torch.stack([self.mask(a, eps) for a in names]).all(dim=0)
        return robust, scored

    def worst_accuracy(self, eps: float, attacks: tuple[str, ...] | None = None) -> float:
        robust, scored = self.worst(eps, attacks)
        return robust[scored].float().mean().item()

    def accuracy(self, attack: str, eps: float) -> float:
        return self.robust(attack, eps)[self.mask(attack, eps)].float().mean().item()


def run_suite(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    suite: AttackSuite,
    *,
    substitute: nn.Module | None = None,
) -> SuiteResult:
    """Run every (attack, eps) of `suite` against `model` on (x, y).

    Each attack runs on every clean-correct sample it scores, so its robust accuracy is its own;
    clean-wrong samples are skipped (non-robust for free, as in AutoAttack). AutoAttack-grade attacks
    score only `suite.aa_subset`. 'transfer' needs `substitute`. An attack not defined for the model's class
    count is refused before any attack runs (`check_classes`); a composite runs the parts it can (`left_out`).

    Example (an illustration: it needs a trained model or a store):
        >>> result = run_suite(model, x, y, AttackSuite(attacks=("fgsm",), eps=(0.1,)))  # doctest: +SKIP
        >>> result.accuracy("fgsm", 0.1)  # doctest: +SKIP
    """
    if len(x) != len(y) or len(x) == 0:
        raise ValueError(f"need as many labels as inputs, and at least one: got {len(x)} inputs, {len(y)} labels")
    for name in suite.attacks:
        _source_model(name, model, substitute)  # fail before any work if the substitute is missing
    y_cpu = y.detach().cpu().long()
    everyone = torch.ones(len(y_cpu), dtype=torch.bool)
    subset = suite.aa_subset(len(y_cpu))
    flags = AAFlags()
    seconds: dict[tuple[str, float], float] = {}
    part_seconds: dict[tuple[str, float], dict[str, float]] = {}
    with frozen(model), flags.listening():
        started = time.perf_counter()
        clean_logits = predict_logits(model, x, suite.batch_size).cpu()
        clean_seconds = time.perf_counter() - started
        num_classes = clean_logits.shape[1]
        check_classes(suite.attacks, num_classes)
        clean_pred = clean_logits.argmax(dim=1)
        adv_pred: dict[tuple[str, float], torch.Tensor] = {}
        scored: dict[tuple[str, float], torch.Tensor] = {}
        robust_so_far: dict[float, torch.Tensor] = {}  # eps → still correct after every attack run at it
        for name in suite.order:
            mask = subset if name in AUTOATTACK else everyone
            for eps in suite.eps_for(name):
                started = time.perf_counter()
                attacked = (clean_pred == y_cpu) & mask
                if name in suite.worst_only:  # the worst case needs it only where the others failed
                    attacked &= robust_so_far.get(eps, attacked)
                standing = attacked.nonzero().squeeze(1)
                index = standing.to(x.device)
                pred = clean_pred.clone()
                if len(standing):
                    x_adv = craft(name, model, x[index], y[index], eps=eps, suite=suite, substitute=substitute)
                    pred[standing] = predict_logits(model, x_adv, suite.batch_size).argmax(dim=1).cpu()
                adv_pred[(name, eps)] = pred
                scored[(name, eps)] = mask
                robust_so_far[eps] = robust_so_far.get(eps, clean_pred == y_cpu) & (pred == y_cpu)
                seconds[(name, eps)] = time.perf_counter() - started
                if ATTACK_BUILDERS.info(name).parts and len(standing):
                    part_seconds[(name, eps)], flags.parts = flags.parts, {}
    ran_aa = any(a in AUTOATTACK for a in suite.attacks)
    reference = {"aa_square_gain": flags.square_gain} if ran_aa else {}
    return SuiteResult(
        y=y_cpu,
        clean_logits=clean_logits,
        adv_pred=adv_pred,
        scored=scored,
        flags=reference,
        messages=flags.messages,
        left_out=left_out(suite.attacks, num_classes),
        worst_only=suite.worst_only,
        seconds=seconds,
        part_seconds=part_seconds,
        clean_seconds=clean_seconds,
    )
