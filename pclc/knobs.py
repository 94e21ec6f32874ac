"""The knobs a sweep turns, each said once: its symbol, what it is, its unit, and the authors' value.

The paper's loss knobs (ξ, λ) and the negative control's α, and the adversarial-training knobs that have a
symbol. `pclc.losses` and `pclc.training_modes` name the knobs each member uses; `pclc.config` takes its defaults
from `AUTHORS`; `sweeps.config` builds the authors' reference from it; `analysis` labels axes and
configurations from it. Plain data, no torch: `import pclc.config` stays light.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Knob:
    """One knob: `symbol` as the paper writes it, `meaning` and `unit` for an axis, `authors` the value Li et al.
    (AAAI-21) use (None where the paper sets none)."""

    symbol: str
    meaning: str
    unit: str
    authors: float | None = None

    def label(self) -> str:
        """'PC margin ξ (probability, unitless)': an axis label."""
        return f"{self.meaning} {self.symbol} ({self.unit})"


KNOBS: dict[str, Knob] = {
    "margin": Knob("ξ", "PC margin", "probability, unitless", authors=0.995),
    "lc_weight": Knob("λ", "logit-constraint weight", "unitless", authors=0.05),
    "smoothing": Knob("α", "label-smoothing weight", "unitless"),
    "trades_beta": Knob("β", "TRADES' KL weight", "unitless"),
    "adv_eps": Knob("ε_train", "training attack's L∞ radius", "input units"),
}
LOSS_KNOBS: tuple[str, ...] = ("margin", "lc_weight", "smoothing")  # the losses' knobs (pclc.losses.LOSSES' info)
AUTHORS: dict[str, float] = {name: k.authors for name, k in KNOBS.items() if k.authors is not None}
SYMBOL: dict[str, str] = {name: k.symbol for name, k in KNOBS.items()}
