"""The house's layering, as tests: `pclc` never imports ray, mlflow or optuna; `analysis` never imports ray or sweeps.

Checked twice: statically (every import statement of every module, lazy ones inside functions included)
and dynamically (importing every module in a fresh interpreter and looking at `sys.modules`).
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = {"pclc": ("ray", "mlflow", "optuna"), "analysis": ("ray", "sweeps")}


def _modules(package: str) -> list[str]:
    return sorted(
        ".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        for p in (ROOT / package).rglob("*.py")
        if p.name != "__main__.py"  # runs the CLI on import; its imports are the CLI's, scanned statically below
    )


def _imported(path: Path) -> set[str]:
    """Top-level names of everything `path` imports, wherever the import statement sits."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_no_module_imports_a_forbidden_package(package: str) -> None:
    bad = {
        str(p.relative_to(ROOT)): sorted(_imported(p) & set(FORBIDDEN[package]))
        for p in sorted((ROOT / package).rglob("*.py"))
    }
    assert not {k: v for k, v in bad.items() if v}, f"{package} must not import {FORBIDDEN[package]}"


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_importing_every_module_loads_no_forbidden_package(package: str) -> None:
    code = (
        "import importlib, json, sys\n"
        f"for name in {_modules(package)!r}:\n"
        "    importlib.import_module(name)\n"
        f"print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {FORBIDDEN[package]!r})))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []


def test_the_scan_sees_lazy_imports(tmp_path: Path) -> None:
    source = tmp_path / "m.py"
    source.write_text("import os\n\ndef f():\n    import ray.tune\n    from mlflow.tracking import MlflowClient\n")
    assert _imported(source) == {"os", "ray", "mlflow"}


def test_a_large_module_says_why_it_is_one_room() -> None:
    # a module over ~500 lines says at its top why its parts belong together (or it is split)
    silent = {
        str(p.relative_to(ROOT)): lines
        for package in ("pclc", "sweeps", "analysis")
        for p in sorted((ROOT / package).rglob("*.py"))
        if (lines := len(p.read_text().splitlines())) > 500
        and "One room" not in (ast.get_docstring(ast.parse(p.read_text())) or "")
    }
    assert not silent, f"modules over 500 lines without 'One room (…)' in their docstring: {silent}"


def test_no_import_circle_inside_sweeps() -> None:
    # every import between sweeps modules, lazy ones included, points one way
    graph = {
        f"sweeps.{p.stem}": {
            n.module
            for n in ast.walk(ast.parse(p.read_text()))
            if isinstance(n, ast.ImportFrom) and n.module and n.module.startswith("sweeps.")
        }
        for p in (ROOT / "sweeps").glob("*.py")
    }
    done: set[str] = set()

    def visit(module: str, path: tuple[str, ...]) -> None:
        assert module not in path, f"import circle: {' -> '.join((*path, module))}"
        if module in done:
            return
        for dep in sorted(graph.get(module, ())):
            visit(dep, (*path, module))
        done.add(module)

    for module in sorted(graph):
        visit(module, ())
