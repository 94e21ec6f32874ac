"""Every fact said once (issue 31): each fact below is written in exactly one place of the three packages, and
the others read it from there. A second spelling of one of them fails here, naming the files."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("pclc", "sweeps", "analysis")


def _sources() -> dict[str, ast.Module]:
    return {
        str(p.relative_to(ROOT)): ast.parse(p.read_text(), filename=str(p))
        for package in PACKAGES
        for p in sorted((ROOT / package).rglob("*.py"))
    }


SOURCES = _sources()


def _docstrings(tree: ast.Module) -> set[int]:
    """ids of the docstring constants of a module, its classes and functions (text, not facts)."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                found.add(id(first.value))
    return found


def _where(value: object) -> list[str]:
    """The files (one entry per occurrence) whose code holds the constant `value`, docstrings left out."""
    hits = []
    for path, tree in SOURCES.items():
        skip = _docstrings(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and id(node) not in skip:
                same = node.value == value and type(node.value) is type(value)
                named = isinstance(value, str) and value.endswith((".pt", ".json"))  # a file name, also in a path
                if same or (named and isinstance(node.value, str) and value in node.value):
                    hits.append(path)
    return hits


# fact → (the constant that states it, the one file allowed to state it)
FACTS: dict[str, tuple[object, str]] = {
    "the weights file of a trial": ("model.pt", "pclc/contract.py"),
    "the evaluation artifact": ("evaluation.json", "pclc/contract.py"),
    "the outcomes artifact": ("outcomes.json", "pclc/contract.py"),
    "the finalist tag": ("pclc.finalist", "pclc/contract.py"),
    "the finalist settings tag": ("pclc.finalist_settings", "pclc/contract.py"),
    "the phase tag": ("pclc.phase", "pclc/contract.py"),
    "the authors' ξ": (0.995, "pclc/knobs.py"),
    "the symbol of ξ": ("ξ", "pclc/knobs.py"),
    "the symbol of λ": ("λ", "pclc/knobs.py"),
    "the MLflow client's retries": ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "pclc/contract.py"),
    "the confirmation's Tune experiment": (".confirm", "sweeps/stages.py"),
}


@pytest.mark.parametrize("fact", sorted(FACTS))
def test_each_fact_is_stated_once(fact: str) -> None:
    value, home = FACTS[fact]
    assert _where(value) == [home], f"{fact} ({value!r}) must be stated once, in {home}"


def test_one_confidence_level() -> None:
    # the family's error rate and its level, named once (LEVEL = 1 − ALPHA)
    named = [
        (path, target.id)
        for path, tree in SOURCES.items()
        for node in ast.walk(tree)
        if isinstance(node, ast.Assign)
        for target in node.targets
        if isinstance(target, ast.Name) and re.search(r"LEVEL|ALPHA|CONFIDENCE", target.id)
    ]
    assert named == [("analysis/compare.py", "ALPHA"), ("analysis/compare.py", "LEVEL")]


def test_the_runs_pager_is_written_once() -> None:
    # a paged search reads `page.token`; only pclc.contract.every_page does
    readers = [
        path
        for path, tree in SOURCES.items()
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute) and node.attr == "token"
    ]
    assert readers == ["pclc/contract.py"]


def test_the_registries_order_and_knobs_are_read_not_copied() -> None:
    from analysis.load import SYMBOL, VARIANT_ORDER
    from pclc.config import TrialConfig
    from pclc.knobs import AUTHORS, KNOBS
    from pclc.losses import LOSSES
    from sweeps.config import AUTHORS_REFERENCE

    assert LOSSES.select() == VARIANT_ORDER
    assert {name: k.symbol for name, k in KNOBS.items()} == SYMBOL
    assert {k: TrialConfig().model_dump()[k] for k in AUTHORS} == AUTHORS
    assert {k: AUTHORS_REFERENCE[k] for k in AUTHORS} == AUTHORS
