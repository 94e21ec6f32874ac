"""The sweep's figures, one function each: Sweep → matplotlib Figure (or NotApplicable with the reason).

Figures are built without pyplot (no global state, nothing to close) on the Agg canvas, with
constrained layout and legends outside the axes so nothing overlaps. Accuracies are shown in %.

Sized for report.html, which shows every figure at its own pixel size (no figure is wider than
DISPLAY_WIDTH_PX, the page's column): a 'small' font (8.3 pt at DPI 110) reads as 9.5 pt there. A
configuration is labelled by the knobs that differ between the configurations a figure shows, to 3
significant digits, or by its rank where that is still long; the figure's `key` gives the full labels.

One room (~960 lines, above 800): every figure the report draws, and the few helpers (labels, legends, sizes)
they share; each figure is one function of the sweep (and its verdict), so a new figure is one function and one
line of `PLOTS`.
"""

from __future__ import annotations

import logging
import math
import re
import textwrap
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # before anything draws: PNG files only, no display

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure

from analysis.load import (
    FINISHED,
    SEED,
    STOPPED,
    Sweep,
    fmt_value,
    is_finalist,
    variant_label,
    variant_sort_key,
)
from analysis.stats import best_configs, pareto_mask, summarize
from analysis.verdict import Verdict, verdict
from pclc import metrics as M
from pclc.files import atomic_file
from pclc.knobs import AUTHORS, KNOBS, SYMBOL

# The authors' configuration (pclc.knobs declares their ξ and λ once): PC-LC with ξ = 0.995, λ = 0.05.
AUTHORS_LOSS = "pclc"
AUTHORS_MARGIN, AUTHORS_LC_WEIGHT = AUTHORS["margin"], AUTHORS["lc_weight"]

MAX_LINES = 4  # more combinations of the other knobs than this: plot single trials, not lines
MIN_IMPORTANCE_TRIALS = 8  # fANOVA's forest says little below this
MAX_HEATMAP_CELLS = 10  # more distinct values on an axis than this: bin them
MAX_DUMBBELLS = 24  # more configurations than this in claimed vs AutoAttack: the best ones by the headline
DPI = 110
DISPLAY_WIDTH_PX = 1100  # report.html's column (its CSS reads this): no figure is wider, so none is shown shrunk
MAX_WIDTH_IN = DISPLAY_WIDTH_PX / DPI
MAX_LABEL_CHARS = 30  # a configuration label longer than this, once shortened, gives way to its rank and the key
LEGEND_SHARE = 0.3  # a legend at the right may take this share of the figure's width; a wider one goes below


class NotApplicable(Exception):
    """This plot does not fit the data (e.g. a heatmap with one λ); the message says why, for the report."""


class KeyedFigure(Figure):
    """A Figure with the key to its shortened labels: what it shows (e.g. 'pclc #3') → the full configuration
    label ('pclc (ξ=0.954333, λ=0.134694, lr=0.00255788)'); empty when every label is already whole."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self.key: dict[str, str] = {}


@dataclass
class Plot:
    """One entry of the report: a figure, or the reason it was skipped."""

    name: str  # file stem, e.g. "robust_vs_margin"
    title: str
    figure: Figure | None = None
    reason: str | None = None
    path: Path | None = None
    key: dict[str, str] = field(default_factory=dict)  # the figure's shortened labels → full ones (KeyedFigure)


# --------------------------------------------------------------------------- labels and colours


def is_accuracy(metric: str) -> bool:
    """True for metrics in [0, 1] shown in % (a `finalist/` re-score of one included)."""
    plain = metric.removeprefix(M.FINALIST_PREFIX)
    return plain.startswith((M.ROBUST_ACC, M.CLEAN_ACC, "second_class_rate", M.EPOCH_ROBUST_ACC))


# The per-sample worst cases at an eps, as the legend names them (pclc.metrics.AGGREGATES), and their line style.
AGGREGATE_LABEL = {
    M.WORST: "worst over every attack",
    M.WORST_CLASSIC: "worst classic attack (the paper's claim)",
    M.WORST_AA: "worst AutoAttack-grade attack",
}
AGGREGATE_STYLE = {M.WORST: ("-", "o"), M.WORST_CLASSIC: ("--", "s"), M.WORST_AA: (":", "v")}  # (line, marker)
_HEADLINE_WORDS = {
    M.ROBUST_ACC: "worst-case robust accuracy",
    M.ROBUST_ACC_CLASSIC: "claimed robust accuracy (worst classic attack)",
    M.ROBUST_ACC_AA: "AutoAttack-grade robust accuracy",
}


def metric_label(sweep: Sweep, metric: str) -> str:
    """Axis label with units: 'worst-case robust accuracy at ε=0.2 (%)'."""
    unit = " (%)" if is_accuracy(metric) else ""
    if is_finalist(metric):
        return f"full AutoAttack re-score: {metric_label(sweep, metric.removeprefix(M.FINALIST_PREFIX))}"
    if metric in _HEADLINE_WORDS:
        eps = sweep.headline_eps
        return f"{_HEADLINE_WORDS[metric]}{f' at ε={fmt_value(eps)}' if eps is not None else ''}{unit}"
    parsed = M.parse_robust_key(metric)
    if parsed:
        return f"{parsed[0]} robust accuracy at ε={fmt_value(parsed[1])}{unit}"
    if metric == M.CLEAN_ACC:
        return "clean accuracy (%)"
    if metric == M.PROB_GAP:
        return "probability gap p(true) − max p(false)"
    return metric + unit


def scale(metric: str) -> float:
    return 100.0 if is_accuracy(metric) else 1.0


def knob_label(knob: str, *, log: bool = False) -> str:
    """An axis label: the knob's meaning, symbol and unit (pclc.knobs), or its name."""
    return (KNOBS[knob].label() if knob in KNOBS else knob) + (", log scale" if log else "")


def variant_colors(variants: list[str]) -> dict[str, tuple[float, ...]]:
    """One colour per variant, the same in every figure (tab10 in the paper's order)."""
    cmap = matplotlib.colormaps["tab10"]
    ordered = sorted(variants, key=variant_sort_key)
    return {v: cmap(i % 10) for i, v in enumerate(ordered)}


def _interval_note(n_max: int) -> str:
    return "mean ± 95% t-interval over seeds" if n_max >= 2 else "single seed: no interval"


def short_numbers(text: str) -> str:
    """Every decimal in a label to 3 significant digits: 'ξ=0.954333, lr=0.00255788' → 'ξ=0.954, lr=0.00256'."""
    return _DECIMAL.sub(lambda m: f"{float(m[0]):.3g}", text)


_DECIMAL = re.compile(r"(?<![\w.])\d+\.\d+(?:e[+-]?\d+)?")  # a decimal in a configuration label


def _knobs(config: str) -> dict[str, str]:
    """'ξ=0.995, attacks=[fgsm, pgd_ce]' → {'ξ': '0.995', 'attacks': '[fgsm, pgd_ce]'}; 'default' → {}."""
    items = re.split(r", (?![^\[]*\])", config) if config != "default" else []
    return dict(item.split("=", 1) for item in items if "=" in item)


def config_labels(pairs: list[tuple[str, str]], *, ranks: list[int] | None = None) -> tuple[list[str], dict[str, str]]:
    """Short labels of the (variant or arm, configuration) pairs one figure shows, and the key to them.

    A label keeps the knobs whose value differs between the pairs, each to 3 significant digits:
    'pclc (ξ=0.954, λ=0.135)'. Where one is still longer than MAX_LABEL_CHARS, or two would read the same,
    every pair is named by its name alone where those differ, else by its rank ('pclc #3', `ranks` or else the
    position, from 1). The key maps
    each label that leaves something out to the pair's full label (`variant_label`).

    >>> config_labels([("pclc", "ξ=0.954333, λ=0.05"), ("pclc", "ξ=0.99, λ=0.05")])
    (['pclc (ξ=0.954)', 'pclc (ξ=0.99)'], {'pclc (ξ=0.954)': 'pclc (ξ=0.954333, λ=0.05)', 'pclc (ξ=0.99)': 'pclc (ξ=0.99, λ=0.05)'})
    """
    knobs = [_knobs(config) for _, config in pairs]
    names = list(dict.fromkeys(k for kv in knobs for k in kv))
    varying = [k for k in names if len({kv.get(k) for kv in knobs}) > 1]
    labels = []
    for (name, _), kv in zip(pairs, knobs):
        said = ", ".join(f"{k}={short_numbers(kv[k])}" for k in varying if k in kv)
        labels.append(f"{name} ({said})" if said else name)
    if len(set(labels)) < len(labels) or any(len(label) > MAX_LABEL_CHARS for label in labels):
        names = [name for name, _ in pairs]
        if len(set(names)) == len(names):  # the names alone tell them apart (one configuration each)
            labels = names
        else:
            labels = [f"{name} #{rank}" for name, rank in zip(names, ranks or range(1, len(pairs) + 1))]
    full = [variant_label(name, config) for name, config in pairs]
    return labels, {label: whole for label, whole in zip(labels, full) if label != whole}


def _renderer(fig: Figure):  # noqa: ANN202 (matplotlib's RendererAgg)
    """The Agg renderer save_figure draws with, to measure texts before the figure is saved."""
    canvas = fig.canvas if isinstance(fig.canvas, FigureCanvasAgg) else FigureCanvasAgg(fig)
    return canvas.get_renderer()


def _legend(fig: Figure, *, title: str | None = None, below: bool = False) -> None:
    """One legend for the figure, outside the axes (constrained layout makes room for it): at the right, or below
    in as many columns as fit where it would take more than LEGEND_SHARE of the width (or `below`)."""
    handles, labels = [], []
    for ax in fig.axes:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in labels and not lab.startswith("_"):
                handles.append(h)
                labels.append(lab)
    if not handles:
        return
    legend = fig.legend(handles, labels, loc="outside right upper", fontsize="small", title=title)
    width = legend.get_window_extent(_renderer(fig)).width
    if below or width > LEGEND_SHARE * fig.bbox.width:
        legend.remove()
        ncols = max(1, min(len(labels), int(0.95 * fig.bbox.width // width)))
        fig.legend(handles, labels, loc="outside lower center", fontsize="small", title=title, ncols=ncols)


def _fit_texts(fig: Figure) -> None:
    """Wrap each title and axis label that is wider than what it names (its axes, or the figure for the
    suptitle), so none runs past its axes into a legend or a neighbour; constrained layout then makes room."""
    for _ in range(2):  # wrapping moves the layout a little: measure once more
        fig.draw_without_rendering()
        renderer = _renderer(fig)
        room = [(fig._suptitle, fig.bbox.width)] if fig._suptitle is not None else []
        for ax in fig.axes:
            if ax.get_visible():
                box = ax.get_window_extent()
                room += [(ax.title, box.width), (ax.xaxis.label, box.width), (ax.yaxis.label, box.height)]
        for text, space in room:
            if not text.get_text() or not text.get_visible():
                continue
            extent = text.get_window_extent(renderer)
            size = extent.height if text.get_rotation() % 180 else extent.width
            if size > space:
                lines = text.get_text().splitlines()
                chars = max(12, int(max(map(len, lines)) * space / size * 0.95))
                text.set_text("\n".join(textwrap.fill(line, chars) for line in lines))


def _new_figure(width: float, height: float) -> KeyedFigure:
    """A figure no wider than the report's column (MAX_WIDTH_IN), so it is shown at its own size."""
    return KeyedFigure(figsize=(min(width, MAX_WIDTH_IN), height), layout="constrained", dpi=DPI)


def _band(ax, x: np.ndarray, s: pd.DataFrame, k: float, color: object) -> None:
    ci = s["ci"].to_numpy(dtype=float)
    if np.isfinite(ci).any():
        mean = s["mean"].to_numpy(dtype=float)
        ax.fill_between(x, (mean - ci) * k, (mean + ci) * k, color=color, alpha=0.18, linewidth=0)


# --------------------------------------------------------------------------- robust accuracy vs ξ and λ


def robust_vs_knob(sweep: Sweep, knob: str) -> Figure:
    """Headline metric against ξ (`margin`) or λ (`lc_weight`): a line per variant (and value of the other
    knob), mean and 95% t-interval over seeds; variants that do not vary the knob as horizontal references."""
    headline, trials = sweep.headline, sweep.trials
    sym = SYMBOL.get(knob, knob)
    if knob not in sweep.config_params:
        raise NotApplicable(f"{sym} ({knob}) has one value in this sweep")
    k = scale(headline)
    colors = variant_colors(sweep.variants)
    values = trials[knob].dropna()
    log = bool(len(values) and values.min() > 0 and values.max() / values.min() >= 20)
    fig = _new_figure(8.0, 4.6)
    ax = fig.add_subplot()
    n_max, drew = 0, 0
    styles = ["-", "--", ":", "-."]
    for variant in sweep.variants:
        sub = trials[trials["variant"] == variant]
        color = colors[variant]
        if sub[knob].nunique() < 2:
            if sub["config"].nunique() == 1:  # one configuration (e.g. ce): a reference level
                s = summarize(sub, ["variant"], headline).iloc[0]
                n_max = max(n_max, int(s["n"]))
                ax.axhline(
                    s["mean"] * k,
                    color=color,
                    linestyle=":",
                    linewidth=1.5,
                    label=f"{variant} ({sym} not varied; n={int(s['n'])})",
                )
                if math.isfinite(s["ci"]):
                    ax.axhspan((s["mean"] - s["ci"]) * k, (s["mean"] + s["ci"]) * k, color=color, alpha=0.08)
            continue
        others = [p for p in sweep.config_params if p != knob and sub[p].nunique() > 1]
        groups = list(sub.groupby(others, sort=True)) if others else [((), sub)]
        if len(groups) > MAX_LINES:  # e.g. an Optuna search: every trial differs in other knobs too
            ax.scatter(
                sub[knob],
                sub[headline] * k,
                color=color,
                s=22,
                alpha=0.8,
                label=f"{variant}: single trials (other knobs vary too)",
            )
            drew += 1
            continue
        for i, (key, part) in enumerate(groups):
            s = summarize(part, [knob], headline).sort_values(knob)
            n_max = max(n_max, int(s["n"].max()))
            key = key if isinstance(key, tuple) else (key,)
            extra = ", ".join(f"{SYMBOL.get(p, p)}={short_numbers(fmt_value(v))}" for p, v in zip(others, key))
            x = s[knob].to_numpy(dtype=float)
            ax.plot(
                x,
                s["mean"] * k,
                marker="o",
                color=color,
                linestyle=styles[i % len(styles)],
                label=f"{variant}" + (f" ({extra})" if extra else ""),
            )
            _band(ax, x, s, k, color)
            drew += 1
    if drew == 0:
        raise NotApplicable(f"no variant has two or more values of {sym}")
    if log:
        ax.set_xscale("log")
    ax.set_xlabel(knob_label(knob, log=log))
    ax.set_ylabel(metric_label(sweep, headline))
    ax.set_title(f"{headline} vs {sym} — {_interval_note(n_max)}")
    ax.grid(alpha=0.3)
    _legend(fig)
    return fig


# --------------------------------------------------------------------------- ablation curves


def attack_rank(attack: str) -> tuple[int, int, str]:
    """Sort key of attack names: the registry's order (classic, then AutoAttack-grade), unknown names
    alphabetically, the aggregates (worst, worst_classic, worst_aa) last."""
    if attack in M.AGGREGATES:
        return (2, M.AGGREGATES.index(attack), attack)
    from pclc.attacks import ATTACKS  # the registry's order (advertorch and the reference AutoAttack load here)

    return (0, ATTACKS.index(attack), attack) if attack in ATTACKS else (1, 0, attack)


def _attack_order(attacks: list[str]) -> list[str]:
    return sorted(attacks, key=attack_rank)


def robust_vs_eps(sweep: Sweep) -> Figure:
    """Robust accuracy against ε, one panel per attack and one for the worst cases (every attack solid, the
    classic and AutoAttack-grade families dashed/dotted), a line per variant at its best configuration,
    mean and 95% t-interval over seeds."""
    long = sweep.robust_long()
    if long.empty:
        raise NotApplicable("no robust_acc/<attack>/eps=<eps> metrics in the analysed runs")
    if long["eps"].nunique() < 2:
        raise NotApplicable(f"one eps only ({fmt_value(float(long['eps'].iloc[0]))}): see the ablation table")
    best = best_configs(sweep)[["variant", "config"]]
    long = long.merge(best, on=["variant", "config"])
    present = _attack_order(list(long["attack"].unique()))
    aggregates = [a for a in present if a in M.AGGREGATES]
    panels = [[a] for a in present if a not in M.AGGREGATES] + ([aggregates] if aggregates else [])
    ncols = min(3, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    fig = _new_figure(3.2 * ncols + 0.6, 2.8 * nrows + 1.6)  # the legend goes below: the panels take the width
    axes = fig.subplots(nrows, ncols, sharex=True, sharey=True, squeeze=False).ravel()
    colors = variant_colors(sweep.variants)
    best = best.sort_values("variant", key=lambda c: c.map(variant_sort_key), kind="stable")
    short, fig.key = config_labels(list(zip(best["variant"], best["config"])))
    labels = dict(zip(best["variant"], short))
    n_max = 0
    for ax, attacks in zip(axes, panels):
        for attack in attacks:
            part = long[long["attack"] == attack]
            for variant in sorted(part["variant"].unique(), key=variant_sort_key):
                s = summarize(part[part["variant"] == variant], ["eps"], "value").sort_values("eps")
                n_max = max(n_max, int(s["n"].max()))
                x = s["eps"].to_numpy(dtype=float)
                line, marker = AGGREGATE_STYLE.get(attack, ("-", "o"))
                ax.plot(x, s["mean"] * 100, marker=marker, linestyle=line, color=colors[variant], label=labels[variant])
                _band(ax, x, s, 100.0, colors[variant])
        if len(attacks) > 1:  # several worst cases share the panel: a legend entry per line style
            for attack in attacks:
                line, marker = AGGREGATE_STYLE[attack]
                ax.plot([], [], color="0.3", linestyle=line, marker=marker, label=AGGREGATE_LABEL[attack])
        ax.set_title("worst case over attacks" if attacks[0] in M.AGGREGATES else attacks[0])
        ax.grid(alpha=0.3)
    for ax in axes[len(panels) :]:
        ax.set_visible(False)
    for i, ax in enumerate(axes[: len(panels)]):
        if i + ncols >= len(panels):  # no panel below: this one carries the ε axis
            ax.xaxis.set_tick_params(labelbottom=True)
            ax.set_xlabel("ε (L∞ radius, pixel scale [0, 1])")
        if i % ncols == 0:
            ax.set_ylabel("robust accuracy (%)")
    fig.suptitle(f"Robust accuracy vs ε per loss variant (best configuration each; {_interval_note(n_max)})")
    _legend(fig, title="variant", below=True)
    return fig


# --------------------------------------------------------------------------- claimed vs AutoAttack-grade

CLAIMED_LABEL = "claimed: worst classic attack (open)"
AA_LABEL = "AutoAttack-grade (filled)"


def claimed_vs_autoattack(sweep: Sweep) -> Figure:
    """Per configuration, at the headline ε, the robust accuracy the paper's classic attacks claim beside
    what AutoAttack-grade attacks leave: a dumbbell each, mean and 95% t-interval over seeds, the gap written
    beside it (what a classic-only evaluation overstates)."""
    pair = [M.ROBUST_ACC_CLASSIC, M.ROBUST_ACC_AA]
    missing = [m for m in pair if m not in sweep.trials]
    if missing:
        raise NotApplicable(
            f"the runs have no {' or '.join(missing)}: a sweep from before the AutoAttack-grade evaluation"
        )
    data = sweep.trials.dropna(subset=pair)
    if data.empty:
        raise NotApplicable(f"no run has both {pair[0]} and {pair[1]} (both attack families at the headline ε)")
    keys = ["variant", "config"]
    stats = {m: summarize(data, keys, m).set_index(keys) for m in (*pair, sweep.headline)}
    ascending = sweep.direction(sweep.headline) == "min"
    ranked = stats[sweep.headline]["mean"].sort_values(ascending=ascending, kind="stable")
    chosen = sorted(ranked.index[:MAX_DUMBBELLS], key=lambda vc: (variant_sort_key(vc[0]), vc[1]))
    rank = {vc: i for i, vc in enumerate(ranked.index, 1)}  # by the headline, best first: '#1' where labels are ranks
    labels, key = config_labels(chosen, ranks=[rank[vc] for vc in chosen])
    by_rank = all(label == f"{v} #{rank[(v, c)]}" for label, (v, c) in zip(labels, chosen))
    if by_rank:  # ranks for labels: in rank order within each variant, the best on top of its group
        order = sorted(range(len(chosen)), key=lambda i: (variant_sort_key(chosen[i][0]), rank[chosen[i]]))
        chosen, labels = [chosen[i] for i in order], [labels[i] for i in order]
    claimed, real = (stats[m].loc[chosen] for m in pair)
    colors = variant_colors(sweep.variants)
    fig = _new_figure(9.6, 0.42 * len(chosen) + 2.4)
    fig.key = key
    ax = fig.add_subplot()
    y = np.arange(len(chosen))
    for variant in sorted({v for v, _ in chosen}, key=variant_sort_key):
        rows = [i for i, (v, _) in enumerate(chosen) if v == variant]
        c, a, color = claimed.iloc[rows], real.iloc[rows], colors[variant]
        ax.hlines(y[rows], a["mean"] * 100, c["mean"] * 100, color=color, linewidth=2.5, alpha=0.45)
        ax.errorbar(
            c["mean"] * 100,
            y[rows],
            xerr=c["ci"].fillna(0) * 100,
            fmt="o",
            markerfacecolor="white",
            markeredgecolor=color,
            ecolor=color,
            capsize=3,
            label=f"_claimed {variant}",
        )
        ax.errorbar(
            a["mean"] * 100, y[rows], xerr=a["ci"].fillna(0) * 100, fmt="o", color=color, capsize=3, label=variant
        )
    rights = []
    for i, ((_, c), (_, a)) in enumerate(zip(claimed.iterrows(), real.iterrows())):
        right = max(c["mean"] + _finite_or_zero(c["ci"]), a["mean"] + _finite_or_zero(a["ci"])) * 100
        rights.append(right)
        ax.annotate(
            f"{(c['mean'] - a['mean']) * 100:+.1f} pp",
            (right, i),
            xytext=(6, 0),
            textcoords="offset points",
            va="center",
            fontsize="small",
        )
    low, high = ax.get_xlim()
    ax.set_xlim(low, max(high, max(rights) + 0.14 * (max(rights) - low)))  # room for the gaps' '+8.5 pp'
    ax.plot([], [], "o", markerfacecolor="white", markeredgecolor="0.3", label=CLAIMED_LABEL)
    ax.plot([], [], "o", color="0.3", label=AA_LABEL)
    ax.set_yticks(y, labels)
    ax.invert_yaxis()  # the paper's variant order top to bottom
    eps = sweep.headline_eps
    ax.set_xlabel(f"robust accuracy{f' at ε={fmt_value(eps)}' if eps is not None else ' at the headline ε'} (%)")
    ax.set_ylabel(f"configuration: variant #rank by {sweep.headline}" if by_rank else "loss variant (configuration)")
    n_max = int(max(claimed["n"].max(), real["n"].max()))
    cut = len(ranked) > len(chosen)
    shown = f"; best {len(chosen)} of {len(ranked)} configurations by {sweep.headline}" if cut else ""
    ax.set_title(f"Claimed (classic) vs AutoAttack-grade robust accuracy\n{_interval_note(n_max)}; gap in pp{shown}")
    ax.grid(axis="x", alpha=0.3)
    _legend(fig, below=True)  # below: a legend at the right would sit beside the title
    return fig


def _finite_or_zero(value: float) -> float:
    return float(value) if math.isfinite(value) else 0.0


# --------------------------------------------------------------------------- clean vs robust, Pareto front


def _authors_default(trials: pd.DataFrame) -> pd.Series:
    if not {"loss", "margin", "lc_weight"} <= set(trials.columns):
        return pd.Series(False, index=trials.index)
    return (
        (trials["loss"] == AUTHORS_LOSS)
        & np.isclose(trials["margin"].astype(float), AUTHORS_MARGIN)
        & np.isclose(trials["lc_weight"].astype(float), AUTHORS_LC_WEIGHT)
    )


# The trade-off plot: the Pareto front as a ringed line, the authors' default as a gold star on top.
FRONT_STYLE: dict[str, object] = {
    "color": "black",
    "linewidth": 1.2,
    "marker": "o",
    "markerfacecolor": "none",
    "markersize": 9,
}
DEFAULT_STYLE: dict[str, object] = {
    "marker": "*",
    "s": 260,
    "facecolor": "gold",
    "edgecolor": "black",
    "linewidth": 0.8,
    "zorder": 5,
}


def clean_vs_robust(sweep: Sweep) -> Figure:
    """Every analysed trial, clean against robust accuracy, the Pareto front drawn, the authors' default marked."""
    y_metric = sweep.headline if sweep.headline != M.CLEAN_ACC else M.ROBUST_ACC
    trials = sweep.trials
    if M.CLEAN_ACC not in trials or y_metric not in trials:
        raise NotApplicable(f"needs both {M.CLEAN_ACC} and {y_metric}")
    data = trials.dropna(subset=[M.CLEAN_ACC, y_metric])
    if data.empty:
        raise NotApplicable(f"no run has both {M.CLEAN_ACC} and {y_metric}")
    colors = variant_colors(sweep.variants)
    kx, ky = scale(M.CLEAN_ACC), scale(y_metric)
    fig = _new_figure(9.6, 5.2)
    ax = fig.add_subplot()
    for variant in sweep.variants:
        part = data[data["variant"] == variant]
        ax.scatter(
            part[M.CLEAN_ACC] * kx,
            part[y_metric] * ky,
            color=colors[variant],
            s=26,
            alpha=0.8,
            label=f"{variant} ({len(part)} trials)",
        )
    points = data[[M.CLEAN_ACC, y_metric]].to_numpy(dtype=float)
    maximize = [sweep.direction(M.CLEAN_ACC) == "max", sweep.direction(y_metric) == "max"]
    front = data[pareto_mask(points, maximize)].sort_values(M.CLEAN_ACC)
    ax.plot(front[M.CLEAN_ACC] * kx, front[y_metric] * ky, **FRONT_STYLE, label=f"Pareto front ({len(front)} trials)")
    default = data[_authors_default(data)]
    label = f"authors' default ({AUTHORS_LOSS}, ξ={AUTHORS_MARGIN:g}, λ={AUTHORS_LC_WEIGHT:g})"
    if len(default):
        ax.scatter(
            default[M.CLEAN_ACC] * kx, default[y_metric] * ky, **DEFAULT_STYLE, label=f"{label}, {len(default)} trials"
        )
    else:
        ax.plot([], [], marker="*", linestyle="none", color="gold", label=f"{label}: not in this sweep")
    ax.set_xlabel(metric_label(sweep, M.CLEAN_ACC))
    ax.set_ylabel(metric_label(sweep, y_metric))
    ax.set_title(f"Clean vs robust accuracy: {len(data)} trials, Pareto front in black")
    ax.grid(alpha=0.3)
    _legend(fig)
    return fig


# --------------------------------------------------------------------------- ξ × λ heatmap


def _axis_bins(values: pd.Series, *, log: bool) -> tuple[pd.Series, list[str]]:
    """Category index per value and tick labels: the values themselves, or ≤ 6 bins when there are many."""
    uniq = np.sort(values.dropna().unique())
    if len(uniq) <= MAX_HEATMAP_CELLS:
        index = {v: i for i, v in enumerate(uniq)}
        return values.map(index), [fmt_value(float(v)) for v in uniq]
    edges = np.geomspace(uniq[0], uniq[-1], 7) if log else np.linspace(uniq[0], uniq[-1], 7)
    idx = np.clip(np.searchsorted(edges, values.to_numpy(dtype=float), side="right") - 1, 0, 5)
    return pd.Series(idx, index=values.index), [f"{edges[i]:.3g}–{edges[i + 1]:.3g}" for i in range(6)]


def heatmap_margin_lc(sweep: Sweep) -> Figure:
    """Mean headline metric over seeds on the ξ × λ grid (of the variant that varies both, pclc first)."""
    headline, trials = sweep.headline, sweep.trials
    if not {"margin", "lc_weight"} <= set(trials.columns):
        raise NotApplicable("the runs have no margin/lc_weight params")
    both = [
        v
        for v in sweep.variants
        if (p := trials[trials["variant"] == v])["margin"].nunique() > 1 and p["lc_weight"].nunique() > 1
    ]
    if not both:
        n_xi, n_lam = trials["margin"].nunique(), trials["lc_weight"].nunique()
        raise NotApplicable(
            f"needs two or more values of both ξ and λ within one variant (the sweep has {n_xi} ξ and {n_lam} λ)"
        )
    variant = AUTHORS_LOSS if AUTHORS_LOSS in both else both[0]
    part = trials[trials["variant"] == variant]
    lam = part["lc_weight"].astype(float)
    log_lam = bool(lam.min() > 0)
    yi, ylabels = _axis_bins(part["margin"].astype(float), log=False)
    xi, xlabels = _axis_bins(lam, log=log_lam)
    cells = pd.DataFrame({"y": yi, "x": xi, "v": part[headline]}).dropna()
    grid = np.full((len(ylabels), len(xlabels)), np.nan)
    count = np.zeros_like(grid, dtype=int)
    for (y, x), g in cells.groupby(["y", "x"]):
        grid[int(y), int(x)] = g["v"].mean()
        count[int(y), int(x)] = len(g)
    k = scale(headline)
    fig = _new_figure(1.1 * len(xlabels) + 3.8, 0.6 * len(ylabels) + 2.6)
    ax = fig.add_subplot()
    image = ax.imshow(np.ma.masked_invalid(grid * k), cmap="viridis", aspect="auto", origin="lower")
    for (y, x), v in np.ndenumerate(grid):
        text = "–" if not math.isfinite(v) else f"{v * k:.1f}\nn={count[y, x]}"
        ax.text(
            x,
            y,
            text,
            ha="center",
            va="center",
            fontsize="small",
            color="white" if math.isfinite(v) and v <= np.nanmean(grid) else "black",
        )
    ax.set_xticks(range(len(xlabels)), xlabels, rotation=30 if len(xlabels) > 5 else 0)
    ax.set_yticks(range(len(ylabels)), ylabels)
    ax.set_xlabel(knob_label("lc_weight"))
    ax.set_ylabel(knob_label("margin"))
    fig.colorbar(image, ax=ax, label=metric_label(sweep, headline))
    binned = max(part["margin"].nunique(), part["lc_weight"].nunique()) > MAX_HEATMAP_CELLS
    what = "mean of the trials in each bin" if binned else "mean over seeds"
    ax.set_title(f"{headline}, {what}: ξ × λ ({variant})")
    return fig


# --------------------------------------------------------------------------- fANOVA importance


def importance(sweep: Sweep) -> Figure:
    """Share of the headline metric's variance each parameter explains (Optuna's fANOVA over finished trials)."""
    import optuna
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    headline, trials = sweep.headline, sweep.trials
    params = (["variant"] if trials["variant"].nunique() > 1 else []) + [
        p for p in sweep.config_params if trials[p].notna().all()
    ]
    if len(params) < 2:
        raise NotApplicable(f"needs two or more varying parameters; this sweep varies {params or 'none'}")
    if len(trials) < MIN_IMPORTANCE_TRIALS:
        raise NotApplicable(f"needs at least {MIN_IMPORTANCE_TRIALS} finished trials; there are {len(trials)}")
    if SEED in trials and trials[SEED].nunique() > 1:
        params = params + [SEED]  # a reference: what the seed alone "explains" is noise
    dists: dict[str, object] = {}
    values: dict[str, Callable[[object], object]] = {}
    for p in params:
        col = trials[p]
        if pd.api.types.is_integer_dtype(col):
            dists[p], values[p] = IntDistribution(int(col.min()), int(col.max())), int
        elif pd.api.types.is_float_dtype(col):
            dists[p], values[p] = FloatDistribution(float(col.min()), float(col.max())), float
        else:
            dists[p], values[p] = CategoricalDistribution(sorted({str(v) for v in col})), str
    optuna.logging.set_verbosity(logging.WARNING)
    study = optuna.create_study(direction="minimize" if sweep.direction(headline) == "min" else "maximize")
    for _, row in trials.iterrows():
        study.add_trial(
            optuna.trial.create_trial(
                params={p: values[p](row[p]) for p in params}, distributions=dists, value=float(row[headline])
            )
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scores = optuna.importance.get_param_importances(
            study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0), normalize=True
        )
    names = list(scores)[::-1]
    fig = _new_figure(7.0, 0.45 * len(names) + 1.8)
    ax = fig.add_subplot()
    colors = ["0.6" if n == SEED else "tab:blue" for n in names]
    labels = [f"{SYMBOL[n]} ({n})" if n in SYMBOL else ("seed (noise reference)" if n == SEED else n) for n in names]
    bars = ax.barh(labels, [scores[n] for n in names], color=colors)
    ax.bar_label(bars, fmt="%.2f", padding=2, fontsize="small")
    ax.set_xlim(0, max(1.0, max(scores.values()) * 1.15))
    ax.set_xlabel(f"share of {headline} variance explained (fANOVA, sums to 1)")
    ax.set_ylabel("parameter")
    ax.set_title(f"Parameter importance for {headline} ({len(trials)} finished trials)")
    return fig


# --------------------------------------------------------------------------- the paper's two analyses


def gap_and_second_class(sweep: Sweep) -> Figure:
    """Probability gap and second-most-probable-class rate per variant (best configuration each), ± 95% CI."""
    trials = sweep.trials
    second = sorted(
        (m for m in sweep.metrics if m.startswith("second_class_rate/")), key=lambda m: attack_rank(m.split("/", 1)[1])
    )
    has_gap = M.PROB_GAP in trials and trials[M.PROB_GAP].notna().any()
    second = [m for m in second if trials[m].notna().any()]
    if not has_gap and not second:
        raise NotApplicable("no prob_gap or second_class_rate/<attack> metrics in the analysed runs")
    best = best_configs(sweep)[["variant", "config"]]
    chosen = trials.merge(best, on=["variant", "config"])
    variants = sorted(chosen["variant"].unique(), key=variant_sort_key)
    colors = variant_colors(sweep.variants)
    panels = int(has_gap) + int(bool(second))
    fig = _new_figure(3.2 + 0.5 * len(variants) + (1.0 * len(second) if second else 0) + 2.4, 4.2)
    axes = fig.subplots(1, panels, squeeze=False, width_ratios=[1] * panels if panels == 1 else [1, 2]).ravel()
    n_max = 0
    if has_gap:
        ax = axes[0]
        s = summarize(chosen, ["variant"], M.PROB_GAP).set_index("variant").reindex(variants)
        n_max = max(n_max, int(s["n"].max()))
        ax.bar(
            range(len(variants)),
            s["mean"],
            yerr=s["ci"].fillna(0),
            capsize=4,
            color=[colors[v] for v in variants],
            label="_",
        )
        ax.set_xticks(range(len(variants)), variants)
        ax.set_xlabel("loss variant")
        ax.set_ylabel(metric_label(sweep, M.PROB_GAP))
        ax.set_title("Probability gap on clean test data")
        ax.grid(axis="y", alpha=0.3)
    if second:
        ax = axes[-1]
        attacks = [m.split("/", 1)[1] for m in second]
        width = 0.8 / max(1, len(variants))
        for i, v in enumerate(variants):
            means, cis = [], []
            for m in second:
                s = summarize(chosen[chosen["variant"] == v], ["variant"], m)
                means.append(float(s["mean"].iloc[0]) * 100 if len(s) else math.nan)
                cis.append(float(s["ci"].iloc[0]) * 100 if len(s) and math.isfinite(s["ci"].iloc[0]) else 0.0)
                n_max = max(n_max, int(s["n"].iloc[0]) if len(s) else 0)
            x = np.arange(len(second)) + (i - (len(variants) - 1) / 2) * width
            ax.bar(x, means, width=width, yerr=cis, capsize=3, color=colors[v], label=v)
        ax.set_xticks(range(len(second)), attacks)
        ax.set_xlabel("attack (at the headline ε)")
        ax.set_ylabel("successful adversarials landing in the\nsecond most probable class (%)")
        ax.set_ylim(0, 105)
        ax.set_title("Second-class rate")
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(f"The paper's two analyses per loss variant (best configuration each; {_interval_note(n_max)})")
    _legend(fig, title="variant")
    return fig


# --------------------------------------------------------------------------- what W&B and Optuna's dashboard show first


def _axis_values(col: pd.Series) -> tuple[np.ndarray, list[str], bool]:
    """A knob's values mapped to [0, 1] (log where it spans decades; categories evenly), the end labels, and
    whether the axis is logarithmic."""
    if pd.api.types.is_numeric_dtype(col) and not pd.api.types.is_bool_dtype(col):
        x = col.astype(float).to_numpy()
        lo, hi = float(np.nanmin(x)), float(np.nanmax(x))
        log = lo > 0 and hi / lo >= 20
        if log:
            x, lo_t, hi_t = np.log10(x), math.log10(lo), math.log10(hi)
        else:
            lo_t, hi_t = lo, hi
        span = hi_t - lo_t or 1.0
        return (x - lo_t) / span, [short_numbers(fmt_value(lo)), short_numbers(fmt_value(hi))], log
    names = sorted({str(v) for v in col})
    codes = {n: i for i, n in enumerate(names)}
    return np.array([codes[str(v)] / max(1, len(names) - 1) for v in col]), names, False


def parallel_coordinates(sweep: Sweep) -> Figure:
    """Each finished trial as a line through its searched knobs to the objective, coloured by the objective."""
    headline, trials = sweep.headline, sweep.trials
    knobs = [p for p in sweep.config_params if trials[p].notna().all()]
    if trials["variant"].nunique() > 1:
        knobs = ["variant", *knobs]
    if not knobs:
        raise NotApplicable("no knob varies between the finished trials")
    if len(trials) < 2:
        raise NotApplicable(f"needs two or more finished trials; there are {len(trials)}")
    axes_data = [_axis_values(trials[k]) for k in knobs] + [_axis_values(trials[headline] * scale(headline))]
    names = [knob_label(k, log=log) for k, (_, _, log) in zip(knobs, axes_data)] + [metric_label(sweep, headline)]
    ys = np.vstack([v for v, _, _ in axes_data])  # axes × trials
    objective = trials[headline].to_numpy(float)
    fig = _new_figure(1.9 * len(names) + 2.0, 4.8)
    ax = fig.add_subplot()
    cmap = matplotlib.colormaps["viridis"]
    lo, hi = float(np.nanmin(objective)), float(np.nanmax(objective))
    norm = Normalize(lo * scale(headline), (hi if hi > lo else lo + 1e-9) * scale(headline))
    best_first = np.argsort(objective if sweep.direction(headline) == "max" else -objective)  # best drawn last, on top
    xs = np.arange(len(names))
    for j in best_first:
        ax.plot(xs, ys[:, j], color=cmap(norm(objective[j] * scale(headline))), alpha=0.75, lw=1.4)
    for i, (_, ends, _) in enumerate(axes_data):
        ax.axvline(i, color="0.3", lw=0.8)
        numeric = i == len(knobs) or pd.api.types.is_numeric_dtype(trials[knobs[i]])
        if numeric:  # a range: its ends at the axis' ends
            ax.text(i, -0.04, ends[0], ha="center", va="top", fontsize="small")
            ax.text(i, 1.04, ends[1], ha="center", va="bottom", fontsize="small")
        else:  # categories: each name where its lines cross the axis
            for k, name in enumerate(ends):
                ax.text(i + 0.04, k / max(1, len(ends) - 1), name, ha="left", va="center", fontsize="small")
    per_axis = fig.get_figwidth() * 0.8 / len(names)  # inches between two axes, less the colour bar
    ax.set_xticks(xs, [textwrap.fill(n, max(10, int(per_axis * 12))) for n in names], fontsize="small")
    ax.set_yticks([])
    ax.set_ylim(-0.12, 1.12)
    ax.set_xlim(-0.2, len(names) - 0.8)
    ax.set_xlabel("the searched knobs, then the objective")
    ax.set_ylabel("each axis from its lowest to its highest value")
    fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=ax, label=metric_label(sweep, headline))
    ax.set_title(f"Searched knobs against {headline} ({len(trials)} finished trials; best on top)")
    return fig


def stop_points(history: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """Where each trial the scheduler stopped early stopped: run_id, epoch, value (its last reported epoch).

    A stopped trial is a KILLED run with the tag `pclc.stopped_early` = true; a run killed any other way
    (a user's Ctrl-C, a failure) is not marked.
    """
    stopped = runs.loc[(runs["outcome"] == STOPPED) & runs["stopped_early"].astype(bool), "run_id"]
    last = history[history["run_id"].isin(set(stopped))].sort_values("epoch").groupby("run_id").tail(1)
    return last[["run_id", "epoch", "value"]].reset_index(drop=True)


def learning_curves(sweep: Sweep) -> Figure:
    """The per-epoch signal the scheduler reads, per trial; trials ASHA stopped end in a red ×."""
    metric = next((m for m in (M.EPOCH_ROBUST_ACC, M.CLEAN_ACC) if m in sweep.metrics), None)
    if metric is None:
        raise NotApplicable(f"the runs hold no per-epoch {M.EPOCH_ROBUST_ACC} or {M.CLEAN_ACC}")
    history = sweep.epoch_history(metric)
    if history.empty or history["epoch"].nunique() < 2:
        raise NotApplicable(f"needs {metric} over two or more epochs")
    runs = sweep.runs[sweep.runs["outcome"].isin([FINISHED, STOPPED])]
    history = history[history["run_id"].isin(set(runs["run_id"]))]
    stops = stop_points(history, runs)
    colors = variant_colors(sorted(runs["variant"].unique(), key=variant_sort_key))
    variant = dict(zip(runs["run_id"], runs["variant"]))
    k = scale(metric)
    fig = _new_figure(7.5, 4.4)
    ax = fig.add_subplot()
    for run_id, curve in history.groupby("run_id"):
        stopped = run_id in set(stops["run_id"])
        ax.plot(
            curve["epoch"],
            curve["value"] * k,
            color=colors[variant[run_id]],
            alpha=0.45 if stopped else 0.85,
            lw=1.0 if stopped else 1.6,
            ls="--" if stopped else "-",
        )
    if len(stops):
        ax.scatter(
            stops["epoch"],
            stops["value"] * k,
            marker="x",
            s=60,
            color="tab:red",
            zorder=5,
            label=f"stopped by the scheduler ({len(stops)})",
        )
    for v in colors:
        ax.plot([], [], color=colors[v], label=v)
    ax.set_xlabel("epoch")
    ax.set_ylabel(metric_label(sweep, metric))
    ax.grid(alpha=0.3)
    n_finished = int((runs["outcome"] == FINISHED).sum())
    ax.set_title(f"Learning curves of {metric}: {n_finished} finished, {len(stops)} stopped early")
    _legend(fig, title="variant")
    return fig


def arm_curves(sweep: Sweep, judged: Verdict) -> Figure:
    """Each arm of the verdict `judged` (confirmed configurations and references, or the ablation's grid points):
    its per-epoch signal, mean and 95 % interval over seeds, and at its last epoch the final AutoAttack-checked
    headline with its interval, the very one the report's table gives. A curve that peaks before the end says the
    arm trained too long; the gap between the curve's end and the final marker is how much the cheap signal
    overstates."""
    arms = [a for a in judged.arms if a.curve is not None and len(a.curve) >= 2]
    if not arms:
        raise NotApplicable(f"needs the verdict's arms with a per-epoch {M.EPOCH_ROBUST_ACC} over two or more epochs")
    arms = sorted(arms, key=lambda a: -a.estimate.value)[:8]
    names = [a.name if a.reference in (None, a.name) else f"{a.reference} = {a.name}" for a in arms]
    labels, key = config_labels([(n, a.config) for n, a in zip(names, arms)])  # ranks by the final value
    colors = dict(zip(labels, matplotlib.colormaps["tab10"].colors))
    k = 100.0
    fig = _new_figure(8.5, 4.6)
    fig.key = key
    ax = fig.add_subplot()
    for arm, name in zip(arms, labels):
        c, color = arm.curve, colors[name]
        ax.plot(c["epoch"], c["mean"] * k, color=color, lw=1.8, marker="o", ms=3, label=name)  # the cadence's points
        ax.fill_between(c["epoch"], c["low"] * k, c["high"] * k, color=color, alpha=0.12, lw=0)
        est, last = arm.estimate, int(c["epoch"].max())
        err = None if not np.isfinite(est.low) else [[(est.value - est.low) * k], [(est.high - est.value) * k]]
        ax.errorbar([last + 0.2], [est.value * k], yerr=err, fmt="D", color=color, ms=6, capsize=3, zorder=5)
        best, _ = arm.best_epoch or (last, last)
        ax.scatter([best], [float(c.loc[c["epoch"] == best, "mean"].iloc[0]) * k], marker="^", s=45, color=color)
    ax.plot([], [], "D", color="0.3", label=f"final {judged.metric}, 95 %")
    ax.plot([], [], "^", color="0.3", lw=0, label="signal's best epoch")
    ax.set_xlabel("epoch")
    ax.set_ylabel("robust accuracy (%)")
    ax.grid(alpha=0.3)
    points = max(len(a.curve) for a in arms)
    ax.set_title(
        f"Per-epoch {judged.signal} per arm (mean over seeds, at its {points} signal epochs) and the final "
        f"{judged.metric}",
        fontsize=10,
    )
    _legend(fig, title=f"arm ({judged.source})")
    return fig


# --------------------------------------------------------------------------- all of them


# Each builds from the sweep and its verdict (computed once, by the caller: the report shows the same one).
PLOTS: list[tuple[str, str, Callable[[Sweep, Verdict], Figure]]] = [
    ("robust_vs_margin", "Robust accuracy vs ξ", lambda s, _: robust_vs_knob(s, "margin")),
    ("robust_vs_lc_weight", "Robust accuracy vs λ", lambda s, _: robust_vs_knob(s, "lc_weight")),
    ("robust_vs_eps", "Robust accuracy vs ε per loss variant", lambda s, _: robust_vs_eps(s)),
    (
        "claimed_vs_autoattack",
        "Claimed (classic attacks) vs AutoAttack-grade robust accuracy",
        lambda s, _: claimed_vs_autoattack(s),
    ),
    ("clean_vs_robust", "Clean vs robust accuracy (Pareto front)", lambda s, _: clean_vs_robust(s)),
    ("heatmap_margin_lc_weight", "ξ × λ heatmap of the headline metric", lambda s, _: heatmap_margin_lc(s)),
    ("importance", "Parameter importance (fANOVA)", lambda s, _: importance(s)),
    ("prob_gap_second_class", "Probability gap and second-class rate", lambda s, _: gap_and_second_class(s)),
    (
        "parallel_coordinates",
        "Searched knobs against the objective (parallel coordinates)",
        lambda s, _: parallel_coordinates(s),
    ),
    (
        "learning_curves",
        "Learning curves of the per-epoch signal, early-stopped trials marked",
        lambda s, _: learning_curves(s),
    ),
    ("arm_curves", "Per-epoch signal of the verdict's arms, with their final AutoAttack-checked value", arm_curves),
]


def make_plots(sweep: Sweep, judged: Verdict | None = None) -> list[Plot]:
    """Every plot of the report, in order; those that do not apply carry their reason instead of a figure.
    `judged`: the sweep's verdict as the report gives it (`analysis.report.write_report` hands it on); without
    one it is computed here from the runs alone (no per-sample outcomes)."""
    if judged is None:
        judged = verdict(sweep)
    out = []
    for name, title, build in PLOTS:
        try:
            fig = build(sweep, judged)
        except NotApplicable as why:
            out.append(Plot(name, title, reason=str(why)))
            continue
        _fit_texts(fig)
        out.append(Plot(name, title, figure=fig, key=dict(getattr(fig, "key", {}))))
    return out


def save_figure(fig: Figure, path: str | Path) -> Path:
    """Write the figure as PNG (creating the folder)."""
    path = Path(path)
    with atomic_file(path) as f:
        fig.savefig(f, dpi=DPI, format="png")
    return path
