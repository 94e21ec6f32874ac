"""Fuzzing the inputs a user hands the `pclc` command (hypothesis): sweep files, `npz:` files, tracking URIs.

The contract, whatever the input: exit 0 or 2, never a traceback; a refusal is one `pclc CMD: error:` message;
a refused input leaves no store holding a RUNNING or FAILED run. Generated inputs go through `sweeps.cli.main`
in-process with the expensive part past the checks stubbed (`sweep_command`: Ray and the trials; `run_trial`:
the training after the data is loaded), so what is exercised is every check a real command makes first; a few
run the real command in a subprocess. Derandomized with a fixed budget: the same inputs every run, ~30 s.

`PCLC_FUZZ_REPORT=FILE` writes the tally (inputs tried and outcomes, by class) for docs/bad-input.md.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
import tempfile
import types
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pclc.data import DataError, check_npz, load_npz, npz_num_classes
from sweeps.cli import main

QUICKSTART = Path(__file__).parents[1] / "sweeps/configs/quickstart.yaml"
BASE = yaml.safe_load(QUICKSTART.read_text())
TALLY: dict[str, Counter[str]] = {}


def fuzz(examples: int) -> Any:
    """The suite's fixed budget: the same `examples` inputs on every run, no example database, no deadline."""
    return settings(
        max_examples=examples,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )


@pytest.fixture(scope="module", autouse=True)
def _report() -> Iterator[None]:
    yield
    if path := os.environ.get("PCLC_FUZZ_REPORT"):
        Path(path).write_text(json.dumps({k: dict(v) for k, v in TALLY.items()}, indent=2, sort_keys=True))


@pytest.fixture(scope="module")
def checks_only() -> Iterator[None]:
    """`pclc sweep` stops after its pre-flight (no Ray), `pclc train` after loading its data (no training)."""

    def prepared_only(cfg: Any, reporter: Any, **_: Any) -> dict[str, float]:
        from pclc.experiment import prepare

        prepare(cfg.model_copy(update={"attacks": ["fgsm"]}))  # no substitute: only the data
        return {}

    driver = types.ModuleType("sweeps.driver")  # a stand-in: importing the real one would import Ray (~20 s)
    driver.sweep_command = lambda args: 0  # type: ignore[attr-defined]
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(sys.modules, "sweeps.driver", driver)
        mp.setattr("pclc.experiment.run_trial", prepared_only)
        yield


@contextlib.contextmanager
def in_folder() -> Iterator[Path]:
    """A fresh working folder per input (hypothesis reuses a test's fixtures across its examples)."""
    old = Path.cwd()
    with tempfile.TemporaryDirectory() as folder:
        os.chdir(folder)
        try:
            yield Path(folder)
        finally:
            os.chdir(old)


def contract(kind: str, argv: list[str]) -> int:
    """Run `pclc ARGV` in-process, tally its outcome under `kind`, and assert the CLI's contract."""
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            rc = main(argv)
    except BaseException as exc:  # what would be a traceback: tallied, then the test fails on it
        TALLY.setdefault(kind, Counter())["traceback"] += 1
        raise AssertionError(f"pclc {' '.join(argv)!r} raised {type(exc).__name__}: {exc}") from exc
    text = err.getvalue()
    TALLY.setdefault(kind, Counter())[f"exit {rc}" if rc in (0, 2) else "other exit"] += 1
    assert rc in (0, 2), text
    assert "Traceback" not in text, text
    if rc == 2:
        assert text.startswith(f"pclc {argv[0]}: error: ") and text.count(": error: ") == 1, text
    return rc


def no_open_runs(folder: Path) -> None:
    """No MLflow store in `folder` holds a RUNNING or FAILED run."""
    db = folder / "mlflow.db"
    if not db.exists():
        return
    import sqlite3

    with contextlib.closing(sqlite3.connect(db)) as con:
        rows = con.execute("SELECT status FROM runs WHERE status IN ('RUNNING', 'FAILED')").fetchall()
    assert not rows, rows


# --------------------------------------------------------------------------- sweep files

NUMBERS = st.one_of(
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0, -1, 1, 10**12, 1e308, -0.0, 0.5]),
)
TEXT = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=12)
SCALARS = st.one_of(st.none(), st.booleans(), NUMBERS, TEXT)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(TEXT, inner, max_size=3)),
    max_leaves=6,
)
# Every path of the shipped quickstart, nested parts included: where a wrong value or a deletion goes.
PATHS = sorted(
    {(k,) for k in BASE}
    | {(k, sub) for k, v in BASE.items() if isinstance(v, dict) for sub in v}
    | {("trial", k) for k in ("epochs", "lc_weight", "margin", "eps", "seed", "dataset", "out_dir", "milestones")}
    | {("resources", "gpu"), ("confirm", "top"), ("scheduler", "grace_period"), ("verdict", "margin")}
)


@st.composite
def sweep_files(draw: st.DrawFn) -> Any:
    """A quickstart with a few of its fields changed: wrong types and ranges, removed keys, unknown keys
    (unicode, huge numbers), or now and then a whole file that is not a sweep at all."""
    if draw(st.integers(0, 9)) == 0:
        return draw(VALUES)
    data = json.loads(json.dumps(BASE))
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(PATHS))
        node = data
        for part in path[:-1]:
            node = node.setdefault(part, {}) if isinstance(node, dict) else {}
        if not isinstance(node, dict):
            continue
        action = draw(st.sampled_from(["value", "value", "delete", "extra"]))
        if action == "value":
            node[path[-1]] = draw(VALUES)
        elif action == "delete":
            node.pop(path[-1], None)
        else:
            node[draw(TEXT)] = draw(VALUES)
    return data


@fuzz(120)
@given(data=sweep_files())
def test_generated_sweep_files_exit_0_or_2(checks_only: None, data: Any) -> None:
    with in_folder() as folder:
        path = folder / "sweep.yaml"
        path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
        contract("sweep file", ["sweep", str(path)])
        no_open_runs(folder)
        assert not (folder / "ray_results").exists()


@fuzz(40)
@given(override=st.tuples(st.sampled_from([".".join(p) for p in PATHS]), VALUES))
def test_generated_set_overrides_exit_0_or_2(checks_only: None, override: tuple[str, Any]) -> None:
    key, value = override
    with in_folder():
        text = json.dumps(value, allow_nan=True) if not isinstance(value, str) else value
        contract("sweep --set", ["sweep", str(QUICKSTART), "--set", f"{key}={text}"])


@fuzz(40)
@given(blob=st.binary(max_size=64))
def test_generated_bytes_as_the_sweep_file_exit_2(checks_only: None, blob: bytes) -> None:
    with in_folder() as folder:
        path = folder / "sweep.yaml"
        path.write_bytes(blob)
        assert contract("sweep file (bytes)", ["sweep", str(path)]) == 2  # no bytes make a sweep: `name` is required


# --------------------------------------------------------------------------- npz files

DTYPES = st.sampled_from(["uint8", "float32", "float64", "float16", "int64", "int8", "bool", "complex64", "U2", "O"])


@st.composite
def arrays(draw: st.DrawFn, *, labels: bool, n: int) -> np.ndarray:
    """An image or label array of some shape and dtype, with NaN, inf and values out of range now and then."""
    if draw(st.booleans()):  # half the arrays are well formed: the file as a whole may load
        rng = np.random.default_rng(draw(st.integers(0, 2**16)))
        k = draw(st.integers(1, 4))
        return (np.arange(n) % k) if labels else rng.integers(0, 256, (n, 8, 8), dtype=np.uint8)
    if labels:
        shape = draw(st.sampled_from([(n,), (n, 1), (n, 2), (max(0, n - 1),), ()]))
        values = draw(st.lists(st.integers(-2, 60), min_size=1, max_size=8))
        flat = np.resize(np.array(values), int(np.prod(shape)))
        dtype = draw(st.sampled_from(["int64", "int64", "int32", "uint8", "float32", "float64", "U2", "O", "bool"]))
    else:
        side = draw(st.sampled_from([1, 4, 8]))
        shape = draw(st.sampled_from([(n, side, side), (n, 1, side, side), (n, side, side, 3), (n, side), (n,)]))
        flat = np.resize(np.array(draw(st.lists(NUMBERS, min_size=1, max_size=6)), dtype=object), int(np.prod(shape)))
        dtype = draw(DTYPES)
    try:
        with np.errstate(all="ignore"):
            return np.asarray(flat.tolist() if dtype != "O" else flat, dtype=dtype).reshape(shape)
    except (ValueError, TypeError, OverflowError):  # values that dtype cannot hold: plain labels instead
        return np.zeros(shape, dtype="int64")


@st.composite
def npz_contents(draw: st.DrawFn) -> dict[str, np.ndarray]:
    n = draw(st.sampled_from([40, 40, 40, 5, 1, 0]))
    out = {"x": draw(arrays(labels=False, n=n)), "y": draw(arrays(labels=True, n=n))}
    if draw(st.booleans()):
        m = draw(st.sampled_from([0, 4, 12]))
        out["x_test"], out["y_test"] = draw(arrays(labels=False, n=m)), draw(arrays(labels=True, n=m))
    if draw(st.integers(0, 5)) == 0:  # now and then a part is missing
        del out[draw(st.sampled_from(sorted(out)))]
    return out


@fuzz(100)
@given(contents=npz_contents())
def test_generated_npz_files_load_or_are_a_data_error(checks_only: None, contents: dict[str, np.ndarray]) -> None:
    with in_folder() as folder:
        path = folder / "data.npz"
        np.savez(path, **contents)
        for check in (check_npz, npz_num_classes, load_npz):  # each entry point: a Dataset or one DataError
            with contextlib.suppress(DataError):
                check(path)
        contract("npz file", ["train", "--set", f"dataset=npz:{path}", "--set", "eval_limit=8"])
        assert not (folder / "runs").exists() or all(not any(p.iterdir()) for p in (folder / "runs").iterdir())


# --------------------------------------------------------------------------- tracking URIs

HOSTS = st.sampled_from(["127.0.0.1", "localhost", "[::1]", "", "nohost.invalid", "ü.invalid", "a b.invalid"])
PORTS = st.one_of(st.just(""), st.integers(0, 70000).map(lambda p: f":{p}"), TEXT.map(lambda t: f":{t}"))
SCHEMES = st.sampled_from(
    ["http", "https", "sqlite", "postgresql", "postgresql+psycopg2", "postgresql+psycopg", "mysql", "file", "foo", ""]
)


@st.composite
def tracking_uris(draw: st.DrawFn) -> str:
    """URIs as users type them: known and unknown schemes, loopback or unresolvable hosts (`.invalid` never
    resolves, so no input waits on the network), ports that are numbers or not, unicode paths."""
    scheme, host, port = draw(SCHEMES), draw(HOSTS), draw(PORTS)
    path = draw(st.sampled_from(["", "/", "/db", "/mlflow.db"])) + draw(TEXT.map(lambda t: t.replace("\x00", "")))
    if scheme == "sqlite":
        return draw(st.sampled_from(["sqlite:///", "sqlite://", "sqlite:////nowhere/"])) + path.lstrip("/")
    return (f"{scheme}://" if scheme else "") + host + port + path


@fuzz(80)
@given(uri=tracking_uris())
def test_generated_tracking_uris_exit_0_or_2(checks_only: None, uri: str) -> None:
    with in_folder() as folder:
        contract("tracking URI (sweep)", ["sweep", str(QUICKSTART), "--tracking-uri", uri])
        contract("tracking URI (analyze)", ["analyze", "--experiment", "quickstart", "--tracking-uri", uri])
        no_open_runs(folder)


# --------------------------------------------------------------------------- the real command

RUNNER = (
    "import sys\nfrom sweeps.cli import main\nrc = main(sys.argv[1:])\n"
    "print('ray imported:', 'ray' in sys.modules, file=sys.stderr)\nsys.exit(rc)\n"
)


@fuzz(2)
@given(
    field=st.sampled_from(["num_trials", "max_concurrent", "trial", "resources", "objective"]),
    value=st.one_of(TEXT.filter(lambda t: not t.strip().isdigit()), st.booleans()),
)
def test_generated_bad_fields_through_the_real_command(field: str, value: Any) -> None:
    # values of the wrong type for these fields are always refused: the real command must never reach Ray
    with in_folder() as folder:
        path = folder / "sweep.yaml"
        path.write_text(yaml.safe_dump({**BASE, field: value}, allow_unicode=True), encoding="utf-8")
        proc = subprocess.run(
            [sys.executable, "-c", RUNNER, "sweep", str(path)], capture_output=True, text=True, timeout=120
        )
        TALLY.setdefault("sweep file (subprocess)", Counter())[f"exit {proc.returncode}"] += 1
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
        assert "ray imported: False" in proc.stderr and not (folder / "mlflow.db").exists()
