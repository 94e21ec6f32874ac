"""Sequential confirmation over seeds: a pre-planned group-sequential design that judges each comparison at
looks of 3, 6, 10 … seeds, stops the ones that are decided and gives the next look's seeds only to the arms that
still take part in an open one, with the family's chance of any false claim over every look and comparison at
most α (boundaries: `analysis.spending`; each look's judgement: `analysis.compare.judge`, the fixed design's
code at the look's level).

Stateless by design: `progress` replays the looks from the runs recorded so far (each look judged on the
first n seeds of each comparison, in seed order), so a sweep killed between looks, or inside one, resumes at
the right look with the same decisions. The driver calls, after each look's trials have finished::

    design = Design(looks=(3, 6, 10), alpha=0.05, comparisons=len(names))   # fixed before the sweep runs
    state = progress(design, names, pairs, margin=m, higher_is_better=hib)
    state.next_look           # None: every comparison is final; else the look to run
    state.arms_next()         # {arm: seeds it must have}: the arms of the comparisons still open
    state.decisions[i]        # comparison i's LookDecision: .result (word, interval), .look, .decided, .final
    state.trials(arms)        # trials run, and saved against every arm running the last look's seeds
    state.summary()           # the verdict's line on the design; state.sentence(i): where comparison i stopped

`groups=` (training mode → arm → per-seed accuracies) pools each mode's seed × arm variance at every look
where its arms spread alike; `state.pools` holds the latest look's layouts, `Pool.sentence()` what to say.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from analysis.compare import MARGIN, Comparison, Estimate, Evidence, evidence, judge
from analysis.spending import Design
from analysis.variance import DEFAULT_POPULATION, Pool, Population, pool, pooled_family

__all__ = ["Design", "LookDecision", "Progress", "decide_look", "progress"]

Rows = tuple[Sequence[np.ndarray | float], Sequence[np.ndarray | float]]


@dataclass(frozen=True)
class LookDecision:
    """One comparison judged at one look: its result (word and the look's repeated confidence interval), and
    whether it stops there."""

    result: Comparison
    look: int  # 0-based index into design.looks
    seeds: int  # the seeds it was judged on
    decided: bool  # better, worse or equivalent: a claim, the comparison stops
    final: bool  # decided, or judged at the last look: it takes no more seeds

    @property
    def word(self) -> str:
        return self.result.words

    @property
    def interval(self) -> Estimate:
        return self.result.difference


def decide_look(
    rows: Rows | Evidence,
    look: int,
    design: Design,
    margin: float = MARGIN,
    *,
    higher_is_better: bool = True,
    population: Population = DEFAULT_POPULATION,
) -> LookDecision:
    """One comparison at look `look` of `design`, on `rows` (its (a, b) per-seed data so far, as
    `analysis.compare.evidence` takes them, or their Evidence, e.g. pooled): the look's interval at its
    spent level, the word read off it, and whether the comparison stops."""
    ev = rows if isinstance(rows, Evidence) else evidence(*rows, population=population)
    (result,) = judge([ev], design, look=look, margin=margin, higher_is_better=higher_is_better)
    decided = result.outcome != "inconclusive"
    return LookDecision(result, look, ev.n, decided, decided or look == design.last)


@dataclass(frozen=True)
class Progress:
    """Where a sequential confirmation stands: each comparison's latest judgement and the look to run next."""

    design: Design
    comparisons: tuple[tuple[str, str], ...]  # (arm, reference) names
    decisions: tuple[LookDecision | None, ...]  # None: the comparison has not reached its first look
    next_look: int | None  # the look whose seeds are still to run; None when every comparison is final
    pools: tuple[Pool, ...] = ()  # the pooled layouts of the latest judged look (their sentences go in the verdict)

    def arms_next(self) -> dict[str, int]:
        """arm → the seeds it must have for the next look: the arms of every comparison still open."""
        if self.next_look is None:
            return {}
        seeds = self.design.looks[self.next_look]
        open_ = [names for names, d in zip(self.comparisons, self.decisions) if d is None or not d.final]
        return {arm: seeds for names in open_ for arm in names}

    def trials(self, arms: Sequence[str] | None = None) -> tuple[int, int]:
        """(trials run or scheduled, trials saved against the fixed design that runs every arm on the last look's
        seeds): an arm runs the seeds of the last look any of its comparisons reached, or of the next look where
        one is still open (so the saving is final once `next_look` is None)."""
        arms = list(arms) if arms is not None else sorted({a for names in self.comparisons for a in names})
        reached: dict[str, int] = {}
        for names, d in zip(self.comparisons, self.decisions):
            look = 0 if d is None else d.look if d.final else d.look + 1  # an open one waits for the next look
            for arm in names:
                reached[arm] = max(reached.get(arm, 0), look)
        used = sum(self.design.looks[reached.get(arm, 0)] for arm in arms)
        return used, len(arms) * self.design.looks[-1] - used

    def sentence(self, i: int) -> str:
        """Where comparison `i` stands: 'decided at look 2 of 3 (6 seeds)', 'inconclusive after the last look,
        look 3 of 3 (10 seeds)' or 'open after look 1 of 3 (3 seeds)'."""
        d, k = self.decisions[i], len(self.design.looks)
        if d is None:
            return f"waiting for its first look ({self.design.looks[0]} seeds)"
        where = f"look {d.look + 1} of {k} ({d.seeds} seeds)"
        if d.decided:
            return f"decided at {where}"
        return f"inconclusive after the last look, {where}" if d.final else f"open after {where}"

    def summary(self) -> str:
        """The verdict's line on the design: its boundaries, where comparisons stopped, what the stops saved."""
        levels = ", ".join(f"{self.design.bounds(i).nominal:.2g}" for i in range(len(self.design.looks)))
        stopped = [d.look for d in self.decisions if d is not None and d.decided]
        at = ", ".join(f"{stopped.count(i)} at look {i + 1}" for i in range(len(self.design.looks)) if stopped.count(i))
        used, saved = self.trials()
        done = self.next_look is None
        state = "every comparison final" if done else f"look {self.next_look + 1} to run"
        return (
            f"Sequential design over seeds {list(self.design.looks)} ({self.design.method}; each comparison's "
            f"nominal two-sided levels {levels}): {len(stopped)} of {len(self.decisions)} comparisons decided"
            f"{f' ({at})' if at else ''}; {state}; {used} trials {'run' if done else 'run or scheduled'}, "
            f"{saved} saved by the early stops{'' if done else ' so far'}."
        )


def progress(
    design: Design,
    comparisons: Sequence[tuple[str, str]],
    pairs: Sequence[Rows],
    *,
    margin: float = MARGIN,
    higher_is_better: bool = True,
    population: Population = DEFAULT_POPULATION,
    ran: int | None = None,
    groups: Mapping[str, Mapping[str, Sequence[float]]] | None = None,
) -> Progress:
    """Replay the looks on the data so far. `pairs[i]` is comparison i's (a, b) on its common seeds in the
    planned seed order (a later look only adds seeds). Look j is judged, for every comparison still open, once
    each has design.looks[j] common seeds, on its first looks[j]; or, where the driver says the first `ran`
    looks' trials have finished (a trial that failed for good), on the seeds there are. With `groups`
    (training mode → arm → its per-seed accuracies in seed order), each look pools the seed × arm variance of
    the arms of a mode that have the look's seeds, where they spread alike (`analysis.variance.pool`)."""
    if len(comparisons) != len(pairs):
        raise ValueError(f"{len(comparisons)} comparisons named but {len(pairs)} given")
    if len(pairs) > design.comparisons:
        raise ValueError(f"{len(pairs)} comparisons, but the design was planned for {design.comparisons}")
    decisions: list[LookDecision | None] = [None] * len(pairs)
    last: tuple[Pool, ...] = ()
    for look, seeds in enumerate(design.looks):
        open_ = [i for i, d in enumerate(decisions) if d is None or not d.final]
        if not open_:
            return Progress(design, tuple(map(tuple, comparisons)), tuple(decisions), None, last)
        finished = ran is not None and look < ran
        if not finished and any(len(pairs[i][0]) < seeds for i in open_):
            return Progress(design, tuple(map(tuple, comparisons)), tuple(decisions), look, last)
        pools = _pools(groups, seeds)
        evidences = [evidence(pairs[i][0][:seeds], pairs[i][1][:seeds], population=population) for i in open_]
        evidences = pooled_family([comparisons[i] for i in open_], evidences, pools)
        for i, ev in zip(open_, evidences):
            decisions[i] = decide_look(ev, look, design, margin, higher_is_better=higher_is_better)
        last = tuple(pools)
    return Progress(design, tuple(map(tuple, comparisons)), tuple(decisions), None, last)


def _pools(groups: Mapping[str, Mapping[str, Sequence[float]]] | None, seeds: int) -> list[Pool]:
    """Each group's two-way layout on its first `seeds` seeds, over the arms that have them."""
    if not groups:
        return []
    return [
        pool(name, {arm: list(ys)[:seeds] for arm, ys in arms.items() if len(ys) >= seeds})
        for name, arms in groups.items()
    ]
