"""Atomic writes: every file or directory that matters is written aside, then renamed.

A process killed mid-write leaves either the previous version or nothing under the final
name, never a half-written file that looks complete.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any


def _default_file_mode() -> int:
    """The mode ``open()`` would give a new file: 0o666 less the process umask."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _fsync_directory(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike[str], mode: str = "w", **open_kwargs: Any) -> Iterator[IO]:
    """Open a temporary sibling of ``path`` for writing; rename it onto ``path`` on success."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.fchmod(fd, _default_file_mode())  # mkstemp makes 0o600; the final file is an ordinary one
    os.close(fd)
    try:
        with open(tmp_name, mode, **open_kwargs) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, target)
        _fsync_directory(target.parent)
    except BaseException as error:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        if isinstance(error, OSError) and error.filename is None:
            error.filename = str(target)  # a failed write() names no file; the CLI shows it
        raise


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield an empty temporary sibling directory; on success it replaces ``path`` whole.

    An existing ``path`` is moved aside first and removed only after the new directory is in
    place, so at every moment one complete version exists under the final name or beside it.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    restore_interrupted_directory(target)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    staging.chmod(0o777 & ~(0o666 ^ _default_file_mode()))  # mkdtemp makes 0o700
    try:
        yield staging
        _fsync_tree(staging)
        retired = None
        if target.exists():
            retired = Path(
                tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=target.parent)
            )
            os.replace(target, retired / target.name)
        os.replace(staging, target)
        _fsync_directory(target.parent)
        if retired is not None:
            shutil.rmtree(retired, ignore_errors=True)
    except BaseException as error:
        shutil.rmtree(staging, ignore_errors=True)
        if isinstance(error, OSError) and error.filename is None:
            error.filename = str(target)  # a failed write() names no file; the CLI shows it
        raise


def restore_interrupted_directory(path: str | os.PathLike[str]) -> None:
    """Put back a directory that a killed ``atomic_directory`` had moved aside (``.NAME.*.old``)
    but not yet replaced: afterwards the last complete version is under its own name again."""
    target = Path(path)
    if target.exists():
        return
    for retired in sorted(target.parent.glob(f".{target.name}.*.old")):
        if (retired / target.name).is_dir():
            os.replace(retired / target.name, target)
            shutil.rmtree(retired, ignore_errors=True)
            return


def _fsync_tree(root: Path) -> None:
    for file in root.rglob("*"):
        if file.is_file():
            with open(file, "rb") as handle:
                os.fsync(handle.fileno())
    _fsync_directory(root)
