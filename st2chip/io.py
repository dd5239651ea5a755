"""Atomic file output: a result is either fully written or not touched.

Every writer in st2chip goes through :func:`atomic_path`, which hands out a
temporary path in the destination folder and renames it over the target only
when the block finishes without error; report folders go through
:func:`atomic_folder`. Outputs are regular files (or folders) in places the user
named: :func:`check_output` refuses a device, FIFO, socket, a symlink to one, or
an input file named again as an output, before any long run starts.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import stat
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np

from st2chip.errors import InputError

_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
          (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"), (stat.S_ISREG, "a regular file"))


def _kind(mode: int) -> str:
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def check_output(path: str | os.PathLike, inputs: Iterable[str | os.PathLike | None] = (),
                 folder: bool = False, flag: str = "output") -> Path:
    """Refuse (:class:`InputError`) an output ``path`` st2chip must not replace; return it as a Path.

    Refused: a path that exists and is not a regular file (``folder``: not a
    directory), also through a symbolic link (``--json`` naming a device or a FIFO
    would otherwise be replaced by a regular file), and a path that is the same
    file as one of ``inputs`` (``simulate x.nir -o x.nir`` would overwrite the model).
    A path that does not exist yet, or a link to nowhere, is fine.
    """
    p = Path(path)
    try:
        st = os.stat(p)  # follows symbolic links: a link to a device is a device
    except FileNotFoundError:
        return p
    except OSError as err:
        raise InputError(f"{flag} {p}: cannot be written ({err.strerror})") from None
    link = " (through a symbolic link)" if p.is_symlink() else ""
    wanted, what = (stat.S_ISDIR, "a folder") if folder else (stat.S_ISREG, "a regular file")
    if not wanted(st.st_mode):
        raise InputError(f"{flag} {p}: exists and is {_kind(st.st_mode)}{link}; st2chip writes "
                         f"{what} there, so it refuses to replace it: choose another path")
    for source in inputs:
        if source is None:
            continue
        try:
            same = os.path.samestat(st, os.stat(source))
        except OSError:
            continue
        if same:
            raise InputError(f"{flag} {p}: is the same file as the input {source}; "
                             f"writing it would destroy the input: choose another path")
    return p


def _named(err: OSError, tmp: Path, target: Path) -> OSError:
    """``err`` naming the path the user asked for instead of a temporary one (or of no file at all)."""
    name = err.filename
    if name is None or Path(name) == tmp:
        where = target
    else:
        try:
            where = target / Path(name).relative_to(tmp)
        except ValueError:  # some other file: its own name is the right one
            return err
    return OSError(err.errno, err.strerror or " ".join(str(err).split()), str(where))


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
    A ``target`` that is not a regular file is refused (:func:`check_output`); an
    ``OSError`` on the way (a full disk) names ``target`` and leaves no temporary.
    """
    target = check_output(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=suffix or target.suffix, dir=target.parent)
    except OSError as err:  # an unwritable folder: name the target, not a random temporary name
        raise OSError(err.errno, err.strerror, str(target)) from None
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        try:
            yield tmp_path
            with open(tmp_path, "rb+") as fh:
                os.fsync(fh.fileno())
            os.chmod(tmp_path, default_mode())
            os.replace(tmp_path, target)
        except OSError as err:  # name the file the user asked for, not the temporary one
            raise _named(err, tmp_path, target) from None
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
def atomic_folder(target: str | os.PathLike, replace: bool = False) -> Iterator[Path]:
    """Yield an empty temporary folder whose files appear in ``target`` only if the block succeeds.

    A failure half-way (a full disk) leaves ``target`` as it was and no temporary
    behind, and the error names ``target``. A new ``target`` is renamed into place
    whole. An existing one is, with ``replace`` (a bundle), swapped out whole;
    without it (a report folder such as ``map --report DIR``), the new files are
    moved into it one by one (renames only, which a full disk cannot stop),
    replacing files of the same name and leaving every other file alone.
    """
    target = check_output(target, folder=True)
    merge = target.is_dir() and not replace
    base = target if merge else target.parent
    base.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=base))
    try:
        try:
            yield tmp
            if merge:
                for child in sorted(tmp.iterdir()):
                    os.replace(child, target / child.name)
                _fsync_dir(target)
            else:
                _swap_folder(tmp, target)
        except OSError as err:
            raise _named(err, tmp, target) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _swap_folder(tmp: Path, target: Path) -> None:
    """Publish ``tmp`` as ``target``; an existing ``target`` is moved aside first and put back if that fails."""
    if not target.exists():
        publish_folder(tmp, target)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old.", dir=target.parent))
    try:
        os.replace(target, old / target.name)
        try:
            publish_folder(tmp, target)
        except OSError:
            os.replace(old / target.name, target)
            raise
    finally:
        shutil.rmtree(old, ignore_errors=True)


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


def write_bytes(target: str | os.PathLike, data: bytes | memoryview) -> Path:
    """Write ``data`` to ``target`` atomically with plain file I/O.

    For images built in memory (an HDF5 file in an ``io.BytesIO``): libhdf5 meeting
    a failing write (a full disk, a file-size limit) prints a traceback per open
    object and can crash the interpreter; a plain write fails with one ``OSError``.
    """
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)
    return Path(target)


def write_text(target: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``target`` atomically."""
    with atomic_path(target) as tmp:
        tmp.write_text(text)
    return Path(target)


def write_png(target: str | os.PathLike, figure: Any, dpi: int = 120) -> Path:
    """Save a matplotlib ``figure`` as PNG to ``target`` atomically."""
    with atomic_path(target) as tmp:
        figure.savefig(tmp, format="png", dpi=dpi)
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
    """Write ``data`` as indented JSON (numpy values and paths as plain ones) to ``target`` atomically."""
    return write_text(target, json.dumps(data, indent=2, default=_jsonable) + "\n")


def write_npz(target: str | os.PathLike, arrays: dict[str, np.ndarray]) -> Path:
    """Write ``arrays`` as a compressed ``.npz`` (what ``np.savez_compressed`` writes) to ``target`` atomically.

    The zip archive is closed on every path: ``np.savez_compressed`` leaves it open
    when a write fails (a full disk, Ctrl-C), and its finaliser then prints an
    "Exception ignored" traceback after st2chip's one error line.
    """
    with atomic_path(target, suffix=".npz") as tmp:
        with open(tmp, "wb") as fh, zipfile.ZipFile(fh, "w", zipfile.ZIP_DEFLATED, allowZip64=True) as zf:
            for name, value in arrays.items():
                with zf.open(f"{name}.npy", "w", force_zip64=True) as member:
                    np.lib.format.write_array(member, np.asanyarray(value), allow_pickle=False)
    return Path(target)
