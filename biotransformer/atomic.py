"""Atomic writes: every file or directory that matters is written aside, then renamed.

A process killed mid-write leaves either the previous version or nothing under the final
name, never a half-written file that looks complete. Every final file gets the permissions
``open()`` would give it (0o666 less the umask) and is flushed to disk before the rename.

- ``atomic_write(path)``: a file object to write; ``atomic_path(path)``: a temporary path, for
  libraries that open files themselves (h5py); ``publish(staging, path)``: the final rename of
  a file written aside over a longer time (a streamed output, ``streaming``);
  ``write_json(path, obj)``: strict JSON.
- ``atomic_directory(path)``: a whole directory (a model directory), replaced only when the
  existing one holds nothing but files its writer owns.

A final name that is a symbolic link or a special file (device, FIFO, socket) is never
replaced: writing to it raises ``InputError``.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import re
import resource
import shutil
import stat
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any

import numpy as np

from biotransformer.errors import InputError


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


def _refuse_unreplaceable(target: Path) -> None:
    """Raise if ``target`` is a link or something other than a regular file."""
    if target.is_symlink():
        raise InputError(
            "is a symbolic link; biotransformer never replaces a link",
            path=target,
            fix="write to the file the link points to, or choose another name",
        )
    with contextlib.suppress(FileNotFoundError, NotADirectoryError):
        mode = target.stat().st_mode
        if stat.S_ISDIR(mode):
            raise InputError("is a directory", path=target, fix="give a file name")
        if not stat.S_ISREG(mode):
            raise InputError(
                "is a special file (device, FIFO or socket); biotransformer never replaces one",
                path=target,
                fix="choose a regular file name",
            )


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """A temporary sibling path of ``path`` to write; on success it is flushed to disk, given
    the ordinary file permissions and renamed onto ``path``. For libraries that open the file
    themselves (``h5py.File(tmp, "w")``)."""
    target = Path(path)
    _refuse_unreplaceable(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    staging = Path(tmp_name)
    try:
        yield staging
        publish(staging, target)
    except BaseException as error:
        staging.unlink(missing_ok=True)
        if isinstance(error, OSError) and error.filename in (None, str(staging)):
            error.filename = str(target)  # name the output, not its temporary sibling
        raise


def publish(staging: str | os.PathLike[str], path: str | os.PathLike[str]) -> Path:
    """Give the finished file ``staging`` the ordinary permissions, flush it to disk and
    rename it onto ``path`` (a sibling): the last step of every atomic write."""
    staging, target = Path(staging), Path(path)
    _refuse_unreplaceable(target)
    os.chmod(staging, _default_file_mode())  # mkstemp makes 0o600; the final file is ordinary
    with open(staging, "rb") as handle:
        os.fsync(handle.fileno())
    os.replace(staging, target)
    _fsync_directory(target.parent)
    return target


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike[str], mode: str = "w", **open_kwargs: Any) -> Iterator[IO]:
    """Open a temporary sibling of ``path`` for writing; rename it onto ``path`` on success."""
    with atomic_path(path) as staging, open(staging, mode, **open_kwargs) as handle:
        yield handle
        handle.flush()
        os.fsync(handle.fileno())


def require_room(path: str | os.PathLike[str], size: int) -> None:
    """Refuse to start writing a file of about ``size`` bytes at ``path`` that the process's
    file size limit (``ulimit -f``) or the free space of its file system cannot hold, with the
    ``OSError`` the write would meet: HDF5 can crash the process when a write fails midway."""
    target = Path(path)
    limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    if limit != resource.RLIM_INFINITY and size > limit:
        raise OSError(
            errno.EFBIG,
            f"File too large: about {size:,} bytes to write, and this process may write files "
            f"of {limit:,} bytes",
            str(target),
        )
    free = shutil.disk_usage(target.parent if target.parent.exists() else Path.cwd()).free
    if size > free:
        raise OSError(
            errno.ENOSPC,
            f"No space left on device: about {size:,} bytes to write, {free:,} bytes free",
            str(target),
        )


@contextlib.contextmanager
def safetensors_os_errors(path: str | os.PathLike[str]) -> Iterator[None]:
    """A failed write inside safetensors (disk full, ``ulimit -f``) arrives as a
    ``SafetensorError`` holding ``os error N``: raise it as the ``OSError`` it is, naming
    ``path``."""
    from safetensors import SafetensorError

    try:
        yield
    except SafetensorError as error:
        found = re.search(r"os error (\d+)", str(error))
        if found is None:
            raise
        number = int(found[1])
        raise OSError(number, os.strerror(number), str(path)) from None


def strict_json(value: Any) -> Any:
    """``value`` with every NaN or infinite float (numpy's too) replaced by None: what JSON
    can hold (``json.dumps`` would otherwise write bare ``NaN``, which is not JSON)."""
    if isinstance(value, Mapping):
        return {key: strict_json(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(item) for item in value]
    if isinstance(value, (float, np.floating)):
        number = float(value)
        return number if math.isfinite(number) else None
    return value


def json_text(value: Any, *, indent: int | None = 2) -> str:
    """Strict JSON text of ``value`` (NaN and infinities as null), ending in a newline."""
    return json.dumps(strict_json(value), indent=indent, allow_nan=False) + "\n"


def write_json(path: str | os.PathLike[str], value: Any, *, indent: int | None = 2) -> Path:
    """Write ``value`` as strict JSON (NaN and infinities as null) to ``path`` atomically."""
    text = json_text(value, indent=indent)
    with atomic_write(path, encoding="utf-8") as handle:
        handle.write(text)
    return Path(path)


@contextlib.contextmanager
def atomic_directory(
    path: str | os.PathLike[str], *, replaces: Iterable[str] = ()
) -> Iterator[Path]:
    """Yield an empty temporary sibling directory; on success it replaces ``path`` whole.

    An existing ``path`` is replaced only when every entry in it is a name the new directory
    holds or one of ``replaces`` (the files its writer owns): a directory holding anything
    else is refused with ``InputError`` naming those files (before the write too when
    ``replaces`` is given) and left as it was. The existing directory is moved aside first
    and removed only after the new one is in place, so at every moment one complete version
    exists under the final name or beside it.
    """
    target = Path(path)
    owned = set(replaces)
    if target.is_symlink() or (target.exists() and not target.is_dir()):
        raise InputError(
            "is a symbolic link or a file, not a directory; biotransformer never replaces one",
            path=target,
            fix="choose a new or empty directory",
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    restore_interrupted_directory(target)
    if owned:  # refused before the write too, when the writer says what it owns
        _refuse_foreign_entries(target, owned)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    staging.chmod(0o777 & ~(0o666 ^ _default_file_mode()))  # mkdtemp makes 0o700
    try:
        yield staging
        _fsync_tree(staging)
        retired = None
        if target.exists():
            _refuse_foreign_entries(target, owned | {entry.name for entry in staging.iterdir()})
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
        if isinstance(error, OSError):  # name the output, not its temporary sibling
            error.filename = _in_target(error.filename, staging, target)
        raise


def _in_target(filename: Any, staging: Path, target: Path) -> str:
    """An error's file name with the staging directory as the target (the target itself for
    a failed write() that names no file)."""
    if filename is None:
        return str(target)
    name = Path(os.fsdecode(filename))
    if staging == name or staging in name.parents:
        return str(target / name.relative_to(staging))
    return str(name)


def _refuse_foreign_entries(target: Path, owned: set[str]) -> None:
    """Raise when ``target`` holds an entry whose name is not in ``owned``."""
    if not target.is_dir():
        return
    foreign = sorted(entry.name for entry in target.iterdir() if entry.name not in owned)
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" * (len(foreign) > 5))
        raise InputError(
            f"holds files biotransformer did not write there ({shown}); replacing the directory "
            "would delete them",
            path=target,
            fix="choose a new or empty output directory",
        )


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
