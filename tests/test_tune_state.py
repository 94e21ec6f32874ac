"""Tune's private snapshot (`sweeps.tune_state`): read as the pinned Ray writes it, refused loudly otherwise.

`tests/fixtures/tune_state` holds the three state files of a finished two-trial Optuna sweep, written by the pinned
Ray (`RAY_CHECKED`; `tests/fixtures/write_tune_state.py` rewrites them when the pin moves). No Ray is started: the files are read as a resume does.
"""

from __future__ import annotations

import pickle
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from sweeps.tune_state import (
    LIMITER,
    RAY_CHECKED,
    SEARCH_STATE,
    SEARCHER_STATE,
    SNAPSHOT,
    UnknownTuneLayout,
    align_search_state,
    layout_problem,
)

ROOT = Path(__file__).resolve().parents[1]
WRITTEN = ROOT / "tests" / "fixtures" / "tune_state"


def _copy(tmp_path: Path) -> Path:
    exp = tmp_path / "exp"
    shutil.copytree(WRITTEN, exp)
    return exp


def _edit(exp: Path, pattern: str, change: Callable[[Any], Any]) -> None:
    """Rewrite one state file through `change(parsed) -> parsed`, in the file's own encoding."""
    import json

    import ray.cloudpickle as cloudpickle

    (path,) = exp.glob(pattern)
    dumps, loads = {
        SNAPSHOT: (lambda o: json.dumps(o).encode(), json.loads),
        SEARCH_STATE: (cloudpickle.dumps, cloudpickle.loads),
        SEARCHER_STATE: (pickle.dumps, pickle.loads),
    }[pattern]
    path.write_bytes(dumps(change(loads(path.read_bytes()))))


def test_a_snapshot_written_by_the_pinned_ray_is_read_and_mended(tmp_path: Path) -> None:
    import ray.cloudpickle as cloudpickle

    exp = _copy(tmp_path)
    assert align_search_state(str(exp)) is None  # a finished sweep: the search counted what the snapshot holds
    _edit(exp, SEARCH_STATE, lambda s: {**s, "counter": 1})  # as a kill mid-copy leaves it
    assert "counted 1 trials, the saved snapshot holds 2" in (align_search_state(str(exp)) or "")
    ((gen,),) = [list(exp.glob(SEARCH_STATE))]
    assert cloudpickle.loads(gen.read_bytes())["counter"] == 2


def _drop(key: str) -> Callable[[dict[str, Any]], dict[str, Any]]:
    return lambda d: {k: v for k, v in d.items() if k != key}


UNKNOWN = {
    "snapshot without trial_data": (SNAPSHOT, _drop("trial_data"), "trial_data"),
    "search state counter renamed": (
        SEARCH_STATE,
        lambda s: {**_drop("counter")(s), "num_created": s["counter"]},
        "counter",
    ),
    "limiter keeps a list": (
        SEARCH_STATE,
        lambda s: {**s, LIMITER: {**s[LIMITER], "live_trials": sorted(s[LIMITER]["live_trials"])}},
        "live_trials",
    ),
    "optuna state renamed": (SEARCHER_STATE, lambda d: {**_drop("_ot_trials")(d), "_trials": {}}, "_ot_trials"),
}


@pytest.mark.parametrize("case", sorted(UNKNOWN))
def test_an_unknown_layout_refuses_the_resume_naming_the_ray_versions(tmp_path: Path, case: str) -> None:
    import ray

    pattern, change, named = UNKNOWN[case]
    exp = _copy(tmp_path)
    _edit(exp, SEARCH_STATE, lambda s: {**s, "counter": 1})  # counts that disagree: the old code mended these
    _edit(exp, pattern, change)
    before = {p.name: p.read_bytes() for p in exp.iterdir()}
    with pytest.raises(UnknownTuneLayout, match=re.escape(named)) as refused:
        align_search_state(str(exp))
    assert f"Ray {RAY_CHECKED}.x" in str(refused.value) and f"Ray {ray.__version__} is installed" in str(refused.value)
    assert {p.name: p.read_bytes() for p in exp.iterdir()} == before  # nothing rewritten


def test_layout_problem_accepts_the_written_files_and_no_searcher() -> None:
    import json

    import ray.cloudpickle as cloudpickle

    ((snap,), (gen,), (searcher,)) = (list(WRITTEN.glob(p)) for p in (SNAPSHOT, SEARCH_STATE, SEARCHER_STATE))
    saved, state = json.loads(snap.read_bytes()), cloudpickle.loads(gen.read_bytes())
    assert layout_problem(saved, state, pickle.loads(searcher.read_bytes())) is None
    assert layout_problem(saved, state, None) is None  # a search with no searcher file (a grid) is fine


def test_ray_is_pinned_to_the_minor_version_whose_layout_is_read() -> None:
    from importlib import metadata

    pins = re.findall(r'"ray\[[^\]]*\]([^"]*)"', (ROOT / "pyproject.toml").read_text())
    major, minor = (int(x) for x in RAY_CHECKED.split("."))
    assert pins == [f">={major}.{minor},<{major}.{minor + 1}"]
    assert metadata.version("ray").startswith(RAY_CHECKED + ".")
