"""Atomic file writes: a reader (or a resume after a kill) sees the old file or the new one, never half of one.

The one place the house writes a file through a temporary beside it, flushed to disk and renamed over the
target (`os.replace` is atomic on POSIX and Windows within one filesystem). Every module that keeps state a
later process reads — checkpoints, the prepared-data cache, Tune's mended state, the finalists' chunk state,
the metrics buffer, the sweep's own files — writes through here. Standard library only, so `sweeps` and
`analysis` can import it too.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

TMP_SUFFIX = ".tmp"  # the temporaries are `.<name>.<pid>-<random>.tmp`, beside the target


def temporary_name(path: Path) -> Path:
    """A temporary beside `path`, hidden and unique to this writer: two processes writing the same file
    at once (two sweeps filling one cache) each rename a whole file of their own; the last one stands."""
    return path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}{TMP_SUFFIX}")


@contextlib.contextmanager
def atomic_file(path: str | Path, *, fsync: bool = True) -> Iterator[BinaryIO]:
    """A binary file that becomes `path` when the block ends without an error; on an error the old `path`
    stands and the temporary is removed. For writers that stream (`torch.save(state, f)`).

    Args:
        path: the file to replace (its folder is made if missing).
        fsync: flush the data to disk before the rename, so a machine crash cannot leave the new name on
            empty blocks (the folder is synced after, best effort, so the rename itself lasts).

    Example:
        >>> import tempfile
        >>> target = Path(tempfile.mkdtemp()) / "state.bin"
        >>> with atomic_file(target) as f:
        ...     _ = f.write(b"new")
        >>> target.read_bytes()
        b'new'
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(path)
    # os.open with 0o666: the file gets the umask's usual permissions (mkstemp's would be 0o600)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)  # gone already after a successful rename
    if fsync:
        _sync_folder(path.parent)


def write_atomic(path: str | Path, data: bytes | str, *, fsync: bool = True) -> Path:
    """Replace `path` with `data` (text is written as UTF-8) in one step; returns the path.

    Example:
        >>> import tempfile
        >>> target = Path(tempfile.mkdtemp()) / "notes.json"
        >>> write_atomic(target, '{"done": true}').read_text()
        '{"done": true}'
    """
    with atomic_file(path, fsync=fsync) as f:
        f.write(data.encode("utf-8") if isinstance(data, str) else data)
    return Path(path)


def _sync_folder(folder: Path) -> None:
    try:  # not every platform or filesystem lets a folder be opened and synced: the data is safe either way
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
