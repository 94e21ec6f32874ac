"""Tune's saved experiment: whether a resume can continue it, and its search state made to agree with
its snapshot of the trials before Tune restores both.

Tune saves three files per snapshot, each rewritten in place: `experiment_state-*.json` (the trials),
`search_gen_state-*.json` (how many trials the search has created, the concurrency limiter's live set)
and `searcher-state-*.pkl` (Optuna's study). It copies them to storage one by one in the background,
so a driver killed mid-copy can leave a trial list from one moment beside a search state from the next:
the search then counts trials the snapshot never recorded, and the resumed sweep ends short of
`num_trials` (or runs past it, the other way round).

These files are Tune's private format (and Optuna's pickled study inside OptunaSearch's). Their layout is
checked first (`layout_problem`): on anything but what Ray `RAY_CHECKED` writes, the resume is refused with a
message naming the versions (`UnknownTuneLayout`), never mended by guesswork or silently left alone.
pyproject.toml pins Ray to that minor version; tests/fixtures/tune_state holds a snapshot it wrote.
"""

from __future__ import annotations

import fnmatch
import json
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pclc.files import write_atomic  # what the resume reads: a kill while mending leaves the old or the new

TUNER_FILE = "tuner.pkl"  # written when the experiment starts
SNAPSHOT = "experiment_state-*.json"  # the trials: what a resume restores
SEARCH_STATE = "search_gen_state-*.json"  # a cloudpickle, whatever its name says
SEARCHER_STATE = "searcher-state-*.pkl"
LIMITER = "name:ConcurrencyLimiter"
RAY_CHECKED = "2.60"  # the Ray minor version whose private layout this module reads (pyproject.toml pins it)


def has_snapshot(exp_path: str) -> bool:
    """Tune saved the experiment and a snapshot of its trials at `exp_path`, so a resume can continue it.

    A driver killed between Tune writing `tuner.pkl` and its first snapshot leaves only the former;
    Tune would then "restart" the experiment from the pickled Tuner with one trial instead of the
    sweep's `num_trials`, so such a folder counts as nothing to resume.
    """
    import pyarrow.fs

    if "://" in exp_path:
        fs, path = pyarrow.fs.FileSystem.from_uri(exp_path)
    else:
        fs, path = pyarrow.fs.LocalFileSystem(), exp_path
    try:
        names = [info.base_name for info in fs.get_file_info(pyarrow.fs.FileSelector(path))]
    except (FileNotFoundError, OSError):
        return False
    return TUNER_FILE in names and any(fnmatch.fnmatch(n, SNAPSHOT) for n in names)


class DamagedState(ValueError):
    """A file of Tune's saved state cannot be read: Tune would silently start the sweep over with one trial."""


def _read(path: Path, load: Callable[[bytes], Any], exp_path: str) -> Any:
    try:
        return load(path.read_bytes())
    except Exception as exc:  # truncated or half-copied: any unpickling or JSON error
        raise DamagedState(
            f"the sweep's saved Tune state {path} cannot be read ({type(exc).__name__}: {exc}); the driver was "
            f"probably killed while Tune copied it. The trials' results in MLflow are kept. To run the sweep "
            f"again, move {exp_path} aside (its runs stay under the same parent run) and start it without --resume"
        ) from None


class UnknownTuneLayout(DamagedState):
    """Tune's saved state is not laid out as this module reads it (another Ray): the resume is refused."""


def layout_problem(snapshot: Any, search: Any, searcher: Any) -> str | None:
    """What in Tune's saved state (the parsed snapshot, search state and searcher state, the last None when
    there is none) is not where `align_search_state` reads and rewrites it, or None when all is."""
    trial_data = snapshot.get("trial_data") if isinstance(snapshot, dict) else None
    if not isinstance(trial_data, list) or not all(isinstance(t, list | tuple) and len(t) == 2 for t in trial_data):
        return "experiment_state: no `trial_data` list of (trial, runtime) pairs"
    try:
        if not all("trial_id" in json.loads(t) for t, _ in trial_data):
            return "experiment_state: a trial without `trial_id`"
    except (TypeError, ValueError):
        return "experiment_state: a trial that is not a JSON object"
    if not isinstance(search, dict) or not isinstance(search.get("counter"), int):
        return "search_gen_state: no integer `counter` of the trials created"
    limiter = search.get(LIMITER)
    if limiter is not None and not (
        isinstance(limiter, dict)
        and isinstance(limiter.get("live_trials"), set)
        and isinstance(limiter.get("num_unfinished_live_trials"), int)
    ):
        return f"search_gen_state: `{LIMITER}` without a `live_trials` set and a `num_unfinished_live_trials` count"
    if searcher is not None and not (
        isinstance(searcher, dict)
        and isinstance(searcher.get("_ot_trials"), dict)
        and all(hasattr(searcher.get("_ot_study"), m) for m in ("tell", "enqueue_trial"))
    ):
        return "searcher-state: not OptunaSearch's `_ot_trials` dict beside its `_ot_study`"
    return None


def _refuse_layout(problem: str, exp_path: str) -> UnknownTuneLayout:
    import ray

    return UnknownTuneLayout(
        f"the sweep's saved Tune state in {exp_path} is not laid out as pclc reads it ({problem}); pclc reads the "
        f"layout of Ray {RAY_CHECKED}.x and Ray {ray.__version__} is installed. pclc refuses to resume it rather "
        f"than guess. The trials' results in MLflow are kept: resume with the Ray that started the sweep, or move "
        f"{exp_path} aside and start it again without --resume"
    )


def _newest(folder: Path, pattern: str) -> Path | None:
    """The file Tune restores from: the greatest name (names end in the session's start time)."""
    found = sorted(folder.glob(pattern))
    return found[-1] if found else None


def align_search_state(exp_path: str) -> str | None:
    """Make the saved search state agree with the saved trials; what was changed, or None. A file that
    cannot be read raises `DamagedState`, naming it: Tune itself would start the sweep over silently; one laid
    out otherwise than Ray `RAY_CHECKED` writes raises `UnknownTuneLayout`, naming the versions.

    Trials the search created after the snapshot (unknown to it) are forgotten: they leave the
    concurrency limiter, fail in Optuna's study, and an initial point one of them had taken is queued
    again, so it is still evaluated exactly once. The count of created trials becomes the snapshot's.
    Local storage only (the window needs a driver killed mid-copy; remote copies are left to Tune).
    """
    folder = Path(exp_path)
    if "://" in exp_path:
        return None
    snapshot, search, searcher = (_newest(folder, p) for p in (SNAPSHOT, SEARCH_STATE, SEARCHER_STATE))
    if snapshot is None or search is None:
        return None
    import ray.cloudpickle as cloudpickle

    saved = _read(snapshot, json.loads, exp_path)
    state = _read(search, cloudpickle.loads, exp_path)
    loaded = _read(searcher, pickle.loads, exp_path) if searcher is not None else None
    problem = layout_problem(saved, state, loaded)
    if problem is not None:
        raise _refuse_layout(problem, exp_path)
    trials = {json.loads(t)["trial_id"] for t, _ in saved["trial_data"]}
    if state["counter"] == len(trials):
        return None
    created = state["counter"]
    state["counter"] = len(trials)
    limiter = state.get(LIMITER) or {}
    optuna_state = loaded
    known = set(limiter.get("live_trials", ())) | set((optuna_state or {}).get("_ot_trials", {}))
    unknown = sorted(known - trials)
    for trial_id in unknown:
        if trial_id in limiter.get("live_trials", ()):
            limiter["live_trials"].discard(trial_id)
            limiter["num_unfinished_live_trials"] = max(0, limiter.get("num_unfinished_live_trials", 1) - 1)
        if optuna_state is not None and trial_id in optuna_state["_ot_trials"]:
            _forget_optuna_trial(optuna_state, optuna_state["_ot_trials"].pop(trial_id))
    if optuna_state is not None and unknown:
        write_atomic(searcher, pickle.dumps(optuna_state))
    write_atomic(search, cloudpickle.dumps(state))
    forgotten = f"; forgot {len(unknown)} trial(s) it never recorded" if unknown else ""
    return (
        f"the saved search state counted {created} trials, the saved snapshot holds {len(trials)}: "
        f"the search continues from the snapshot{forgotten}"
    )


def _forget_optuna_trial(state: dict[str, Any], trial: Any) -> None:
    """Fail `trial` in the study; if it had taken one of the initial points, queue that point again."""
    from optuna.trial import TrialState

    study = state["_ot_study"]
    params = dict(trial.params)
    try:
        study.tell(trial, state=TrialState.FAIL)
    except (RuntimeError, ValueError):  # it had finished: Optuna keeps what it learned
        return
    if any(_same_point(params, point) for point in state.get("_points_to_evaluate") or []):
        study.enqueue_trial(params)


def _same_point(params: dict[str, Any], point: dict[str, Any]) -> bool:
    return all(k in params and params[k] == v for k, v in point.items())
