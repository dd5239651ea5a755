"""Atomic file output: a result is either fully written or not touched.

Every writer in st2chip goes through :func:`atomic_path`, which hands out a
temporary path in the destination folder and renames it over the target only
when the block finishes without error.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from st2chip.errors import InputError


def default_mode(base: int = 0o666) -> int:
    """The permissions ``open()`` (``base`` 0o666) or ``mkdir`` (0o777) would give under the current umask."""
    mask = os.umask(0)
    os.umask(mask)
    return base & ~mask


def _fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; move it into place on success.

    The file gets the permissions a plain ``open()`` would give (umask applied,
    not ``mkstemp``'s private 0600) and is synced to disk before the rename, so
    ``target`` is either the old file or the whole new one, even after a crash.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=suffix or target.suffix, dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        try:
            yield tmp_path
        except OSError as err:  # name the file the user asked for, not the temporary one
            if err.filename is not None and Path(err.filename) == tmp_path:
                raise OSError(err.errno, err.strerror, str(target)) from None
            raise
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp_path, default_mode())
        os.replace(tmp_path, target)
        _fsync_dir(target.parent)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def publish_folder(tmp: Path, target: Path) -> None:
    """Give a folder built in ``tmp`` (by ``mkdtemp``, mode 0700) the usual permissions and rename it to ``target``.

    ``target`` must not exist; files inside keep the modes they were written with.
    """
    os.chmod(tmp, default_mode(0o777))
    os.replace(tmp, target)
    _fsync_dir(target.parent)


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike, what: str = "run") -> Iterator[None]:
    """Hold an exclusive lock on ``folder`` while one run writes into it; a second run at once is refused.

    So two runs writing the same output folder (two ``st2chip demo`` at once) never mix files.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / ".st2chip.lock"
    fh = open(path, "a+")
    try:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise InputError(f"{folder}: another st2chip {what} is writing into this folder; wait for it or "
                             f"choose another output folder") from None
        yield
    finally:
        fh.close()


def write_text(target: str | os.PathLike, text: str) -> Path:
    with atomic_path(target) as tmp:
        tmp.write_text(text)
    return Path(target)


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")


def write_json(target: str | os.PathLike, data: Any) -> Path:
    return write_text(target, json.dumps(data, indent=2, default=_jsonable) + "\n")
