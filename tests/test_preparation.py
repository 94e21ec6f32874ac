"""A sweep's preparation (data + substitute): keyed by exactly the fields that decide it, cached atomically
in shared storage, and run on a worker (never on a head that offers no CPU) of a real two-node Ray cluster."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from pclc.config import TrialConfig, make_config
from pclc.data import DataError
from pclc.experiment import Prepared, prepare
from sweeps.preparation import (
    cache_file,
    preparation_key,
    prepare_on_cluster,
    read_cache,
    write_cache,
)

SMALL = {
    "model": "small_cnn",
    "epochs": 2,
    "warmup_epochs": 1,
    "attacks": ["fgsm", "transfer"],
    "eps": [0.1],
    "headline_eps": 0.1,
    "substitute_epochs": 1,
    "train_limit": 120,
    "device": "cpu",
}


def uint8_npz(folder: Path) -> str:
    """scikit-learn's digits as 8-bit images (0..240) in a user .npz: a source kept as uint8."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    path = folder / "digits8.npz"
    np.savez(path, x=(bunch.images * 15).astype(np.uint8), y=bunch.target)
    return f"npz:{path}"


def assert_same(a: Prepared, b: Prepared) -> None:
    for field in ("x_train", "y_train", "x_test", "y_test"):
        x, y = getattr(a.data, field), getattr(b.data, field)
        assert x.dtype == y.dtype and torch.equal(x, y), field
    assert (a.substitute_state is None) == (b.substitute_state is None)
    for name, value in (a.substitute_state or {}).items():
        assert torch.equal(value, b.substitute_state[name]), name  # type: ignore[index]


def test_the_key_holds_exactly_what_decides_the_preparation() -> None:
    base = make_config(SMALL)
    key = preparation_key(base)

    def changed(**update: Any) -> bool:
        return preparation_key(base.model_copy(update=update)) != key

    # the data, its subset and everything the substitute's training reads
    for update in [
        {"dataset": "mnist"},
        {"data_root": "/elsewhere"},
        {"train_limit": 100},
        {"substitute_epochs": 3},
        {"substitute_seed": 7},
        {"substitute_model": "lenet5"},
        {"lr": 0.01},
        {"weight_decay": 1e-4},
        {"batch_size": 32},
        {"augment": True},
        {"attacks": ["fgsm"]},
    ]:
        assert changed(**update), update
    assert preparation_key(base, gpu=0.5) != key  # trained on a GPU: other weights
    # what only the trials read: the loss and its knobs, the trial seed, the attacks' settings, outputs
    for update in [
        {"margin": 0.9},
        {"lc_weight": 0.5},
        {"loss": "ce"},
        {"seed": 5},
        {"eps": [0.1, 0.2]},
        {"attack_steps": 3},
        {"eval_limit": 64},
        {"out_dir": "/tmp/x"},
        {"epochs": 5},
        {"download": True},
    ]:
        assert not changed(**update), update
    # without a transfer attack there is no substitute: its model and optimiser no longer matter
    plain = make_config({**SMALL, "attacks": ["fgsm"]})
    assert preparation_key(plain) == preparation_key(plain.model_copy(update={"model": "lenet5", "lr": 0.1}))


def test_cache_files_live_under_cache_dir_else_a_local_storage_root(tmp_path: Path) -> None:
    cfg = make_config(SMALL)
    key = preparation_key(cfg)
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
    assert cache_file(cfg, key, storage_root=str(tmp_path)) == tmp_path / "pclc_prepared" / f"digits-{digest}.pt"
    in_cache_dir = cfg.model_copy(update={"cache_dir": str(tmp_path / "cache")})
    assert (
        cache_file(in_cache_dir, key, storage_root="s3://b/x")
        == tmp_path / "cache" / "prepared" / f"digits-{digest}.pt"
    )
    assert cache_file(cfg, key, storage_root="s3://bucket/x") is None
    other = preparation_key(cfg.model_copy(update={"train_limit": 60}))
    assert cache_file(cfg, other, storage_root=str(tmp_path)) != cache_file(cfg, key, storage_root=str(tmp_path))


def test_the_cache_is_written_atomically_and_read_back_only_for_its_key(tmp_path: Path) -> None:
    cfg = make_config({**SMALL, "dataset": uint8_npz(tmp_path)})
    prepared = prepare(cfg)
    assert prepared.data.x_train.dtype == torch.uint8 and prepared.substitute_state is not None
    key = preparation_key(cfg)
    path = cache_file(cfg, key, storage_root=str(tmp_path / "storage"))
    assert path is not None and read_cache(path, key) is None

    write_cache(path, key, prepared, node_id="n1")
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no tmp file left beside it
    again, node = read_cache(path, key)  # type: ignore[misc]
    assert node == "n1"
    assert_same(again, prepared)
    assert read_cache(path, preparation_key(cfg.model_copy(update={"train_limit": 60}))) is None

    path.write_bytes(path.read_bytes()[:1000])  # truncated, as by a full disk: ignored, not fatal
    assert read_cache(path, key) is None


def _trial(tmp_path: Path) -> TrialConfig:
    return make_config({**SMALL, "dataset": uint8_npz(tmp_path)})


@pytest.mark.slow
def test_preparation_runs_on_a_worker_and_a_second_call_reads_the_cache(tmp_path: Path) -> None:
    import ray
    from ray.cluster_utils import Cluster

    cfg = _trial(tmp_path)
    storage = str(tmp_path / "ray_results")
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    try:
        worker = cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address)
        head_id = cluster.head_node.node_id

        first = prepare_on_cluster(cfg, cpu=1, gpu=0, storage_root=storage)
        assert not first.from_cache and first.node_id == worker.node_id != head_id
        assert first.path is not None and first.path.is_file()
        stored = first.path.read_bytes()
        written = first.path.stat().st_mtime_ns

        second = prepare_on_cluster(cfg, cpu=1, gpu=0, storage_root=storage)
        assert second.from_cache and second.node_id == worker.node_id and second.path == first.path
        assert first.path.read_bytes() == stored and first.path.stat().st_mtime_ns == written  # not rewritten
        assert_same(second.prepared, first.prepared)

        # bad data found on the worker is the library's own error, not a Ray traceback
        np.savez(tmp_path / "bad.npz", x=np.zeros((20, 8, 8), np.uint8), y=-np.ones(20, np.int64))
        with pytest.raises(DataError, match="negative labels") as err:
            prepare_on_cluster(make_config({**SMALL, "dataset": f"npz:{tmp_path / 'bad.npz'}"}), cpu=1, gpu=0)
        assert type(err.value) is DataError
    finally:
        ray.shutdown()
        cluster.shutdown()
    # the worker prepared exactly what the driver would have (same seeds, CPU): trials see the same bytes
    assert_same(first.prepared, prepare(cfg))
    assert os.path.commonpath([str(first.path), storage]) == storage
