"""pclc.files: the one atomic writer leaves the old content or the new one, never half, whatever stops it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pclc.files import TMP_SUFFIX, atomic_file, write_atomic
from pclc.train import load_checkpoint, save_checkpoint

ROOT = Path(__file__).resolve().parents[1]


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(TMP_SUFFIX))


@pytest.mark.timeout(30)
def test_writes_text_and_bytes_and_makes_the_folder(tmp_path: Path) -> None:
    target = tmp_path / "new" / "state.json"
    assert write_atomic(target, '{"é": 1}') == target
    assert target.read_text(encoding="utf-8") == '{"é": 1}'
    write_atomic(target, b"\x00\x01")
    assert target.read_bytes() == b"\x00\x01"
    assert _leftovers(target.parent) == []


@pytest.mark.timeout(30)
def test_an_error_mid_write_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "state.json"
    write_atomic(target, "old")
    with pytest.raises(RuntimeError, match="disk gone"), atomic_file(target) as f:
        f.write(b"half of the new")
        f.flush()
        raise RuntimeError("disk gone")
    assert target.read_text() == "old"
    assert _leftovers(tmp_path) == []


@pytest.mark.timeout(30)
def test_a_checkpoint_that_cannot_be_pickled_leaves_the_previous_one(tmp_path: Path) -> None:
    target = tmp_path / "checkpoint.pt"
    save_checkpoint({"epoch": 3, "w": torch.ones(4)}, target)
    with pytest.raises(Exception):  # noqa: B017  (torch.save's own pickling error, whatever its type)
        save_checkpoint({"epoch": 4, "w": torch.zeros(4), "bad": lambda: None}, target)
    assert load_checkpoint(target)["epoch"] == 3
    assert _leftovers(tmp_path) == []


@pytest.mark.timeout(60)
def test_a_process_killed_mid_write_leaves_the_old_file(tmp_path: Path) -> None:
    """SIGKILL runs no cleanup: the old content stands, and what is left is a hidden temporary that no
    reader's pattern (`experiment_state-*.json`, `checkpoint.pt`, …) takes for the file."""
    target = tmp_path / "experiment_state.json"
    write_atomic(target, "old")
    code = (
        "import sys, time\n"
        "from pclc.files import atomic_file\n"
        f"with atomic_file({str(target)!r}) as f:\n"
        "    f.write(b'half of the new'); f.flush()\n"
        "    print('writing', flush=True)\n"
        "    time.sleep(60)\n"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", code],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "writing"
        (tmp,) = _leftovers(tmp_path)  # the half-written new content is there, beside the target
        assert (tmp_path / tmp).read_bytes() == b"half of the new"
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        child.kill()
    assert target.read_text() == "old"
    assert tmp.startswith(f".{target.name}.{child.pid}-")
