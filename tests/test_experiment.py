from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from pclc import metrics as M
from pclc.config import TrialConfig, make_config
from pclc.contract import OUTCOMES_ARTIFACT
from pclc.experiment import Evaluation, draw_subsets, prepare, run_trial, substitute_config, train_substitute
from pclc.outcomes import Outcomes
from pclc.train import load_checkpoint

SMALL = {
    "epochs": 3,
    "warmup_epochs": 1,
    "eval_limit": 96,
    "epoch_eval_samples": 32,
    "attack_steps": 3,
    "attacks": ["fgsm", "pgd_ce", "pgd_cw", "transfer"],
    "eps": [0.1, 0.2],
    "headline_eps": 0.1,
    "substitute_epochs": 2,
}


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[dict[str, float], dict[str, Any] | None]] = []
        self.evaluation: Evaluation | None = None

    def on_epoch(self, metrics: dict[str, float], state: dict[str, Any] | None) -> None:
        self.calls.append((dict(metrics), state if state is not None else {}))  # {}: an epoch without a checkpoint

    def on_final(self, evaluation: Evaluation) -> None:  # recorded as the last call, without a state
        self.evaluation = evaluation
        self.calls.append((dict(evaluation.metrics), None))


@pytest.fixture(scope="module")
def prepared():
    return prepare(make_config(SMALL))


def test_trial_reports_every_epoch_then_the_full_evaluation(prepared, tmp_path: Path) -> None:
    cfg = make_config({**SMALL, "out_dir": str(tmp_path / "out")})
    rec = Recorder()
    final = run_trial(cfg, rec, prepared=prepared)

    epochs = [m for m, s in rec.calls if s is not None]
    assert [m[M.EPOCH] for m in epochs] == [1, 2, 3]
    assert all({M.TRAIN_LOSS, M.CLEAN_ACC, M.EPOCH_ROBUST_ACC} <= m.keys() for m in epochs)
    assert rec.calls[-1] == (final, None)
    for attack in ("fgsm", "pgd_ce", "pgd_cw", "transfer", M.WORST):
        for eps in (0.1, 0.2):
            assert 0.0 <= final[M.robust_key(attack, eps)] <= final[M.CLEAN_ACC]
    assert final[M.ROBUST_ACC] == final[M.robust_key(M.WORST, 0.1)]
    assert -1.0 <= final[M.PROB_GAP] <= 1.0 and final[M.CLEAN_ACC] > 0.5
    assert any(k.startswith(M.MASKING_PREFIX) for k in final)

    written = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert written["metrics"] == pytest.approx(final, nan_ok=True)
    assert written["config"]["loss"] == "pclc" and isinstance(written["warnings"], list)
    assert written == json.loads(json.dumps(rec.evaluation.to_dict()))  # the reporter got what metrics.json holds
    assert set(load_checkpoint(tmp_path / "out" / "model.pt")) == set(rec.calls[0][1]["model"])


def test_trial_writes_per_sample_outcomes_that_give_back_its_metrics(prepared, tmp_path: Path) -> None:
    # one epoch, and an AutoAttack-grade attack on a subset: per-key scored samples differ
    changes = {"epochs": 1, "warmup_epochs": 0, "attacks": ["fgsm", "pgd_cw", "apgd_ce"], "aa_limit": 40}
    cfg = make_config({**SMALL, **changes, "aa_steps": 5, "out_dir": str(tmp_path / "out")})
    rec = Recorder()
    run_trial(cfg, rec, prepared=prepared)

    written = json.loads((tmp_path / "out" / "metrics.json").read_text())["metrics"]
    outcomes = Outcomes.from_json((tmp_path / "out" / OUTCOMES_ARTIFACT).read_text())
    # the stratified draw of the test split (pclc.samples), with each sample's label
    drawn = draw_subsets(cfg, prepared.data)
    assert outcomes.dataset == "digits" and outcomes.indices.tolist() == drawn.evaluated.tolist()
    assert len(outcomes.indices) == 96 and outcomes.indices.tolist() != list(range(96))
    assert outcomes.labels.tolist() == prepared.data.y_test[outcomes.indices].tolist()
    recomputed = outcomes.metrics()
    accuracies = {k for k in written if k in recomputed or M.parse_robust_key(k) is not None}
    assert accuracies == set(recomputed) and M.ROBUST_ACC in recomputed and M.ROBUST_ACC_AA in recomputed
    assert all(recomputed[k] == written[k] for k in recomputed), {k: (recomputed[k], written[k]) for k in recomputed}
    assert outcomes.scored[M.robust_key("apgd_ce", 0.1)].sum() == 40 and outcomes.scored[M.CLEAN_ACC].all()
    assert rec.evaluation.outcomes.to_json() == outcomes.to_json()  # the reporter gets what the file holds


def test_resumed_trial_ends_where_the_straight_one_does(prepared) -> None:
    cfg = make_config({**SMALL, "attacks": ["fgsm"], "eps": [0.1]})
    straight = Recorder()
    run_trial(cfg, straight, prepared=prepared)
    first = Recorder()
    run_trial(cfg.model_copy(update={"epochs": 3}), first, prepared=prepared)
    state_after_1 = first.calls[0][1]
    resumed = Recorder()
    run_trial(cfg, resumed, prepared=prepared, resume=state_after_1)
    assert [m[M.EPOCH] for m, s in resumed.calls if s is not None] == [2, 3]
    assert resumed.calls[-1][0][M.CLEAN_ACC] == straight.calls[-1][0][M.CLEAN_ACC]
    assert resumed.calls[-1][0][M.TRAIN_LOSS] == pytest.approx(straight.calls[-1][0][M.TRAIN_LOSS])


def test_a_resumed_trial_counts_what_earlier_attempts_spent(prepared) -> None:
    cfg = make_config(SMALL)
    first = Recorder()
    run_trial(cfg.model_copy(update={"epochs": 1}), first, prepared=prepared)
    state = first.calls[0][1]
    assert state["spent"]["train_seconds"] == first.calls[0][0][M.TRAIN_SECONDS] > 0
    earlier = {"trial_seconds": 1000.0, "train_seconds": 400.0, "gpu_hours": 0.0}
    resumed = Recorder()
    final = run_trial(cfg, resumed, prepared=prepared, resume={**state, "spent": earlier})
    assert final[M.TRIAL_SECONDS] > 1000 and 400 < final[M.TRAIN_SECONDS] < final[M.TRIAL_SECONDS]
    assert resumed.calls[0][1]["spent"]["train_seconds"] > 400  # a later resume counts both attempts


def test_substitute_is_a_separately_seeded_ce_model_and_cached(tmp_path: Path, prepared) -> None:
    cfg = make_config({**SMALL, "cache_dir": str(tmp_path / "cache")})
    sub = substitute_config(cfg)
    assert (sub.loss, sub.seed, sub.epochs) == ("ce", cfg.substitute_seed, 2)
    first = train_substitute(cfg, prepared.data)
    assert len(list((tmp_path / "cache").glob("substitute-*.pt"))) == 1
    again = train_substitute(cfg, prepared.data)  # read back from the cache, not retrained
    for key in first:
        assert torch.equal(first[key], again[key])


def test_the_substitute_cache_tells_apart_every_training_field(tmp_path: Path, prepared) -> None:
    # weight decay, momentum, schedule and gamma once slipped through the key: a stale substitute was reused
    cfg = make_config({**SMALL, "cache_dir": str(tmp_path / "cache")})
    train_substitute(cfg, prepared.data)
    train_substitute(cfg.model_copy(update={"weight_decay": 0.01}), prepared.data)
    assert len(list((tmp_path / "cache").glob("substitute-*.pt"))) == 2


def test_prepare_skips_the_substitute_without_transfer() -> None:
    prepared = prepare(make_config({**SMALL, "attacks": ["fgsm"], "train_limit": 200}))
    assert prepared.substitute_state is None and len(prepared.data.y_train) == 200


def test_final_metrics_are_finite_numbers(prepared) -> None:
    final = run_trial(make_config({**SMALL, "loss": "ce", "warmup_epochs": 0}), Recorder(), prepared=prepared)
    assert all(isinstance(v, float | int) and math.isfinite(v) for v in final.values())


# ------------------------------------------------------------------ same config + seed → same weights
def _weights_hash(cfg_values: dict[str, Any], *, prepared=None) -> str:
    import hashlib

    cfg = make_config({**cfg_values, "device": "cpu"})
    recorder = Recorder()
    run_trial(cfg, recorder, prepared=prepared)
    states = [s for _, s in recorder.calls if s is not None]
    digest = hashlib.sha256()
    for name, tensor in sorted(states[-1]["model"].items()):
        digest.update(name.encode() + tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def test_weights_do_not_depend_on_the_attack_list_or_who_prepared() -> None:
    tiny = {**SMALL, "epochs": 2, "eval_limit": 32, "epoch_eval_samples": 16, "masking_eps": 0.5, "seed": 3}
    alone = _weights_hash({**tiny, "attacks": ["fgsm"]})
    # A transfer attack trains (and seeds) the substitute, and the runner seeds every attack: neither may
    # reach the trial's own random draws, and neither may the per-epoch AutoAttack-grade signal.
    assert _weights_hash({**tiny, "attacks": ["fgsm", "transfer"]}) == alone
    assert _weights_hash({**tiny, "attacks": ["fgsm", "transfer", "apgd_t"], "aa_steps": 3}) == alone
    # A sweep prepares the data and substitute once, on the driver, and hands them to every trial.
    shared = prepare(make_config({**tiny, "attacks": ["fgsm", "transfer"]}))
    assert _weights_hash({**tiny, "attacks": ["fgsm", "transfer"]}, prepared=shared) == alone
    assert _weights_hash({**tiny, "attacks": ["fgsm"], "seed": 4}) != alone  # the hash can tell seeds apart


def test_weights_from_uint8_images_equal_those_from_float_images(tmp_path: Path) -> None:
    # A sweep ships 8-bit images as uint8 and makes float pixels per batch on the trial's device:
    # the trained weights must be bit-identical to training on the float32 images (the former path).
    import numpy as np
    from sklearn.datasets import load_digits

    from pclc.experiment import Prepared

    bunch = load_digits()
    np.savez(tmp_path / "d8.npz", x=(bunch.images * 15).astype(np.uint8), y=bunch.target)
    tiny = {
        **SMALL,
        "dataset": f"npz:{tmp_path / 'd8.npz'}",
        "epochs": 2,
        "eval_limit": 32,
        "epoch_eval_samples": 16,
        "attacks": ["fgsm"],
        "eps": [0.1],
        "train_limit": 300,
        "augment": True,
    }
    stored = prepare(make_config(tiny))
    assert stored.data.x_train.dtype == torch.uint8
    as_float = Prepared(data=stored.data.as_float())
    assert _weights_hash(tiny, prepared=stored) == _weights_hash(tiny, prepared=as_float)


def _fgsm_checkpointing(*, epochs: int, checkpoint_every: int, **changes: Any) -> TrialConfig:
    """SMALL with one FGSM eps and no per-epoch evaluation, checkpointing every `checkpoint_every` epochs."""
    return make_config(
        {
            **SMALL,
            "epochs": epochs,
            "attacks": ["fgsm"],
            "eps": [0.1],
            "checkpoint_every": checkpoint_every,
            "epoch_eval_samples": 0,
            **changes,
        }
    )


def test_checkpoint_every_two_epochs_resumes_exactly(prepared) -> None:
    # Epochs between checkpoints report no state (recorded as {}); a trial killed after epoch 3 resumes from epoch 2's
    # checkpoint and ends with the uninterrupted run's weights, bit for bit.
    cfg = _fgsm_checkpointing(epochs=4, checkpoint_every=2, device="cpu")
    straight = Recorder()
    run_trial(cfg, straight, prepared=prepared)
    epochs = [(m[M.EPOCH], bool(s)) for m, s in straight.calls if s is not None]
    assert epochs == [(1, False), (2, True), (3, False), (4, True)]
    after_2 = next(s for m, s in straight.calls if s and s["epoch"] == 2)
    resumed = Recorder()
    run_trial(cfg, resumed, prepared=prepared, resume=after_2)
    assert [m[M.EPOCH] for m, s in resumed.calls if s is not None] == [3, 4]
    final_straight, final_resumed = straight.calls[-2][1]["model"], resumed.calls[-2][1]["model"]
    for key, value in final_straight.items():
        assert torch.equal(final_resumed[key], value), key
    assert resumed.calls[-1][0][M.CLEAN_ACC] == straight.calls[-1][0][M.CLEAN_ACC]


def test_rung_epochs_checkpoint_besides_the_interval(prepared) -> None:
    cfg = _fgsm_checkpointing(epochs=3, checkpoint_every=5, eval_limit=32)
    rec = Recorder()
    run_trial(cfg, rec, prepared=prepared, checkpoint_at=(1,), device="cpu")
    assert [(m[M.EPOCH], bool(s)) for m, s in rec.calls if s is not None] == [(1, True), (2, False), (3, True)]


def test_trials_probing_sibling_output_folders_at_once_do_not_remove_each_others(tmp_path: Path) -> None:
    """Two trials on one node, both the first to write under a fresh outputs folder: one's probe clean-up must
    not take away the folder the other is making (the two-node journey's OutputError, 'No such file')."""
    import threading

    from pclc.experiment import ensure_writable

    errors: list[BaseException] = []
    for round_ in range(30):
        root = tmp_path / f"r{round_}" / "ray_results" / "outputs"
        start = threading.Barrier(4)

        def probe(name: str, root: Path = root, start: threading.Barrier = start) -> None:
            start.wait()
            try:
                ensure_writable(root / name)
            except BaseException as exc:  # noqa: BLE001 (collected, asserted below)
                errors.append(exc)

        threads = [threading.Thread(target=probe, args=(f"t{i}",)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert errors == []
    assert not any(
        (tmp_path / f"r{i}").exists() and any((tmp_path / f"r{i}").rglob("*.pclc-write-probe")) for i in range(30)
    )


def test_the_signal_runs_only_at_its_cadence_and_a_schedulers_rungs(prepared) -> None:
    """Issue 28: the per-epoch signal (2–3× an epoch's training) runs where it is read. Without a scheduler, at
    the cadence: log-spaced points, always the last epoch, or the epochs asked; with one, its rungs too.
    Clean accuracy is scored every epoch; `signal_seconds` says what the signal cost, within `train_seconds`."""
    base = {**SMALL, "attacks": ["fgsm"], "eps": [0.1], "epochs": 6, "eval_limit": 32, "epoch_attack_steps": 2}

    def signal_at(cfg_changes: dict[str, Any], **kw: Any) -> list[int]:
        rec = Recorder()
        run_trial(make_config({**base, **cfg_changes}), rec, prepared=prepared, device="cpu", **kw)
        epochs = [m for m, s in rec.calls if s is not None]
        assert [m[M.EPOCH] for m in epochs] == [1, 2, 3, 4, 5, 6] and all(M.CLEAN_ACC in m for m in epochs)
        assert all(0 <= m[M.SIGNAL_SECONDS] <= m[M.TRAIN_SECONDS] for m in epochs)
        return [int(m[M.EPOCH]) for m in epochs if M.EPOCH_ROBUST_ACC in m]

    assert make_config(base).signal_epochs() == (1, 2, 6)
    assert signal_at({}) == [1, 2, 6]  # the default cadence: 3 log-spaced points over 6 epochs, the last always
    assert signal_at({"epoch_eval_at": [3]}) == [3, 6]
    assert signal_at({"epoch_eval_at": [3]}, signal_at=(5,)) == [3, 5, 6]  # a scheduler's rung is added
    assert signal_at({"epoch_eval_samples": 0}) == []
