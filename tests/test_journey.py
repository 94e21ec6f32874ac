"""The laptop journey end to end, as the README tells it: sweep → analyze → the MLflow UI in a browser.

Real parts only: the `pclc` command in subprocesses, a local Ray, MLflow in SQLite, `mlflow ui` on
loopback, and Debian's Chromium driven by Playwright. A screenshot of each page lands in tmp_path.
The one smoke sweep is also checked for its summary and cost metrics, and for writing only into its
folders (`pclc train`'s share of that check is in test_safety.py).
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from machine import UserFolders, ensure_debian_packages, files_under, free_ports, listening_addresses, user_folders
from mlflow.tracking import MlflowClient
from sweep_util import runs

from sweeps.tracking import experiment_ui_path

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = REPO / "sweeps/configs/quickstart.yaml"
BIN = Path(sys.executable).parent
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]


@dataclass(frozen=True)
class Journey:
    """The laptop journey's folders and what its commands printed."""

    user: UserFolders  # the commands' cwd (`work`), HOME and TMPDIR
    sweep_out: str
    analyze_out: str


def pclc(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([str(BIN / "pclc"), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"pclc {' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc


@pytest.fixture(scope="module")
def journey(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Journey]:
    """The README's first commands, once for the module: `pclc sweep quickstart.yaml --smoke-test` (the
    embedded defaults: a local Ray it starts itself, MLflow in <cwd>/mlflow.db), then `pclc analyze`.

    They run with their own HOME and TMPDIR, so the tests below can also check what they leave where."""
    with user_folders(tmp_path_factory.mktemp("journey")) as user:
        sweep = pclc("sweep", str(QUICKSTART), "--smoke-test", cwd=user.work, env=user.env).stdout
        report = pclc("analyze", "--experiment", "quickstart-smoke", cwd=user.work, env=user.env).stdout
        yield Journey(user=user, sweep_out=sweep, analyze_out=report)


@pytest.fixture(scope="module")
def swept(journey: Journey) -> Path:
    """The folder of the finished, analysed smoke sweep: the store a user browses."""
    return journey.user.work


def test_the_sweep_prints_its_summary_and_logs_every_trial_and_its_cost(journey: Journey) -> None:
    out = journey.sweep_out
    # the search's 2 trials, then its best and CE re-trained on 2 fresh seeds (the smoke's confirmation)
    assert "sweep quickstart-smoke: 6 trials: 6 finished, 0 failed" in out
    assert "confirmed on fresh seeds, best robust_acc first" in out
    verdict = out.split("\nverdict (")[-1]  # the last lines: each arm against CE, with its interval
    assert "search #1" in verdict and " vs ce " in verdict and " points [" in verdict, out[-3000:]
    assert any(word in verdict for word in ("better", "worse", "equivalent within", "inconclusive"))
    uri = f"sqlite:///{journey.user.work / 'mlflow.db'}"  # the embedded default: <cwd>/mlflow.db
    assert f"MLflow UI: mlflow ui --backend-store-uri {uri}" in out
    assert "?workflowType=machine_learning)" in out  # the printed link opens the runs, not GenAI traces
    assert (journey.user.work / "ray_results" / "quickstart-smoke").is_dir()
    parent, children = runs(uri, "quickstart-smoke")
    assert parent.info.status == "FINISHED" and len(children) == 6
    # the smoke's training length: 2 epochs, or 3 where the search tried it (epochs is a searched knob)
    assert all(c.info.status == "FINISHED" and c.data.params["epochs"] in ("2", "3") for c in children)
    # what each trial cost, and the sweep's sums in the parent run (CPU trials: no GPU-hours)
    for child in children:
        cost = child.data.metrics
        assert cost["train_seconds"] > 0 and cost["eval_seconds"] > 0 and cost["gpu_hours"] == 0.0
        assert cost["train_seconds"] + cost["eval_seconds"] <= cost["trial_seconds"]
    totals = parent.data.metrics
    for name in ("trial_seconds", "train_seconds", "eval_seconds", "gpu_hours"):
        assert totals[f"total_{name}"] == pytest.approx(sum(c.data.metrics[name] for c in children))
    assert "report.html" in journey.analyze_out


def test_sweep_and_analyze_write_only_into_their_folders(journey: Journey) -> None:
    user = journey.user
    written = files_under(user.work)
    assert not [f for f in written if not f.startswith(("mlflow.db", "mlartifacts/", "ray_results/", "reports/"))], (
        written
    )
    assert any(f.startswith("ray_results/quickstart-smoke/") for f in written)
    assert any(f.startswith("reports/quickstart-smoke/") for f in written)
    # HOME: only third-party state the project does not configure: Ray's auth token (~/.ray) and
    # matplotlib's font cache (~/.cache/matplotlib); nothing of the project's own
    home = files_under(user.home)
    assert not [f for f in home if not f.startswith((".ray/", ".cache/matplotlib/"))], home
    # TMPDIR: Ray's own session folder (ray/session_*) is Ray's, and exempt; nothing else may be left
    assert not [f for f in files_under(user.tmp) if not f.startswith("ray/")], files_under(user.tmp)


@contextlib.contextmanager
def mlflow_ui(store: Path, log: Path) -> Iterator[str]:
    (port,) = free_ports(1)
    cmd = [
        str(BIN / "mlflow"),
        "ui",
        "--backend-store-uri",
        f"sqlite:///{store}",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    with log.open("wb") as sink:
        proc = subprocess.Popen(cmd, stdout=sink, stderr=subprocess.STDOUT, cwd=store.parent)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, f"mlflow ui exited:\n{log.read_text()[-3000:]}"
            with contextlib.suppress(OSError):
                if urllib.request.urlopen(f"{url}/health", timeout=2).status == 200:
                    break
            assert time.monotonic() < deadline, f"mlflow ui never answered:\n{log.read_text()[-3000:]}"
            time.sleep(0.5)
        assert listening_addresses(port) == {"127.0.0.1"}  # loopback only, never a public address
        yield url
    finally:
        proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=20)
        if proc.poll() is None:
            proc.kill()


def test_the_mlflow_ui_shows_the_sweep_its_trials_and_a_plot(swept: Path, tmp_path: Path) -> None:
    chromium = ensure_debian_packages({"chromium": "chromium"})["chromium"]
    from playwright.sync_api import sync_playwright

    client = MlflowClient(f"sqlite:///{swept / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("quickstart-smoke")
    runs = client.search_runs([experiment.experiment_id])
    parent = next(r for r in runs if r.data.tags.get("pclc.role") == "sweep")
    trials = [r for r in runs if r.data.tags.get("pclc.role") == "trial"]
    assert len(trials) == 6  # the search's 2 and the confirmation's 4
    plots = [a.path for a in client.list_artifacts(parent.info.run_id, "analysis") if a.path.endswith(".png")]
    assert plots, "pclc analyze logged no plot to the parent run"

    with mlflow_ui(swept / "mlflow.db", tmp_path / "mlflow-ui.log") as url, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_FLAGS)
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        exp = f"{url}/#/experiments/{experiment.experiment_id}"

        # The experiment's address the sweep prints opens on its runs (the experiment is tagged as model
        # training), not on MLflow 3's GenAI "Overview / Traces" page.
        assert experiment.tags.get("mlflow.experimentKind") == "custom_model_development"
        page.goto(url + experiment_ui_path(experiment.experiment_id), wait_until="load")
        page.wait_for_url("**/runs?**", timeout=60_000)
        page.get_by_text(parent.info.run_name).first.wait_for(timeout=60_000)
        assert "/overview" not in page.url
        page.screenshot(path=str(tmp_path / "landing.png"))

        # The experiment's runs: the parent, expanded to show one child run per trial.
        page.goto(f"{exp}/runs", wait_until="load")
        page.get_by_text(parent.info.run_name).first.wait_for(timeout=60_000)
        page.get_by_text(f"{len(runs)} matching runs").wait_for(timeout=30_000)
        page.locator('[role=gridcell][col-id="attributes.`Run Name`"]').first.locator("button").first.click()
        for trial in trials:
            page.get_by_text(trial.info.run_name).first.wait_for(timeout=30_000)
        assert "quickstart-smoke" in page.inner_text("body")
        page.screenshot(path=str(tmp_path / "runs.png"))

        # One trial's page shows its headline metric.
        page.goto(f"{exp}/runs/{trials[0].info.run_id}", wait_until="load")
        page.get_by_text("robust_acc", exact=True).first.wait_for(timeout=60_000)
        page.screenshot(path=str(tmp_path / "trial.png"))

        # A plot logged by `pclc analyze` renders as an image in the artifact viewer.
        page.goto(f"{exp}/runs/{parent.info.run_id}/artifacts/{plots[0]}", wait_until="load")
        image = page.locator("img[src^='blob:']").first
        image.wait_for(timeout=60_000)
        page.wait_for_function("img => img.complete && img.naturalWidth > 100", arg=image.element_handle())
        page.screenshot(path=str(tmp_path / "plot.png"))
        browser.close()

    for shot in ("landing.png", "runs.png", "trial.png", "plot.png"):
        assert (tmp_path / shot).stat().st_size > 10_000


def test_the_analysis_of_a_real_sweep_reads_every_trial_and_draws_real_plots(swept: Path) -> None:
    from analysis.load import load_sweep
    from analysis.plots import make_plots
    from pclc import metrics as M

    sweep = load_sweep("quickstart-smoke", tracking_uri=f"sqlite:///{swept / 'mlflow.db'}")
    assert sweep.counts()["finished"] == 6 and len(sweep.trials) == 2 and len(sweep.confirmed) == 4
    for attack in ("fgsm", "pgd_ce", "pgd_cw", "mim", "transfer", M.WORST):
        assert sweep.trials[M.robust_key(attack, 0.1)].between(0, 1).all()
    assert sweep.trials[M.PROB_GAP].notna().all()

    plots = make_plots(sweep)
    drawn = [p for p in plots if p.figure is not None]
    assert {p.name for p in drawn} >= {"robust_vs_margin", "robust_vs_eps", "clean_vs_robust"}
    for plot in drawn:
        data_axes = [ax for ax in plot.figure.axes if ax.lines or ax.collections or ax.patches or ax.images]
        assert data_axes, f"{plot.name}: no data drawn"
        # panels sharing axes carry the labels once, on the outer edge: each figure has both somewhere
        assert any(ax.get_xlabel() for ax in data_axes) and any(ax.get_ylabel() for ax in data_axes), plot.name
        assert plot.figure.get_suptitle() or any(ax.get_title() for ax in data_axes), f"{plot.name}: untitled"
    # with 2 trials fANOVA has too little to go on: skipped, and the report says why
    assert all(p.reason for p in plots if p.figure is None)
