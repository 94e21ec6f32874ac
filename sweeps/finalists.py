"""`pclc evaluate`: re-score the saved weights of chosen trials with the full standard AutoAttack.

A sweep scores every trial cheaply (AutoAttack-grade attacks on a fixed subset, fewer steps when the sweep
file asks). The finalists, picked by run id or as the top N of a sweep, are scored here again with the
reference's standard AutoAttack (APGD-CE → APGD-T → FAB-T → Square) on `limit` test samples (the first `limit`
of `pclc.samples`' stratified order: the trial's own evaluated samples lead it),
and the numbers go into the same MLflow child run under `finalist/…` (pclc.metrics.finalist_key) with the
tag `pclc.finalist` = "1", beside their per-sample outcomes (`finalist/outcomes.json`, pclc.outcomes). The
run's status and its own metrics are left as they are.

Resume: the samples are scored in chunks; after each chunk the per-sample clean/robust flags are written
(atomically) to `<state_dir>/<run_id>-eps<eps>.json`, and a restarted command scores only the chunks
that are missing. The reference seeds every `perturb` call, i.e. every batch, so a sample's random
start depends on the batch it is in: the chunk (cut at fixed offsets from sample 0) is the unit the
seed applies to, and an interrupted-then-resumed evaluation gives the very flags of an uninterrupted one.

Progress: while a chunk is scored, a line on stderr says which attack of the ensemble runs and how many points
are still robust, at each attack's start and end and at most every `PROGRESS_EVERY` seconds in between.

Runs are scored one after the other in this process, or with `--address` one Ray task per run
(Ray is imported only then): the command, choosing the runs and printing the table, is `sweeps.finalists_command`.

One room (~560 lines): the re-score of one run, from its weights to its logged numbers, resumable chunk by chunk;
its parts (the chunked AutoAttack, the run's artifacts, the logging) share the run's state file and settings.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pclc import contract as C
from pclc import metrics as M
from pclc.contract import FINALIST, FINALIST_SETTINGS  # tags on the trial's run (imported from here by tests)
from pclc.files import write_atomic

if TYPE_CHECKING:  # torch, MLflow and the attacks load when there is work, not for `pclc --help`
    import numpy as np
    import torch
    from mlflow.tracking import MlflowClient
    from torch import nn

    from pclc.attacks import AttackSuite
    from pclc.config import TrialConfig
    from pclc.outcomes import Outcomes


ATTACK = "autoattack"  # the reference's standard AutoAttack (pclc.attacks)
DEFAULT_CHUNK = 256  # samples per chunk: the unit of resume (and of AutoAttack's seeding)
DEFAULT_AA_STEPS = 100  # APGD / FAB iterations of the standard AutoAttack
DEFAULT_SQUARE_QUERIES = 5000  # Square Attack queries of the standard AutoAttack
STATE_VERSION = 1
PROGRESS_EVERY = 5.0  # seconds between progress lines while an attack works (Ray Tune's CLIReporter's pace)
# Called after each chunk is scored and saved: (state file, the chunk's first sample). A fault seam, like a
# sweep's `run_fn`: the resume's test kills the process there; production passes none.
ChunkSaved = Callable[[Path, int], None]


class FinalistError(ValueError):
    """A run that cannot be re-scored, or a selection that names none: the message says which and why."""


@dataclass(frozen=True)
class Settings:
    """How to re-score (picklable: a Ray task gets a copy)."""

    tracking_uri: str
    limit: int | None = None  # the first `limit` of the stratified sample order (pclc.samples); None = all
    eps: tuple[float, ...] | None = None  # None = the trial's headline_eps
    batch_size: int | None = None  # None = the trial's eval_batch_size
    device: str = "auto"
    chunk_size: int = DEFAULT_CHUNK
    aa_steps: int = DEFAULT_AA_STEPS
    square_queries: int = DEFAULT_SQUARE_QUERIES
    state_dir: str = ""  # absolute; per-run, per-eps chunk state
    force: bool = False  # score again even when the run holds a complete re-score and state files
    progress_every: float = PROGRESS_EVERY  # at most one progress line this often while an attack works
    on_chunk: ChunkSaved | None = None  # see ChunkSaved (tests only)


@dataclass
class Finalist:
    """One run's outcome: its finalist metrics (schema names), or the error that stopped it."""

    run_id: str
    label: str = ""
    trial_robust_acc: float | None = None
    headline_eps: float | None = None
    eps: tuple[float, ...] = ()
    metrics: dict[str, float] = field(default_factory=dict)
    n: int = 0
    skipped: bool = False  # the run already held this re-score
    chunks_reused: int = 0
    chunks_scored: int = 0
    error: str | None = None


# --------------------------------------------------------------------------- chunked AutoAttack with resume


def state_path(state_dir: str | Path, run_id: str, eps: float) -> Path:
    return Path(state_dir) / f"{run_id}-eps{M.format_eps(eps)}.json"


def _bits(flags: torch.Tensor) -> str:
    return "".join("1" if f else "0" for f in flags.tolist())


def _unbits(text: str) -> torch.Tensor:
    import torch

    return torch.tensor([c == "1" for c in text], dtype=torch.bool)


def _read_state(path: Path, key: dict[str, Any]) -> dict[str, Any]:
    """The chunks saved under the same settings `key`; none when the file is missing, unreadable or other."""
    fresh: dict[str, Any] = {"version": STATE_VERSION, "key": key, "chunks": {}}
    if not path.is_file():
        return fresh
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError):
        print(f"pclc evaluate: note: ignoring unreadable state file {path}", file=sys.stderr)
        return fresh
    if not isinstance(state, dict) or state.get("version") != STATE_VERSION or state.get("key") != key:
        print(f"pclc evaluate: note: {path} was written with other settings; scoring from the start", file=sys.stderr)
        return fresh
    return state


# The reference's log lines that carry counts (a line that reads otherwise only goes unreported).
_INITIAL = re.compile(r"initial accuracy: (?P<percent>[0-9]+(?:\.[0-9]+)?)%")
_PERTURBED = re.compile(r"(?P<broken>\d+) out of (?P<attacked>\d+) successfully perturbed")


class _Progress(logging.Handler):
    """Progress lines while one chunk is scored: which attack of the ensemble runs and how many points remain.

    Read from the reference AutoAttack's own log (it says when each attack starts and how many of the points it
    attacked it broke; our runner sends that log to `pclc.attacks.AA_LOGGER`) and from a heartbeat on the model's
    forward passes; it only watches, so the numbers are those of an unwatched run. One line at each attack's
    start and end, and in between at most one every `every` seconds, on stderr. The points are those the
    ensemble was handed: the chunk's, or with an attack batch smaller than the chunk, the batch's.
    """

    def __init__(self, prefix: str, *, samples: int, later: int, every: float) -> None:
        super().__init__(logging.DEBUG)
        self.prefix, self.samples, self.every = prefix, samples, every
        self.later = f"; {later} samples in later chunks" if later else ""
        self.attack: str | None = None  # the ensemble's attack now running (the registry's name)
        self.standing = 0  # points still robust: what the running attack works on
        self.handed = 0  # points of the latest forward pass outside an attack: those the ensemble was handed
        self.began = self.last = time.monotonic()

    def line(self, text: str) -> None:
        self.last = time.monotonic()
        print(f"{self.prefix}{text}{self.later}", file=sys.stderr, flush=True)

    def emit(self, record: logging.LogRecord) -> None:
        # The reference's lines (pyautoattack/autoattack.py, run_standard_evaluation), in the order they come.
        text = record.getMessage()
        if found := _INITIAL.match(text):  # a batch of points handed to the ensemble, clean-scored
            self.standing = round(float(found["percent"]) * self.handed / 100)
        elif text.startswith("running "):
            self.attack, self.began = text.split()[1].replace("-", "_"), time.monotonic()
            self.line(f"{self.attack} starts on {self.standing} of {self.samples} points still robust")
        elif (found := _PERTURBED.search(text)) and self.attack:  # '<attack> - 1/1 - k out of m successfully …'
            self.standing = int(found["attacked"]) - int(found["broken"])
        elif text.startswith("robust accuracy after ") and self.attack:
            seconds = time.monotonic() - self.began
            self.line(f"{self.attack} done in {seconds:.0f} s: {self.standing} of {self.samples} points still robust")
            self.attack = None

    def heartbeat(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        if self.attack is None:
            self.handed = len(args[0])
        elif time.monotonic() - self.last >= self.every:
            seconds = time.monotonic() - self.began
            self.line(f"{self.attack} running for {seconds:.0f} s on {self.standing} of {self.samples} points")

    @contextlib.contextmanager
    def watching(self, model: nn.Module) -> Iterator[None]:
        from pclc.attacks import AA_LOGGER

        logger = logging.getLogger(AA_LOGGER)
        hook = model.register_forward_pre_hook(self.heartbeat)
        logger.addHandler(self)
        try:
            yield
        finally:
            logger.removeHandler(self)
            hook.remove()


def chunked_autoattack(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    suite: AttackSuite,
    *,
    path: Path,
    key: dict[str, Any],
    chunk_size: int,
    note: str = "",
    progress_every: float = PROGRESS_EVERY,
    on_chunk: ChunkSaved | None = None,
) -> tuple[torch.Tensor, torch.Tensor, int, int]:
    """(clean_correct, robust, chunks reused, chunks scored) of standard AutoAttack at the suite's one eps.

    Chunks are [i, i + chunk_size) from sample 0; each is one `run_suite` call, saved to `path` when done.
    A chunk found in `path` with the same settings `key` and the same bounds is not scored again.
    While a chunk is scored, a line on stderr says which attack runs and how many points remain (at each
    attack's start and end, and at most every `progress_every` seconds in between).
    `on_chunk(path, start)` is called once each scored chunk is saved.
    """
    import torch

    from pclc.attacks import run_suite

    (eps,) = suite.eps
    n = len(y)
    state = _read_state(path, key)
    clean, robust = torch.zeros(n, dtype=torch.bool), torch.zeros(n, dtype=torch.bool)
    reused = scored = 0
    starts = list(range(0, n, chunk_size))
    for i, start in enumerate(starts):
        end = min(start + chunk_size, n)
        saved = state["chunks"].get(str(start))
        if saved is not None and saved.get("end") == end:
            clean[start:end], robust[start:end] = _unbits(saved["clean"]), _unbits(saved["robust"])
            reused += 1
            continue
        began = time.perf_counter()
        where = f"pclc evaluate: {note}eps={M.format_eps(eps)} chunk {i + 1}/{len(starts)}: "
        progress = _Progress(where, samples=end - start, later=n - end, every=progress_every)
        progress.line(f"scoring samples {start}–{end} of {n}")
        with progress.watching(model):
            result = run_suite(model, x[start:end], y[start:end], suite)
        clean[start:end], robust[start:end] = result.clean_correct, result.robust(ATTACK, eps)
        state["chunks"][str(start)] = {
            "end": end,
            "clean": _bits(clean[start:end]),
            "robust": _bits(robust[start:end]),
            "pid": os.getpid(),
            "seconds": round(time.perf_counter() - began, 3),
        }
        write_atomic(path, json.dumps(state, indent=1, sort_keys=True))
        scored += 1
        print(
            f"pclc evaluate: {note}eps={M.format_eps(eps)} chunk {i + 1}/{len(starts)} "
            f"({end}/{n} samples): {int(robust[:end].sum())} robust so far",
            file=sys.stderr,
            flush=True,
        )
        if on_chunk is not None:
            on_chunk(path, start)
    return clean, robust, reused, scored


# --------------------------------------------------------------------------- one run


def config_label(cfg: TrialConfig) -> str:
    """'pclc ξ=0.995 λ=0.05 seed=0': the loss and the paper's knobs it uses, and the seed."""
    from pclc.knobs import SYMBOL
    from pclc.losses import IGNORED_BY_LOSS, KNOBS

    knobs = [k for k in KNOBS if k not in IGNORED_BY_LOSS.get(cfg.loss, frozenset())]
    return " ".join([cfg.loss, *(f"{SYMBOL.get(k, k)}={getattr(cfg, k):g}" for k in knobs), f"seed={cfg.seed}"])


def _download(client: MlflowClient, run_id: str, artifact: str, folder: str) -> Path | None:
    from sweeps.tracking import retrying

    parent = str(Path(artifact).parent) if "/" in artifact else None
    listed = {a.path for a in retrying(client.list_artifacts, run_id, parent)}
    if artifact not in listed:
        return None
    return Path(retrying(client.download_artifacts, run_id, artifact, folder))


def _trial_config(path: Path, run_id: str) -> TrialConfig:
    from pclc.config import TrialConfig, make_config

    try:
        payload = json.loads(path.read_text())
        values = payload["config"]
        assert isinstance(values, dict)
    except (OSError, ValueError, KeyError, TypeError, AssertionError):
        raise FinalistError(
            f"run {run_id}: {C.EVALUATION_ARTIFACT} holds no resolved trial config ('config')"
        ) from None
    unknown = sorted(set(values) - set(TrialConfig.model_fields))
    if unknown:  # a run logged by an older version: the fields that matter here are all still there
        print(
            f"pclc evaluate: note: run {run_id}: ignoring config fields this version lacks: {unknown}", file=sys.stderr
        )
    known = {k: v for k, v in values.items() if k in TrialConfig.model_fields}
    return make_config(known, source=f"run {run_id} {C.EVALUATION_ARTIFACT}")


def _done_settings(tags: dict[str, str]) -> dict[str, Any] | None:
    if tags.get(FINALIST) != "1":
        return None
    try:
        settings = json.loads(tags.get(FINALIST_SETTINGS, ""))
    except ValueError:
        return None
    return settings if isinstance(settings, dict) else None


def evaluate_run(run_id: str, settings: Settings) -> Finalist:
    """Re-score one finished trial run with standard AutoAttack and log the result into it.

    Example (an illustration: it needs a trained model or a store):
        >>> s = Settings(tracking_uri="sqlite:////work/mlflow.db", limit=1000, state_dir="/work/runs/finalists")  # doctest: +SKIP
        >>> evaluate_run("0f3c…", s).metrics["finalist/robust_acc"]  # doctest: +SKIP
    """
    import torch
    from mlflow.entities import Metric, RunTag
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from pclc.attacks import AttackSuite, left_out
    from pclc.data import load_dataset
    from pclc.models import create_model
    from pclc.samples import DESIGN, draw
    from pclc.train import load_checkpoint, select_device
    from sweeps.tracking import FINAL, ROLE, retrying

    client = MlflowClient(settings.tracking_uri)
    try:
        run = retrying(client.get_run, run_id)
    except MlflowException:
        raise FinalistError(f"no run {run_id!r} in {settings.tracking_uri}") from None
    tags = run.data.tags
    if tags.get(ROLE) == "sweep":
        raise FinalistError(f"run {run_id} is a sweep's parent run, not a trial: pass a trial (child) run id")
    if run.info.status != "FINISHED" or tags.get(FINAL, "1") != "1":
        raise FinalistError(
            f"run {run_id} is {run.info.status} without its final evaluation: "
            "only a finished trial has final weights to re-score"
        )

    with tempfile.TemporaryDirectory(prefix="pclc-finalist-") as tmp:
        weights = _download(client, run_id, C.WEIGHTS_ARTIFACT, tmp)
        if weights is None:
            raise FinalistError(
                f"run {run_id} has no weights artifact ({C.WEIGHTS_ARTIFACT}): its trial ran with "
                "save_weights: false. Set `save_weights: true` in the sweep file's trial: block "
                "(or --set save_weights=true) and run the trial again to re-score it"
            )
        evaluation = _download(client, run_id, C.EVALUATION_ARTIFACT, tmp)
        if evaluation is None:
            raise FinalistError(f"run {run_id} has no {C.EVALUATION_ARTIFACT}: its final evaluation was never logged")
        cfg = _trial_config(evaluation, run_id)
        state_dict = load_checkpoint(weights)
        earlier = _download(client, run_id, C.FINALIST_OUTCOMES_ARTIFACT, tmp)
        earlier_text = earlier.read_text() if earlier is not None else None

    eps_list = tuple(sorted({float(e) for e in (settings.eps or (cfg.headline_eps,))}))
    out = Finalist(
        run_id=run_id,
        label=config_label(cfg),
        trial_robust_acc=run.data.metrics.get(M.ROBUST_ACC),
        headline_eps=cfg.headline_eps,
        eps=eps_list,
    )
    data = load_dataset(cfg.dataset, data_root=cfg.data_root, download=cfg.download)
    n = len(data.y_test) if settings.limit is None else min(settings.limit, len(data.y_test))
    out.n = n
    done = _done_settings(tags)
    same = done is not None and all(
        done.get(k) == v
        for k, v in (
            ("n", n),
            ("samples", DESIGN),  # a re-score of the head-of-split days scored other samples
            ("aa_steps", settings.aa_steps),
            ("square_queries", settings.square_queries),
        )
    )
    covered = set(map(float, done.get("eps", []))) if same and done else set()
    todo = eps_list if settings.force else tuple(e for e in eps_list if e not in covered)
    if not todo:
        out.skipped = True
        out.metrics = {M.from_mlflow(k): v for k, v in run.data.metrics.items() if k.startswith(M.FINALIST_PREFIX)}
        return out

    # the parts of AutoAttack too few classes cannot run, said as a trial says them
    for note in left_out((ATTACK,), data.num_classes):
        print(f"pclc evaluate: run {run_id[:8]}: {note}", file=sys.stderr, flush=True)
    device = select_device(settings.device)
    model = create_model(cfg.model, input_shape=data.input_shape, num_classes=data.num_classes)
    model.load_state_dict(state_dict)
    model.to(device).eval()
    drawn = draw(data.x_test, data.y_test, num_classes=data.num_classes, eval_limit=n, aa_limit=None, epoch_samples=0)
    picked = torch.as_tensor(drawn.evaluated)
    x, y = data.x_test[picked], data.y_test[picked]
    batch_size = settings.batch_size or cfg.eval_batch_size
    metrics: dict[str, float] = {}
    flags: dict[float, tuple[torch.Tensor, torch.Tensor]] = {}  # eps → (clean_correct, robust), per sample
    for eps in todo:
        suite = AttackSuite(
            attacks=(ATTACK,),
            eps=(eps,),
            aa_limit=None,
            aa_eps=None,
            batch_size=batch_size,
            seed=cfg.seed,
            aa_steps=settings.aa_steps,
            square_queries=settings.square_queries,
        )
        key = {
            "attack": ATTACK,
            "eps": eps,
            "seed": cfg.seed,
            "chunk_size": settings.chunk_size,
            "batch_size": batch_size,
            "aa_steps": settings.aa_steps,
            "square_queries": settings.square_queries,
            "n_test": len(data.y_test),
            "samples": DESIGN,  # a state file of the head-of-split days holds other samples' flags
        }
        path = state_path(settings.state_dir, run_id, eps)
        if settings.force:
            path.unlink(missing_ok=True)
        clean, robust, reused, scored = chunked_autoattack(
            model,
            x,
            y,
            suite,
            path=path,
            key=key,
            chunk_size=settings.chunk_size,
            note=f"run {run_id[:8]} ",
            progress_every=settings.progress_every,
            on_chunk=settings.on_chunk,
        )
        out.chunks_reused += reused
        out.chunks_scored += scored
        flags[eps] = (clean, robust)
        metrics[M.finalist_key(M.CLEAN_ACC)] = clean.float().mean().item()
        metrics[M.finalist_key(M.robust_key(ATTACK, eps))] = robust.float().mean().item()
        if eps == cfg.headline_eps:
            metrics[M.finalist_key(M.ROBUST_ACC)] = robust.float().mean().item()
    metrics[M.finalist_key("n_samples")] = float(n)

    now = int(time.time() * 1000)
    record = {
        "n": n,
        "samples": DESIGN,
        "aa_steps": settings.aa_steps,
        "square_queries": settings.square_queries,
        "eps": sorted(covered | set(todo)),
    }
    # The per-sample outcomes go first: a kill before the tag below leaves a run that is scored again.
    outcomes = finalist_outcomes(
        flags,
        dataset=cfg.dataset,
        indices=drawn.evaluated,
        labels=drawn.labels,
        headline_eps=cfg.headline_eps,
        earlier=earlier_text,
        kept=covered - set(todo),
    )
    retrying(client.log_text, run_id, outcomes.to_json(), C.FINALIST_OUTCOMES_ARTIFACT)
    retrying(
        client.log_batch,
        run_id,
        metrics=[Metric(M.to_mlflow(k), v, now, 0) for k, v in metrics.items()],
        tags=[RunTag(FINALIST_SETTINGS, json.dumps(record)), RunTag(FINALIST, "1")],
    )
    logged = retrying(client.get_run, run_id).data.metrics
    out.metrics = {M.from_mlflow(k): v for k, v in logged.items() if k.startswith(M.FINALIST_PREFIX)}
    return out


def finalist_outcomes(
    flags: dict[float, tuple[torch.Tensor, torch.Tensor]],
    *,
    dataset: str,
    indices: np.ndarray,
    labels: np.ndarray,
    headline_eps: float,
    earlier: str | None = None,
    kept: set[float] | frozenset[float] = frozenset(),
) -> Outcomes:
    """The re-score's per-sample outcomes on the test samples `indices` (labels `labels`): clean_acc and
    robust_acc/autoattack/eps=<eps> for each eps of `flags` (eps → (clean_correct, robust)), robust_acc naming
    the headline eps; keys `finalist_key` prefixes when logged. The eps in `kept`, scored by an earlier call
    and not again now, come from that call's artifact text `earlier` (when it has them, on the same samples)."""
    import numpy as np
    import torch

    from pclc.outcomes import Outcomes, OutcomesError
    from pclc.samples import DESIGN

    everyone = torch.ones(len(indices), dtype=torch.bool)
    clean: Any = None
    robust: dict[float, Any] = {}  # eps → per-sample robust flags
    if earlier is not None and kept:
        try:
            before = Outcomes.from_json(earlier)
        except OutcomesError as exc:
            print(f"pclc evaluate: note: ignoring the earlier {C.FINALIST_OUTCOMES_ARTIFACT}: {exc}", file=sys.stderr)
        else:
            if before.dataset == dataset and before.samples == DESIGN and np.array_equal(before.indices, indices):
                clean = before.correct.get(M.CLEAN_ACC)
                robust = {
                    e: before.correct[M.robust_key(ATTACK, e)]
                    for e in kept
                    if M.robust_key(ATTACK, e) in before.correct
                }
    for eps, (clean_now, robust_now) in flags.items():
        clean, robust[eps] = clean_now, robust_now  # the clean flags are the same at every eps
    if clean is None:
        raise ValueError("finalist outcomes need at least one eps scored now or kept from an earlier call")
    correct = {M.CLEAN_ACC: clean, **{M.robust_key(ATTACK, e): robust[e] for e in sorted(robust)}}
    headline = M.robust_key(ATTACK, headline_eps)
    headlines = {M.ROBUST_ACC: headline} if headline in correct else {}
    scored = {key: everyone for key in correct}  # the standard AutoAttack scores every sample
    return Outcomes(
        dataset=dataset, indices=indices, scored=scored, correct=correct, headlines=headlines, labels=labels
    )


def attempt(run_id: str, settings: Settings) -> Finalist:
    """`evaluate_run`, with a problem the user can fix returned as the run's error instead of raised."""
    from mlflow.exceptions import MlflowException

    try:
        return evaluate_run(run_id, settings)
    except (ValueError, FileNotFoundError, PermissionError, MlflowException) as exc:
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if not text.startswith(f"run {run_id}") and run_id not in text:
            text = f"run {run_id}: {text}"
        return Finalist(run_id=run_id, error=text)


def attempt_on_worker(run_id: str, settings: Settings) -> Finalist:
    """`attempt` in a Ray task, as a sweep's trial runs: on the GPU Ray gave it, on the CPU when it gave none
    (`auto` would take a GPU nobody reserved), and refused at once when torch cannot use the GPU it was given."""
    from pclc.gpu import GPUUnavailableError, check_gpus_usable, cuda_info
    from sweeps.trainable import assigned_gpu_ids, trial_device

    gpu_ids = assigned_gpu_ids()
    cuda = cuda_info()
    try:
        check_gpus_usable(
            gpu_ids=gpu_ids,
            cuda_available=cuda.available,
            driver=cuda.driver,
            torch_cuda=cuda.torch_cuda,
            who="this Ray task",
        )
    except GPUUnavailableError as exc:
        return Finalist(run_id=run_id, error=f"run {run_id}: {exc}")
    return attempt(run_id, replace(settings, device=trial_device(settings.device, gpu_ids=gpu_ids)))
