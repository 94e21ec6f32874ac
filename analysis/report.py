"""report.md and a self-contained report.html (PNGs embedded as base64) from a Sweep, logged to its parent run.

Both files are rendered from one list of blocks, so they always say the same thing; the one exception is the
per-attack × ε detail, a table too wide for markdown, which report.md links to as CSV instead. The main
tables hold what a reader decides on (clean, AutoAttack-checked and claimed accuracy, the gap, the verdict),
ten columns at most, and a large sweep's rows are cut to the best ones plus the references; runs.csv and
configurations.csv, written beside the report, always hold everything.

One room (~1040 lines, above 800): the report's sections, their tables and the two renderers; each section is
one function of the sweep, all rendered by the same two renderers, so a new section is one function here.
"""

from __future__ import annotations

import base64
import dataclasses
import html
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from analysis.compare import ALPHA, CORRECTION_NAME, METHODS, POWER, Comparison, run_interval
from analysis.load import (
    SEED,
    TRAINING,
    AnalysisError,
    Sweep,
    fetch_outcomes,
    fetch_warnings,
    fmt_value,
    training_modes,
    training_sort_key,
    variant_label,
)
from analysis.plots import DISPLAY_WIDTH_PX, Plot, attack_rank, is_accuracy, make_plots, save_figure, short_numbers
from analysis.stats import best_configs, by_mode, config_table, pareto_mask, summarize, t_halfwidth
from analysis.verdict import Verdict, headline_outcomes, interval_name, is_checked, verdict
from pclc import contract as C
from pclc import metrics as M
from pclc.attacks import AUTOATTACK, CLASSIC
from pclc.files import write_atomic
from pclc.knobs import SYMBOL

ARTIFACT_DIR = "analysis"  # folder of the parent run's artifacts that holds the report
TOP = 10  # best configurations listed (per training mode), the references below them
MAX_ROWS = 30  # a longer table of configurations keeps its best rows and the references; the CSV keeps all
MAX_WHERE = 5  # configurations named where a masking check fired, then "and N more"
FINALIST_ROBUST = M.finalist_key(M.ROBUST_ACC)  # `pclc evaluate`'s full AutoAttack re-score of chosen trials
# How much the paper's classic attacks overstate, run by run: robust_acc_classic − robust_acc (the AutoAttack-checked
# worst case over every attack). A column of the report's own, never logged: it is derived here, once.
GAP = "claimed_gap"
# What a reader decides on, in every main table where the runs have it: clean, AutoAttack-checked and claimed
# accuracy, and the gap between the last two. robust_acc_aa and the per-attack numbers are in the detail and the CSV.
HEADLINES = (M.CLEAN_ACC, M.ROBUST_ACC, M.ROBUST_ACC_CLASSIC, GAP)
# Column headers that say more than the metric's name; any other column is headed by its name.
COLUMN = {
    M.ROBUST_ACC: "`robust_acc` (AutoAttack-checked)",
    M.ROBUST_ACC_CLASSIC: "`robust_acc_classic` (classic attacks: claimed)",
    M.ROBUST_ACC_AA: "`robust_acc_aa` (AutoAttack-grade)",
    GAP: "claimed − checked (points)",
    FINALIST_ROBUST: "full AutoAttack (finalists)",
}
RUNS_CSV, CONFIGS_CSV, VERDICT_CSV = "runs.csv", "configurations.csv", "verdict.csv"  # beside report.md
PER_CLASS_CSV = "per_class.csv"  # beside report.md: every class of the per-class table
PER_CLASS_ARMS = 2  # the per-class table shows the references and this many best other arms
PER_CLASS_ROWS = 20  # more classes than this: the rows where the arms' robust accuracies differ most


MASKED_ADVICE = (
    "Their white-box robust accuracies may overstate robustness: trust the worst case and the attacks that did not "
    "fail."
)


@dataclass(frozen=True)
class Check:
    """A gradient-masking flag as the report explains it (pclc.evaluate.masking_checks sets it)."""

    meaning: str  # what firing means, in one plain line
    numbers: tuple[tuple[str, str], ...]  # (what, metric) shown beside it: means over the runs where it fired
    advice: str = MASKED_ADVICE  # what to do about it, after the warning


# flag → (what it means when it fires, the number shown beside it, the masking/* metric of that number)
_ONE_NUMBER = {
    "blackbox_beats_whitebox": (
        "a black-box attack left less accuracy than every white-box attack: the gradients look masked",
        "black-box lead",
        "blackbox_gap",
    ),
    "ce_weaker_than_cw": (
        "PGD on cross-entropy is much weaker than PGD on the CW margin: a saturated softmax hides the gradient",
        "CE − CW gap",
        "ce_cw_gap",
    ),
    "no_collapse": (
        "PGD at a very large ε still leaves accuracy: the attack does not converge or the gradients are masked",
        "accuracy left",
        "large_eps_acc",
    ),
    "aa_zero_gradients": (
        "points whose input gradient is exactly zero under CE and the margin loss alike: their robustness is unmeasured",
        "zero-gradient points",
        "aa_zero_gradient_points",
    ),
    "aa_square_beats_whitebox": (
        "in AutoAttack, the black-box Square attack still found points after the white-box attacks had run",
        "Square's extra drop",
        "aa_square_gain",
    ),
}
CHECKS: dict[str, Check] = {
    **{flag: Check(meaning, ((what, M.masking_key(number)),)) for flag, (meaning, what, number) in _ONE_NUMBER.items()},
    "classic_overstates": Check(
        "the paper's classic attacks leave more accuracy than AutoAttack-grade attacks: the classic number overstates",
        (("classic", M.ROBUST_ACC_CLASSIC), ("AutoAttack", M.ROBUST_ACC_AA)),
        "Report the AutoAttack-grade number (the headline `robust_acc` already includes it), not the classic one.",
    ),
}

# --------------------------------------------------------------------------- blocks


@dataclass
class Heading:
    text: str
    level: int = 2


@dataclass
class Para:
    text: str


@dataclass
class Warn:
    text: str


@dataclass
class Bullets:
    items: list[str]


@dataclass
class Table:
    header: list[str]
    rows: list[list[str]]


@dataclass
class Image:
    path: Path
    title: str


@dataclass
class Detail:
    """A table too wide for markdown: shown in report.html, and in report.md as a pointer to `csv`."""

    summary: str
    table: Table
    csv: str  # the file beside the report that holds it in full


@dataclass
class Files:
    """Files written beside the report, linked from it: (file name, what it holds)."""

    items: list[tuple[str, str]]
    folder: Path


Block = Heading | Para | Warn | Bullets | Table | Image | Detail | Files


def _with_modes(table: Table, modes: list[str]) -> Table:
    """`table` with each row's training mode as its first column, where the rows (already grouped by mode) span
    more than one; a sweep of one mode reads as it always did."""
    if len(set(modes)) < 2:
        return table
    return Table([TRAINING, *table.header], [[mode, *row] for mode, row in zip(modes, table.rows)])


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _md_table(b: Table) -> str:
    out = "| " + " | ".join(_md_cell(h) for h in b.header) + " |"
    out += "\n|" + "|".join(" --- " for _ in b.header) + "|"
    return out + "".join("\n| " + " | ".join(_md_cell(c) for c in row) + " |" for row in b.rows)


def render_markdown(blocks: list[Block]) -> str:
    out: list[str] = []
    for b in blocks:
        if isinstance(b, Heading):
            out.append(f"{'#' * b.level} {b.text}")
        elif isinstance(b, Para):
            out.append(b.text)
        elif isinstance(b, Warn):
            out.append(f"> **⚠ Warning:** {b.text}")
        elif isinstance(b, Bullets):
            out.append("\n".join(f"- {item}" for item in b.items))
        elif isinstance(b, Table):
            out.append(_md_table(b))
        elif isinstance(b, Image):
            out.append(f"![{b.title}]({b.path.name})")
        elif isinstance(b, Detail):
            out.append(f"{b.summary}: {len(b.table.header)} columns, in report.html and in [{b.csv}]({b.csv}).")
        elif isinstance(b, Files):
            out.append("\n".join(f"- [{name}]({name}): {what}" for name, what in b.items))
    return "\n\n".join(out) + "\n"


def _inline(text: str) -> str:
    """Escape, then the two bits of markdown the blocks use: `code` and **bold**."""
    t = html.escape(text)
    t = re.sub(r"`([^`]+)`", r"<code>\1</code>", t)
    return re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", t)


# The column is as wide as the widest figure (plots.DISPLAY_WIDTH_PX): every figure is shown at its own size.
_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:WIDTHpx;margin:2em auto;padding:0 1em;
color:#222;line-height:1.45}
h1{border-bottom:2px solid #ddd;padding-bottom:.3em}h2{margin-top:1.8em;border-bottom:1px solid #eee}
table{border-collapse:collapse;margin:1em 0;font-size:.9em;display:block;overflow-x:auto}
th,td{border:1px solid #ccc;padding:.3em .6em;text-align:right;white-space:nowrap}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}
.warn{background:#fff4e5;border-left:5px solid #f0a020;padding:.6em 1em;margin:1em 0}
code{background:#f5f5f5;padding:0 .2em}figure{margin:1.5em 0}img{max-width:100%;height:auto;outline:1px solid #eee}
figcaption{color:#555;font-size:.9em}details{margin:1em 0}summary{cursor:pointer}
""".replace("WIDTH", str(DISPLAY_WIDTH_PX))


def _html_table(b: Table) -> str:
    head = "".join(f"<th>{_inline(h)}</th>" for h in b.header)
    body = "".join("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in row) + "</tr>" for row in b.rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def render_html(blocks: list[Block], title: str) -> str:
    """One file, nothing external: inline CSS, images as data: URIs."""
    out = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        f"<title>{html.escape(title)}</title>",
        f"<style>{_CSS}</style>",
        "</head>",
        "<body>",
    ]
    for b in blocks:
        if isinstance(b, Heading):
            out.append(f"<h{b.level}>{_inline(b.text)}</h{b.level}>")
        elif isinstance(b, Para):
            out.append(f"<p>{_inline(b.text)}</p>")
        elif isinstance(b, Warn):
            out.append(f'<div class="warn"><strong>⚠ Warning:</strong> {_inline(b.text)}</div>')
        elif isinstance(b, Bullets):
            out.append("<ul>" + "".join(f"<li>{_inline(i)}</li>" for i in b.items) + "</ul>")
        elif isinstance(b, Table):
            out.append(_html_table(b))
        elif isinstance(b, Detail):
            out.append(f"<details open><summary>{_inline(b.summary)}</summary>{_html_table(b.table)}</details>")
        elif isinstance(b, Files):  # embedded as data: links, so the page still needs nothing beside it
            links = []
            for name, what in b.items:
                data = base64.b64encode((b.folder / name).read_bytes()).decode("ascii")
                href = f"data:text/csv;base64,{data}"
                links.append(
                    f'<li><a download="{html.escape(name)}" href="{href}">{html.escape(name)}</a>: {_inline(what)}</li>'
                )
            out.append("<ul>" + "".join(links) + "</ul>")
        elif isinstance(b, Image):
            data = base64.b64encode(b.path.read_bytes()).decode("ascii")
            out.append(
                f'<figure><img alt="{html.escape(b.title)}" src="data:image/png;base64,{data}">'
                f"<figcaption>{html.escape(b.title)}</figcaption></figure>"
            )
    out += ["</body>", "</html>"]
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------- numbers as text


def mean_std(mean: float, std: float, n: int, *, percent: bool, samples: int | None = None) -> str:
    """'54.3 [51.2, 57.4]' (mean and 95 % Student-t interval over seeds); for one seed of an accuracy over
    `samples` samples, '54.3 [44.4, 63.9] (n=1)' (the run's Wilson interval), else '54.3 (n=1)'; '–' when
    there is no value."""
    if n == 0 or pd.isna(mean):
        return "–"
    k = 100.0 if percent else 1.0
    digits = 1 if percent else 3
    if n == 1 or pd.isna(std):
        if percent and samples:
            one = run_interval(np.arange(samples) < round(float(mean) * samples))
            return f"{mean * k:.{digits}f} [{one.low * k:.{digits}f}, {one.high * k:.{digits}f}] (n=1)"
        return f"{mean * k:.{digits}f} (n=1)"
    half = t_halfwidth(std, n)
    return f"{mean * k:.{digits}f} [{(mean - half) * k:.{digits}f}, {(mean + half) * k:.{digits}f}]"


def scored_samples(sweep: Sweep, metric: str) -> int | None:
    """How many samples one search run's accuracy `metric` is over: every evaluated one for clean accuracy and
    the classic attacks, the AutoAttack subset for what AutoAttack-grade attacks score (their worst cases
    included); None where the runs disagree or it is not an accuracy."""
    trials = sweep.trials
    if not is_accuracy(metric) or "eval_limit" not in trials:
        return None
    stated = trials["eval_limit"].dropna().unique()  # a run without the parameter says nothing
    if len(stated) != 1:
        return None
    evaluated = int(stated[0])
    limits = trials["aa_limit"].dropna().unique() if "aa_limit" in trials else []
    attacks = trials["attacks"].iloc[0] if "attacks" in trials else ()
    checked = any(a in AUTOATTACK for a in attacks or ())
    subset = min(evaluated, int(limits[0])) if checked and len(limits) == 1 else evaluated
    parsed = M.parse_robust_key(metric)
    if metric == M.CLEAN_ACC or (parsed is not None and parsed[0] in CLASSIC):
        return evaluated  # each classic attack scores every evaluated sample
    return subset  # AutoAttack-grade attacks, and every worst case (taken where all its attacks scored)


def _cell(row: pd.Series, metric: str, samples: int | None = None) -> str:
    if f"{metric}:mean" not in row:
        return "–"
    n = row[f"{metric}:n"]
    return mean_std(
        row[f"{metric}:mean"],
        row[f"{metric}:std"],
        0 if pd.isna(n) else int(n),
        percent=is_accuracy(metric) or metric == GAP,
        samples=samples,
    )


def with_gap(sweep: Sweep) -> Sweep:
    """`sweep` with each run's GAP (robust_acc_classic − robust_acc) as a column, where it has both numbers."""
    runs = sweep.runs
    if M.ROBUST_ACC_CLASSIC not in runs or M.ROBUST_ACC not in runs:
        return sweep
    return dataclasses.replace(sweep, runs=runs.assign(**{GAP: runs[M.ROBUST_ACC_CLASSIC] - runs[M.ROBUST_ACC]}))


def _labels(table: pd.DataFrame) -> list[str]:
    """Each row's 'variant (configuration)', numbers to 3 significant digits (in full where two rows would then
    read the same); the CSV keeps them in full."""
    full = [variant_label(v, c) for v, c in zip(table["variant"], table["config"])]
    short = [short_numbers(label) for label in full]
    return short if len(set(short)) == len(set(full)) else full


def _is_reference(sweep: Sweep, table: pd.DataFrame) -> np.ndarray:
    """Per row of a configuration table: whether its runs are a reference arm's (tagged so by the sweep)."""
    trials = sweep.trials
    if "reference" not in trials:
        return np.zeros(len(table), dtype=bool)
    tagged = trials[trials["reference"].notna()]
    keys = set(zip(tagged["variant"], tagged["config"]))
    return np.array([(v, c) in keys for v, c in zip(table["variant"], table["config"])], dtype=bool)


def _ranked(sweep: Sweep, table: pd.DataFrame) -> pd.DataFrame:
    """`table` best first by the headline, each row's rank within its training mode in `_rank` and whether it is a
    reference in `_reference`."""
    ascending = sweep.direction(sweep.headline) == "min"
    ranked = table.sort_values(f"{sweep.headline}:mean", ascending=ascending, kind="stable")
    ranked = ranked.assign(_rank=ranked.groupby(TRAINING, sort=False).cumcount() + 1)
    return ranked.assign(_reference=_is_reference(sweep, ranked))


def _cut(ranked: pd.DataFrame, top: int) -> pd.DataFrame:
    """The `top` best rows of each training mode of a `_ranked` table, and every reference row below them."""
    return ranked[(ranked["_rank"] <= top) | ranked["_reference"]]


def _config_rows(sweep: Sweep, table: pd.DataFrame, metrics: Sequence[str], *, rank: bool = False) -> list[list[str]]:
    """[rank], configuration (a reference marked), runs, then each metric's mean [95 % interval] of a table's rows."""
    rows = []
    for label, (_, r) in zip(_labels(table), table.iterrows()):
        marked = label + (" *(reference)*" if r.get("_reference", False) else "")
        cells = [marked, str(r["runs"])] + [_cell(r, m, scored_samples(sweep, m)) for m in metrics]
        rows.append(([str(r["_rank"])] if rank else []) + cells)
    return rows


def _header(metric: str) -> str:
    return COLUMN.get(metric, f"`{metric}`")


def _number(metric: str, value: float) -> str:
    """A mean of the runs where a check fired: accuracies in %, anything else as it is."""
    return f"{value * 100:.1f} %" if is_accuracy(metric) else f"{value:.3g}"


# --------------------------------------------------------------------------- sections


def _overview(sweep: Sweep, counts: dict[str, int]) -> list[Block]:
    objectives = ", ".join(f"`{m}` ({mode})" for m, mode in sweep.objectives)
    parent = f"`{sweep.parent_run_id}`" if sweep.parent_run_id else "none"
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    items = [
        f"experiment `{sweep.experiment}` (id {sweep.experiment_id}), sweep parent run {parent}, mode **{sweep.mode}**",
        f"headline metric `{sweep.headline}`; objective {objectives}",
        f"runs: **{counts['finished']} finished**, {counts['failed']} failed, {counts['stopped']} stopped early, "
        f"{counts['running']} running or scheduled ({counts['analysed']} analysed)",
    ]
    common = _common_settings(sweep)
    if common:
        items.append(f"same in every analysed trial: {common}")
    items.append(f"tracking store `{sweep.tracking_uri}`; generated {stamp}")
    blocks: list[Block] = [Heading(f"Sweep report: {sweep.experiment}", 1), Bullets(items)]
    if sweep.other_parents:
        blocks.append(Para("Other sweeps in this experiment: " + "; ".join(f"`{p}`" for p in sweep.other_parents)))
    return blocks


COMMON = (
    "dataset",
    "model",
    "epochs",
    "warmup_epochs",
    "optimizer",
    "lr",
    "training",
    "margin",
    "lc_weight",
    "attacks",
    "eps",
    "headline_eps",
    "attack_steps",
    "eval_limit",
)


def _common_settings(sweep: Sweep) -> str:
    """'dataset=digits, model=small_cnn, …': the main settings no trial varied (what the labels leave out)."""
    trials, parts = sweep.trials, []
    for p in COMMON:
        if p in trials and len(trials) and trials[p].map(lambda v: fmt_value(v)).nunique() == 1:
            parts.append(f"{SYMBOL.get(p, p)}={fmt_value(trials[p].iloc[0])}")
    return ", ".join(parts)


def _verdict_section(sweep: Sweep, judged: Verdict) -> list[Block]:
    """The conclusion first: each arm against each reference, then the arms it rests on, with intervals."""
    blocks: list[Block] = [Heading("Verdict")]
    if not judged.lines and not judged.arms:
        return blocks + [Bullets(judged.sentences() or ["Nothing to judge."])]
    where = (
        "the confirmation runs: the search's best configurations and the references re-trained on fresh seeds, "
        "AutoAttack on every evaluated sample"
        if judged.source == "confirmation"
        else "the grid: every arm on the same seeds and samples"
    )
    methods = "; ".join(METHODS[k] for k in ("seeds", "one_seed", "correction"))
    checked = " (AutoAttack-checked)" if is_checked(judged.metric) else ""
    direction = "" if judged.higher_is_better else " Lower is better for this metric."
    k = len(judged.lines)
    blocks.append(
        Para(
            f"`{judged.metric}`{checked}, from {where}. Each row is an arm minus a reference, in points, with the "
            f"interval its words are read from: {interval_name(1 - ALPHA / max(k, 1), k)}s ({CORRECTION_NAME} over "
            f"the {k} comparisons, so all of them hold together with 95 % confidence). *better* or *worse* where "
            f"the interval excludes 0; *equivalent within ±{100 * judged.margin:.1f} points* where it lies inside "
            f"that margin (the sweep file's `verdict.margin`); else *inconclusive*, with the smallest difference "
            f"the design detects with {100 * POWER:.0f} % power. One seed per arm ranks, it does not judge.{direction} "
            f"Tests: {methods}."
        )
    )
    if judged.lines:
        header = ["arm", "reference", "difference (points)", "interval", f"p ({CORRECTION_NAME})", "outcome", "detects"]
        lines = judged.lines
        if len(lines) > MAX_ROWS:  # a large grid: the tally, then its best comparisons; the CSV holds every one
            lines = judged.ranked()[:MAX_ROWS]
            blocks.append(
                Para(
                    f"{judged.tally()}. The {MAX_ROWS} best differences below; all {len(judged.lines)} in "
                    f"[{VERDICT_CSV}]({VERDICT_CSV})."
                )
            )
        rows = [
            [
                line.arm.label,
                line.reference.label,
                *line.result.difference.text(points=True).split(" points "),  # '−3.4', '[−7.9, +1.1]'
                f"{line.result.p_corrected:.3g}",
                f"**{line.result.words}**",
                _detects(line.result),
            ]
            for line in lines
        ]
        blocks.append(Table(header, rows))
    remarks = judged.notes_cut(MAX_ROWS) + judged.epochs()
    blocks.append(Bullets(remarks if remarks or judged.lines else ["No comparison could be made."]))
    arms = sorted(judged.arms, key=lambda a: (training_sort_key(a.training), -a.estimate.value))
    rows, kept = [], []
    for i, arm in enumerate(arms):
        search = "–" if arm.search_score is None else f"{100 * arm.search_score:.1f} (1 seed)"
        rank = sum(a.training == arm.training for a in arms[: i + 1])  # among the arms of its training mode
        if rank > MAX_ROWS and not arm.reference:  # a large grid: its best arms and the references
            continue
        kept.append(arm)
        rows.append(
            [
                str(rank),
                arm.label + (" *(reference)*" if arm.reference else ""),
                str(len(arm.runs)),
                f"{100 * arm.clean:.1f}",
                arm.estimate.text().replace(" %", ""),
                *(_over_runs(arm.runs, m) for m in (M.ROBUST_ACC_CLASSIC, GAP)),
                search,
            ]
        )
    header = [
        "rank",
        "arm",
        "seeds",
        "`clean_acc` %",
        f"`{judged.metric}` % [95 % interval]",
        f"{COLUMN[M.ROBUST_ACC_CLASSIC]} %",
        COLUMN[GAP],
        "search score %",
    ]
    if len(kept) < len(arms):
        blocks.append(Para(f"The best {MAX_ROWS} arms of each training mode and the references, of {len(arms)}:"))
    return blocks + [_with_modes(Table(header, rows), [a.training for a in kept])]


def per_class(judged: Verdict, client: MlflowClient | None) -> pd.DataFrame | None:
    """Per class, clean and headline accuracy of the references and the best other arms, summed over each arm's
    runs from their per-sample outcomes (where PC-LC helps may be a few classes): one row per (arm, class) with
    `correct`/`scored` counts; None without a client, arms, or outcomes that carry labels."""
    if client is None or not judged.arms:
        return None
    refs = [a for a in judged.arms if a.reference is not None]
    others = sorted((a for a in judged.arms if a.reference is None), key=lambda a: -a.estimate.value)
    rows = []
    for arm in [*refs, *others[:PER_CLASS_ARMS]]:
        counts: dict[tuple[str, int], list[int]] = {}
        for run_id in arm.runs["run_id"]:
            try:
                stored = fetch_outcomes(client, run_id)
            except AnalysisError:
                continue
            if stored is None or stored.labels is None:
                continue
            for what, key in (("clean", M.CLEAN_ACC), ("robust", judged.metric)):
                for label, (correct, scored) in stored.per_class(key).items():
                    total = counts.setdefault((what, label), [0, 0])
                    total[0] += correct
                    total[1] += scored
        rows += [
            {
                "arm": arm.label,
                "reference": arm.reference or "",
                "what": what,
                "class": label,
                "correct": c,
                "scored": n,
                "accuracy": c / n if n else float("nan"),
            }
            for (what, label), (c, n) in sorted(counts.items(), key=lambda kv: (kv[0][1], kv[0][0]))
        ]
    return pd.DataFrame(rows) if rows else None


def _per_class_section(classes: pd.DataFrame | None) -> list[Block]:
    """Per class, clean / AutoAttack-checked % of the references and the best arms (PER_CLASS_CSV holds every class)."""
    if classes is None or classes.empty:
        return []
    wide = classes.pivot_table(index="class", columns=["arm", "what"], values="accuracy", sort=False)
    arms = list(dict.fromkeys(classes["arm"]))
    scored = classes[classes["what"] == "robust"].groupby("class")["scored"].max()
    shown = wide.index
    note = ""
    if len(wide) > PER_CLASS_ROWS:  # many classes: where the arms differ most
        robust = wide.xs("robust", axis=1, level="what")
        shown = (robust.max(axis=1) - robust.min(axis=1)).sort_values(ascending=False).index[:PER_CLASS_ROWS]
        note = f" The {PER_CLASS_ROWS} of {len(wide)} classes where the arms differ most; all in {PER_CLASS_CSV}."
    rows = []
    for label in shown:
        cells = []
        for arm in arms:
            clean, robust = wide.get((arm, "clean"), {}).get(label), wide.get((arm, "robust"), {}).get(label)
            cells.append("–" if clean is None or pd.isna(clean) else f"{100 * clean:.0f} / {100 * robust:.0f}")
        rows.append([str(label), str(int(scored.get(label, 0))), *cells])
    return [
        Heading("Per class", 3),
        Para(
            "Clean / AutoAttack-checked accuracy (%) per class, of the references and the best arms, over all their "
            "seeds' runs (samples per class: summed over the runs of one arm). A gain that lives in a few classes "
            f"shows here.{note}"
        ),
        Table(["class", "samples", *arms], rows),
    ]


def _detects(result: Comparison) -> str:
    """An inconclusive comparison's detectable difference (points, at 80 % power), or why it has none."""
    if result.outcome != "inconclusive":
        return "–"
    if math.isfinite(result.detectable):
        return f"±{100 * result.detectable:.1f}"
    return "one seed" if result.difference.method == "one_seed" else "–"


def _over_runs(runs: pd.DataFrame, metric: str) -> str:
    """An arm's mean [95 % interval] of `metric` over its runs (seeds), in % or points; '–' where it has none."""
    values = runs[metric].dropna().astype(float) if metric in runs else pd.Series(dtype=float)
    std = float(values.std()) if len(values) > 1 else float("nan")
    return mean_std(float(values.mean()) if len(values) else float("nan"), std, len(values), percent=True)


def _runs_section(sweep: Sweep, counts: dict[str, int]) -> list[Block]:
    blocks: list[Block] = [Heading("Runs")]
    rows = [
        ["finished", str(counts["finished"]), "final evaluation logged" if counts["finished"] else ""],
        ["failed", str(counts["failed"]), "status FAILED (reasons below)" if counts["failed"] else ""],
        ["stopped early", str(counts["stopped"]), "status KILLED: stopped by the scheduler (ASHA) or the user"],
        ["running / scheduled", str(counts["running"]), "not finished yet: left out"],
        ["analysed", str(counts["analysed"]), f"finished with a finite `{sweep.headline}`"],
    ]
    if counts["other"]:
        rows.insert(4, ["other status", str(counts["other"]), ""])
    blocks.append(Table(["runs", "count", "meaning"], rows))
    failed = sweep.runs[sweep.runs["outcome"] == "failed"]
    if len(failed):
        reasons = failed.fillna({"failure_reason": "(no reason recorded)"}).groupby("failure_reason")["trial_id"]
        items = [
            f"{len(ids)} × `{reason}` (trials {', '.join(map(str, list(ids)[:6]))}{' …' if len(ids) > 6 else ''})"
            for reason, ids in reasons
        ]
        blocks += [Para("**Failure reasons**"), Bullets(items)]
    left = sweep.runs["left_out"].dropna() if "left_out" in sweep.runs else pd.Series(dtype=object)
    if len(left):  # a data set with fewer classes than some attacks need: what its numbers do not include
        said = left.str.split(" | ", regex=False).explode().value_counts(sort=False)
        items = [f"{text} ({n} run{'s' if n != 1 else ''})" for text, n in said.items()]
        blocks += [Para("**Attacks left out**"), Bullets(items)]
    finished = sweep.runs[sweep.runs["outcome"] == "finished"]
    drawn = finished.dropna(subset=["samples"]) if "samples" in finished else finished.iloc[:0]
    if len(drawn):  # which test samples the numbers are about: a stratified draw, its class coverage per subset
        said = drawn.fillna({"coverage": "(no coverage recorded)"}).groupby(["samples", "coverage"]).size()
        items = [f"{coverage} (`{design}`, {n} run{'s' if n != 1 else ''})" for (design, coverage), n in said.items()]
        blocks += [
            Para("**Samples scored** (a seeded class-stratified draw of the test split, the same for every run)"),
            Bullets(items),
        ]
    if sweep.notes:
        blocks += [Para("**Notes on the data**"), Bullets(list(sweep.notes))]
    return blocks


def _cost_section(sweep: Sweep) -> list[Block]:
    """What the sweep cost: its trials' GPU-hours, and their time split into training and evaluation."""
    blocks: list[Block] = [Heading("What the sweep cost")]
    present = [m for m in M.COST if m in sweep.runs and sweep.runs[m].notna().any()]
    if not present:
        return blocks + [
            Para(
                "The runs record no cost metrics (`gpu_hours`, `train_seconds`): a sweep from before they were logged."
            )
        ]
    counted = sweep.runs[sweep.runs[present].notna().any(axis=1)]
    unit = {M.GPU_HOURS: ("GPU-hours", 1.0, "{:.3f}")}
    rows = []
    for m in present:
        label, factor, form = unit.get(m, ("hours", 1 / 3600, "{:.2f}"))
        total = float(counted[m].sum()) * factor
        mean = float(counted[m].mean()) * factor
        rows.append([f"`{m}`", label, form.format(total), form.format(mean)])
    return blocks + [
        Para(
            f"Summed over the {len(counted)} trial runs that recorded them (finished and stopped early; a stopped "
            "trial counts up to its last epoch). The sweep's parent run holds the same sums as `total_<metric>`. "
            "GPU-hours are the trial's GPU share × its wall time (0 on a CPU); evaluation is the final attack suite."
        ),
        Table(["metric", "unit", "sweep total", "mean per trial"], rows),
    ]


def _fired_where(check: Check, fired: pd.DataFrame) -> str:
    """'pc (ξ=0.995, λ=0.05) ×3: classic 37.1 % vs AutoAttack 29.0 %': per configuration, runs and mean numbers."""
    parts = []
    groups = list(fired.groupby(["variant", "config"], sort=False))
    for (v, c), g in groups[:MAX_WHERE]:
        numbers = [f"{what} {_number(m, g[m].mean())}" for what, m in check.numbers if m in g and g[m].notna().any()]
        parts.append(
            f"{short_numbers(variant_label(v, c))} ×{len(g)}" + (f": {' vs '.join(numbers)}" if numbers else "")
        )
    more = len(groups) - MAX_WHERE
    return "; ".join(parts) + (f"; and {more} more configurations ({RUNS_CSV})" if more > 0 else "")


def _masking_section(sweep: Sweep, client: MlflowClient | None) -> list[Block]:
    blocks: list[Block] = [Heading("Gradient-masking checks")]
    trials = sweep.trials
    flags = sweep.masking_flags()
    if not flags:
        return blocks + [Para("No `masking/*` flags were logged by these runs, so gradient masking was not checked.")]
    rows, fired_runs = [], set()
    for flag in flags:
        name = flag.removeprefix(M.MASKING_PREFIX)
        check = CHECKS.get(name, Check("(no description: a check this report does not know)", ()))
        checked = trials[flag].notna()
        fired = trials[trials[flag] >= 0.5]
        fired_runs.update(fired["run_id"])
        where = _fired_where(check, fired)
        rows.append([f"`{name}`", check.meaning, f"{len(fired)} of {int(checked.sum())}", where or "–"])
        if len(fired):
            blocks.append(
                Warn(
                    f"gradient-masking check `{name}` fired in {len(fired)} of {int(checked.sum())} runs ({where}): "
                    f"{check.meaning}. {check.advice}"
                )
            )
    header = ["check", "what firing means", "fired in", "where it fired (configuration × runs: mean numbers)"]
    blocks += [
        Table(header, rows),
        Para(
            "Each check compares attacks on the same samples; a flag is 1 in a run where the attacks disagree in a "
            "way working gradients would not allow. The numbers are means over the runs where it fired; "
            "`classic` and `AutoAttack` are `robust_acc_classic` and `robust_acc_aa` (at the headline ε)."
        ),
    ]
    if not fired_runs:
        blocks.append(Para("No check fired: no sign of gradient masking in these runs."))
    elif client is not None:
        ordered = [r for r in trials["run_id"] if r in fired_runs]
        texts = fetch_warnings(client, ordered, limit=10)
        if texts:
            rid, first = next(iter(texts.items()))
            blocks += [Para(f"What {C.EVALUATION_ARTIFACT} of run `{rid[:8]}` says:"), Bullets(first)]
    return blocks


def _best_section(sweep: Sweep) -> list[Block]:
    headline = sweep.headline
    metrics = list(dict.fromkeys([m for m, _ in sweep.objectives] + list(HEADLINES)))
    metrics = [m for m in metrics if m in sweep.trials]
    finalists = FINALIST_ROBUST in sweep.finalist_metrics()
    metrics += [FINALIST_ROBUST] if finalists else []
    table = config_table(sweep, metrics)
    ranked = by_mode(_cut(_ranked(sweep, table), TOP))  # the best of each training mode, then its references
    header = ["rank", "configuration", "runs"] + [_header(m) for m in metrics]
    rows = _config_rows(sweep, ranked, metrics, rank=True)
    per_mode = f" ({TOP} at most per training mode)" if ranked[TRAINING].nunique() > 1 else ""
    refs = " and the references" if ranked["_reference"].any() else ""
    note = "mean [95 % interval] over seeds; accuracies in %, the gap in points"
    searched = (
        " These are the search's own numbers (one seed per configuration, AutoAttack on its subset): they rank, "
        "and the top of such a ranking is biased upward; the verdict above gives the confirmed ones."
        if sweep.mode == "optimize"
        else ""
    )
    blocks: list[Block] = [
        Heading("Best configurations"),
        Para(
            f"By mean `{headline}` ({sweep.direction(headline)}), {note}; the best{per_mode}{refs}: {len(rows)} of "
            f"{len(table)} (all of them in `{CONFIGS_CSV}`). `{GAP}` is `robust_acc_classic` − `robust_acc`, run by "
            f"run: how much a classic-attack evaluation would overstate.{searched}"
        ),
        _with_modes(Table(header, rows), list(ranked[TRAINING])),
    ]
    if finalists:
        blocks.append(
            Para(
                f"**{COLUMN[FINALIST_ROBUST]}** is `{FINALIST_ROBUST}`: `pclc evaluate` re-scored the saved weights of "
                "chosen trials with the full AutoAttack (mean [95 % interval] over the re-scored seeds; – where none was). "
                "It never enters the ranking, which uses each trial's own numbers."
            )
        )
    objectives = [(m, d) for m, d in sweep.objectives if f"{m}:mean" in table]
    if len(objectives) > 1:
        pts = table[[f"{m}:mean" for m, _ in objectives]].to_numpy(dtype=float)
        ok = ~pd.isna(pts).any(axis=1)
        front = _ranked(sweep, table[ok][pareto_mask(pts[ok], [d == "max" for _, d in objectives])])
        shown = by_mode(_cut(front, MAX_ROWS))
        names = " and ".join(f"`{m}` ({d})" for m, d in objectives)
        cut = f"; the best {MAX_ROWS} of its {len(front)} by `{headline}`" if len(shown) < len(front) else ""
        blocks += [
            Para(f"**Pareto set** over {names} (configuration means; none is beaten on every objective{cut}):"),
            _with_modes(
                Table(["configuration", "runs"] + [_header(m) for m in metrics], _config_rows(sweep, shown, metrics)),
                list(shown[TRAINING]),
            ),
        ]
    return blocks


def _ablation_section(sweep: Sweep) -> list[Block]:
    """Rows: loss variants (each at its best configuration, per training mode); columns: clean, AutoAttack-checked
    and claimed robust accuracy and the gap, mean [95 % interval] over seeds. The attack × ε detail follows, in
    report.html and the CSV; then every configuration (the best and the references, in a large sweep)."""
    long = sweep.robust_long()
    blocks: list[Block] = [Heading("Ablation table")]
    if long.empty:
        return blocks + [Para("No `robust_acc/<attack>/eps=<eps>` metrics in the analysed runs.")]
    scalars = [m for m in HEADLINES if m in sweep.trials]
    best = best_configs(sweep, per_mode=True)[["variant", "config"]]
    best = best.merge(config_table(sweep, [*scalars, M.ROBUST_ACC_AA]), on=["variant", "config"])
    pairs = set(zip(long["attack"], long["eps"]))
    attack_cols = sorted(pairs, key=lambda ae: (attack_rank(ae[0]), ae[1]))
    labels = _labels(best)
    rows, detail = [], []
    for label, (_, b) in zip(labels, best.iterrows()):
        runs = sweep.trials[(sweep.trials["variant"] == b["variant"]) & (sweep.trials["config"] == b["config"])]
        part = long[(long["variant"] == b["variant"]) & (long["config"] == b["config"])]
        s = summarize(part, ["attack", "eps"], "value").set_index(["attack", "eps"])
        seeds = runs[SEED].nunique() if SEED in runs else len(runs)
        rows.append([label, str(seeds)] + [_cell(b, m, scored_samples(sweep, m)) for m in scalars])
        cells = [label, _cell(b, M.ROBUST_ACC_AA, scored_samples(sweep, M.ROBUST_ACC_AA))]
        for key in attack_cols:
            samples = scored_samples(sweep, M.robust_key(*key))
            found = key in s.index
            cells.append(mean_std(*s.loc[key][["mean", "std", "n"]], percent=True, samples=samples) if found else "–")
        detail.append(cells)
    families = (
        " `robust_acc_classic` is the same worst case over the paper's classic attacks only (what they claim), at the "
        f"headline ε; `{GAP}` is it minus `robust_acc`, run by run, in points."
        if M.ROBUST_ACC_CLASSIC in scalars
        else ""
    )
    modes = list(best[TRAINING])
    blocks += [
        Para(
            "Accuracy in %, mean [95 % Student-t interval] over seeds. Each variant at its best configuration by mean "
            f"`{sweep.headline}`; `robust_acc` is the per-sample worst case over every attack at the headline ε, "
            f"AutoAttack-grade ones included.{families}"
        ),
        _with_modes(Table(["variant (configuration)", "seeds"] + [_header(m) for m in scalars], rows), modes),
        Detail(
            "Per attack × ε, each variant at its best configuration (mean [95 % interval] over seeds, in %; "
            "`worst`, `worst_classic` and `worst_aa` are the per-sample worst cases at each ε; AutoAttack-grade "
            "attacks run at the headline ε only unless the config's `aa_eps` adds more)",
            _with_modes(
                Table(
                    ["variant (configuration)", _header(M.ROBUST_ACC_AA)]
                    + [f"{a} ε={fmt_value(e)}" for a, e in attack_cols],
                    detail,
                ),
                modes,
            ),
            CONFIGS_CSV,
        ),
    ]
    candidates = list(dict.fromkeys((M.CLEAN_ACC, sweep.headline, M.ROBUST_ACC_CLASSIC, GAP, M.PROB_GAP)))
    table = config_table(sweep, candidates)
    if len(table) > 1:
        metrics = [m for m in candidates if f"{m}:mean" in table]
        shown = table.assign(_reference=_is_reference(sweep, table))
        note = []
        if len(table) > MAX_ROWS:  # a large sweep: its best configurations, best first, and the references
            shown = by_mode(_cut(_ranked(sweep, table), MAX_ROWS))
            note = [
                Para(
                    f"{len(shown)} of {len(table)} configurations: the best {MAX_ROWS} by `{sweep.headline}` and the "
                    f"references; every one is in `{CONFIGS_CSV}`, every run in `{RUNS_CSV}`."
                )
            ]
        header = ["configuration", "runs"] + [_header(m) for m in metrics]
        rows = _config_rows(sweep, shown, metrics)
        blocks += [Heading("All configurations", 3), *note, _with_modes(Table(header, rows), list(shown[TRAINING]))]
    return blocks


def _plots_section(plots: list[Plot]) -> list[Block]:
    blocks: list[Block] = [Heading("Plots")]
    for p in plots:
        if p.path is not None:
            blocks += [Heading(p.title, 3), Image(p.path, p.title)]
            if p.key:  # the figure's shortened labels, in full
                rows = [[short, whole] for short, whole in p.key.items()]
                blocks.append(Table(["label in the figure", "configuration"], rows))
    skipped = [f"{p.title}: {p.reason}" for p in plots if p.reason]
    if skipped:
        blocks += [Heading("Skipped plots", 3), Bullets(skipped)]
    return blocks


def _data_section(out_dir: Path) -> list[Block]:
    what = {
        RUNS_CSV: "every trial run (any outcome, search and confirmation): its params and every metric, each attack "
        f"at each ε included, and `{GAP}`",
        CONFIGS_CSV: "every configuration of the search or grid: mean, std, n and 95 % half-width (`:ci`) over its "
        "seeds of each headline number and of each attack at each ε",
        VERDICT_CSV: "every comparison of the verdict, best difference first: difference and 95 % interval in "
        "points, p before and after the correction, the outcome",
        PER_CLASS_CSV: "per class, of the references and the best arms: correct and scored samples over their runs, "
        "clean and AutoAttack-checked",
    }
    present = [(name, text) for name, text in what.items() if name != PER_CLASS_CSV or (out_dir / name).exists()]
    return [Heading("Data"), Files(present, out_dir)]


def csv_tables(sweep: Sweep) -> dict[str, pd.DataFrame]:
    """The report's tables in full, whatever its own tables cut (`with_gap(sweep)` gives the gap column):
    RUNS_CSV, one row per trial run; CONFIGS_CSV, one row per configuration, best first by the headline. The
    headline numbers come first, then each attack at each ε in the registry's order, then everything else."""
    robust = {m: M.parse_robust_key(m) for m in sweep.metrics}
    robust = sorted((m for m, key in robust.items() if key), key=lambda m: (attack_rank(robust[m][0]), robust[m][1]))
    first = [m for m in (*HEADLINES, M.ROBUST_ACC_AA, *robust) if m in sweep.runs]
    runs = sweep.runs.assign(**{TRAINING: training_modes(sweep.runs)})
    ids = ["run_id", "trial_id", "phase", "outcome", "variant", "config", TRAINING, "reference", SEED]
    columns = [c for c in ids if c in runs] + first
    columns += [c for c in runs.columns if c not in columns]
    configs = config_table(sweep, first + [m for m in sweep.metrics if m not in first]).copy()  # one block per dtype
    configs = _ranked(sweep, configs).drop(columns=["_rank"]).rename(columns={"_reference": "reference"}).copy()
    configs.insert(0, "label", [variant_label(v, c) for v, c in zip(configs["variant"], configs["config"])])
    return {RUNS_CSV: runs[columns], CONFIGS_CSV: configs}


def verdict_frame(judged: Verdict) -> pd.DataFrame:
    """VERDICT_CSV: every comparison of the verdict, best difference first, in points."""
    rows = [
        {
            "arm": line.arm.label,
            "reference": line.reference.label,
            "difference_points": 100 * line.result.difference.value,
            "low_points": 100 * line.result.difference.low,
            "high_points": 100 * line.result.difference.high,
            "level": line.result.level,
            "p": line.result.p_value,
            "p_corrected": line.result.p_corrected,
            "outcome": line.result.outcome,
            "margin_points": 100 * line.result.margin,
            "detectable_points": 100 * line.result.detectable,
            "seeds": line.seeds,
            "samples": line.samples,
            "on_samples": line.on_samples,
            "method": line.result.difference.method,
        }
        for line in judged.ranked()
    ]
    columns = ["arm", "reference", "difference_points", "low_points", "high_points", "level", "p", "p_corrected"]
    more = ["outcome", "margin_points", "detectable_points", "seeds", "samples", "on_samples", "method"]
    return pd.DataFrame(rows, columns=[*columns, *more])


# --------------------------------------------------------------------------- writing


@dataclass
class Report:
    """What `write_report` produced."""

    out_dir: Path
    markdown: Path
    html: Path
    plots: list[Plot] = field(default_factory=list)
    verdict: Verdict | None = None  # the report's first section, for the command to print
    artifact_uri: str | None = None  # where the parent run holds the copy, if it was logged
    log_error: str | None = None

    @property
    def skipped(self) -> dict[str, str]:
        return {p.name: p.reason or "" for p in self.plots if p.reason}


def build_blocks(
    sweep: Sweep,
    plots: list[Plot],
    client: MlflowClient | None = None,
    judged: Verdict | None = None,
    *,
    out_dir: Path | None = None,
    classes: pd.DataFrame | None = None,
) -> list[Block]:
    """The report's blocks; with `out_dir`, where `write_report` wrote the CSV files, the links to them too."""
    sweep = with_gap(sweep)
    counts = sweep.counts()
    if judged is None:
        judged = verdict(sweep, outcomes=headline_outcomes(client, sweep.headline) if client is not None else None)
    if classes is None and client is not None:
        classes = per_class(judged, client)
    return [
        *_overview(sweep, counts),
        *_verdict_section(sweep, judged),
        *_per_class_section(classes),
        *_runs_section(sweep, counts),
        *_cost_section(sweep),
        *_masking_section(sweep, client),
        *_best_section(sweep),
        *_ablation_section(sweep),
        *(_data_section(out_dir) if out_dir is not None else []),
        *_plots_section(plots),
    ]


def write_report(
    sweep: Sweep, out_dir: str | Path, *, client: MlflowClient | None = None, log_to_mlflow: bool = True
) -> Report:
    """Plots (PNG), report.md, report.html and the CSV tables in `out_dir`; then the folder is logged to the parent
    run."""
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    client = client or MlflowClient(sweep.tracking_uri)
    sweep = with_gap(sweep)
    for name, frame in csv_tables(sweep).items():
        frame.to_csv(out / name, index=False)
    judged = verdict(sweep, outcomes=headline_outcomes(client, sweep.headline))  # once: table, plots and command
    plots = make_plots(sweep, judged)
    for p in plots:
        target = out / f"{p.name}.png"
        if p.figure is not None:
            p.path = save_figure(p.figure, target)
        elif target.exists():  # a plot an earlier analysis drew no longer applies
            target.unlink()
    verdict_frame(judged).to_csv(out / VERDICT_CSV, index=False)
    classes = per_class(judged, client)
    if classes is not None:
        classes.to_csv(out / PER_CLASS_CSV, index=False)
    elif (out / PER_CLASS_CSV).exists():  # an earlier analysis' table no longer applies
        (out / PER_CLASS_CSV).unlink()
    blocks = build_blocks(sweep, plots, client, judged, out_dir=out, classes=classes)
    md, page = out / "report.md", out / "report.html"
    write_atomic(md, render_markdown(blocks))
    write_atomic(page, render_html(blocks, f"Sweep report: {sweep.experiment}"))
    report = Report(out_dir=out, markdown=md, html=page, plots=plots, verdict=judged)
    if log_to_mlflow and sweep.parent_run_id:
        try:
            client.log_artifacts(sweep.parent_run_id, str(out), ARTIFACT_DIR)
            report.artifact_uri = f"{client.get_run(sweep.parent_run_id).info.artifact_uri}/{ARTIFACT_DIR}"
        except (MlflowException, OSError) as exc:
            report.log_error = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return report
