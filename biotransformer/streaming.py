"""Outputs written as they are computed, and continued after a kill (``--resume``).

A streamed output is built in a staging file beside it, ``.NAME.partial``, with a progress
record ``.NAME.partial.json`` (``{"fingerprint", "records", "token_rows", "bytes"}``). After
each chunk of records the data are appended and flushed, then the progress record is replaced
atomically: it is the commit point, so a kill anywhere leaves a committed state to go back to.
``overwrite=True`` starts over instead.
``resume=True`` checks that the fingerprint (model, input, options) is the one recorded, cuts
the staging file back to the committed state on the first write, and ``done`` tells the
command how many records to skip. When every record is in, ``finish`` renames the staging file
onto the output (``atomic.publish``) and removes the progress record.

Under several processes every rank opens the stream (reading only: ``done`` is the same for
all) and only the main process appends and finishes: the ranks' results are gathered per chunk,
so one output results.

Two formats: ``EmbeddingsStream`` (HDF5, resizable chunked datasets) and ``TableStream``
(tab-separated text, rows appended; ``-`` streams to standard output, which cannot resume).
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np

from biotransformer.atomic import publish, require_room, write_json
from biotransformer.errors import ConfigError, InputError
from biotransformer.outputs import STDOUT

#: Rows per HDF5 storage chunk of the record-level datasets.
H5_CHUNK_ROWS = 1024
#: Bytes beyond the arrays that one chunk's write may need (ids, dataset headers).
H5_OVERHEAD = 64 * 1024


def file_fingerprint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """What identifies an input for ``--resume``: a file's absolute path, size and mtime; a
    model directory's path and its weights file's; a name that is no path, itself."""
    resolved = Path(path).resolve()
    if resolved.is_dir():
        weights = resolved / "model.safetensors"
        return {"path": str(resolved), **(file_fingerprint(weights) if weights.is_file() else {})}
    if not resolved.is_file():
        return {"name": str(path)}
    stat = resolved.stat()
    return {"path": str(resolved), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


class StagedOutput:
    """The staging file, progress record and resume checks shared by both formats."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        fingerprint: dict[str, Any],
        *,
        resume: bool = False,
        overwrite: bool = False,
        flag: str = "--out",
    ) -> None:
        self.path = Path(path)
        self.state = {"records": 0, "token_rows": 0, "bytes": 0}
        self._opened = False
        if str(path) == STDOUT:
            return
        self.staging = self.path.with_name(f".{self.path.name}.partial")
        self.progress_path = self.path.with_name(f".{self.path.name}.partial.json")
        self.fingerprint = json.loads(json.dumps(fingerprint))
        if overwrite and not resume:  # start over, whatever a stopped run left
            self.progress_path.unlink(missing_ok=True)  # every rank reaches done = 0 alike
        recorded = self._read_progress()
        if recorded is not None and not resume:
            raise InputError(
                f"{flag}: an earlier run that stopped before the end left "
                f"{self.staging.name} with {recorded['records']} records done",
                path=self.path,
                fix="add --resume to continue it, or --overwrite to start over",
            )
        if recorded is not None:
            self._check_fingerprint(recorded["fingerprint"], flag)
            self.state = {key: int(recorded[key]) for key in self.state}

    @property
    def done(self) -> int:
        """Records already written (committed) by an earlier run: the records to skip."""
        return self.state["records"]

    def _read_progress(self) -> dict[str, Any] | None:
        if not self.progress_path.is_file():
            return None
        try:
            recorded = json.loads(self.progress_path.read_text(encoding="utf-8"))
            int(recorded["records"])
        except (ValueError, KeyError, TypeError) as error:
            raise InputError(
                f"the progress record of an interrupted run is unreadable ({error})",
                path=self.progress_path,
                fix="rerun with --overwrite to start over",
            ) from None
        if not self.staging.is_file():
            raise InputError(
                f"the progress record has no staging file {self.staging.name} beside it",
                path=self.progress_path,
                fix="rerun with --overwrite to start over",
            )
        return recorded

    def _check_fingerprint(self, recorded: dict[str, Any], flag: str) -> None:
        changed = sorted(
            key
            for key in set(recorded) | set(self.fingerprint)
            if recorded.get(key) != self.fingerprint.get(key)
        )
        if changed:
            raise ConfigError(
                f"--resume: the interrupted run of {flag} {self.path} differs in "
                f"{', '.join(changed)} (recorded: "
                f"{', '.join(f'{key}={recorded.get(key)!r}' for key in changed)}). Fix: rerun "
                "with the same model, input and options, or with --overwrite to start over"
            )

    def _commit(self, records: int, token_rows: int = 0, size: int = 0) -> None:
        self.state = {
            "records": self.state["records"] + records,
            "token_rows": self.state["token_rows"] + token_rows,
            "bytes": size,
        }
        write_json(self.progress_path, {"fingerprint": self.fingerprint, **self.state})

    def finish(self) -> Path:
        """Rename the complete staging file onto the output; an output of no records is an
        error (nothing is published)."""
        if not self._opened and self.done == 0:
            raise InputError("no records to run", fix="check the input file")
        self._close()
        publish(self.staging, self.path)
        self.progress_path.unlink(missing_ok=True)
        return self.path

    def _close(self) -> None:
        """Flush and close what a format keeps open."""

    def _discard_if_uncommitted(self) -> None:
        """After a failed write: a staging file no chunk was committed to cannot be resumed,
        so it is closed and removed (a committed one stays for ``--resume``)."""
        if self.progress_path.is_file():
            return
        with contextlib.suppress(OSError):
            self._close()
        self.staging.unlink(missing_ok=True)


class EmbeddingsStream(StagedOutput):
    """An embeddings HDF5 file grown chunk by chunk: ``embeddings`` (N, D) float32, ``ids``
    (UTF-8 strings), ``windows`` (N,) and, per token, ``tokens`` (sum T_i, D) and ``offsets``
    (N+1,); attributes written when the file is begun."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        fingerprint: dict[str, Any],
        *,
        attributes: dict[str, Any],
        resume: bool = False,
        overwrite: bool = False,
    ) -> None:
        super().__init__(path, fingerprint, resume=resume, overwrite=overwrite)
        self.attributes = attributes

    def append(
        self,
        ids: Sequence[str],
        pooled: np.ndarray,
        windows: np.ndarray,
        tokens: np.ndarray | None = None,
        token_counts: np.ndarray | None = None,
    ) -> None:
        """Add the rows of one chunk of records (``token_counts``: tokens rows per record)."""
        import h5py

        arrays = (pooled, tokens, windows)
        size = sum(a.nbytes for a in arrays if a is not None) + sum(len(i) + 16 for i in ids)
        require_room(self.staging, size + H5_OVERHEAD)
        if self.done and not self._opened:
            self._rebuild_committed()
        with h5py.File(self.staging, "a" if self._opened or self.done else "w") as handle:
            if not self._opened:
                self._begin(handle, pooled.shape[1], tokens is not None)
            n, rows = self.state["records"], self.state["token_rows"]
            _grow(handle["embeddings"], n, pooled.astype(np.float32))
            _grow(handle["ids"], n, np.asarray(ids, dtype=object))
            _grow(handle["windows"], n, np.asarray(windows, dtype=np.int64))
            if tokens is not None:
                _grow(handle["tokens"], rows, tokens.astype(np.float32))
                ends = rows + np.cumsum(np.asarray(token_counts, dtype=np.int64))
                _grow(handle["offsets"], n + 1, ends)
        self._commit(len(ids), 0 if tokens is None else len(tokens))

    def _rebuild_committed(self) -> None:
        """Copy the committed rows of a stopped run's staging file into a fresh one.

        A kill during an append can leave HDF5 metadata that points past the file's recorded
        end (seen: "len not positive after adjustment for EOA" on the next write), so the
        stopped file is only read, up to the committed rows, never written again."""
        import h5py

        rows = {"embeddings": self.done, "ids": self.done, "windows": self.done}
        rows |= {"tokens": self.state["token_rows"], "offsets": self.done + 1}
        fresh = self.staging.with_name(self.staging.name + ".rebuild")
        try:
            with h5py.File(self.staging, "r") as old, h5py.File(fresh, "w") as new:
                for name, count in rows.items():
                    if name not in old:
                        continue
                    source = old[name]
                    target = new.create_dataset(
                        name,
                        (count, *source.shape[1:]),
                        source.dtype,
                        maxshape=(None, *source.shape[1:]),
                        chunks=source.chunks,
                    )
                    step = max(source.chunks[0], 1) * 64
                    for start in range(0, count, step):
                        target[start : start + step] = source[start : min(start + step, count)]
                for key, value in old.attrs.items():
                    new.attrs[key] = value
        except (OSError, KeyError, ValueError) as error:
            fresh.unlink(missing_ok=True)
            raise InputError(
                f"the staging file of the stopped run cannot be read back ({error})",
                path=self.staging,
                fix="rerun with --overwrite to start over",
            ) from None
        os.replace(fresh, self.staging)

    def _begin(self, handle: Any, width: int, per_token: bool) -> None:
        """Create the datasets of a fresh file (a resumed one was rebuilt to hold exactly the
        committed rows, ``_rebuild_committed``)."""
        import h5py

        self._opened = True
        if self.done:
            return
        chunk = (H5_CHUNK_ROWS, width)
        handle.create_dataset(
            "embeddings", (0, width), np.float32, maxshape=(None, width), chunks=chunk
        )
        handle.create_dataset(
            "ids",
            (0,),
            h5py.string_dtype(encoding="utf-8"),
            maxshape=(None,),
            chunks=(H5_CHUNK_ROWS,),
        )
        handle.create_dataset("windows", (0,), np.int64, maxshape=(None,), chunks=(H5_CHUNK_ROWS,))
        if per_token:
            handle.create_dataset(
                "tokens", (0, width), np.float32, maxshape=(None, width), chunks=(8192, width)
            )
            handle.create_dataset(
                "offsets", data=np.zeros(1, np.int64), maxshape=(None,), chunks=(H5_CHUNK_ROWS,)
            )
        for key, value in self.attributes.items():
            handle.attrs[key] = value


def _grow(dataset: Any, start: int, values: np.ndarray) -> None:
    """Write ``values`` at rows ``start ..``, growing ``dataset`` to end there."""
    dataset.resize(start + len(values), axis=0)
    dataset[start : start + len(values)] = values


class TableStream(StagedOutput):
    """A tab-separated table grown chunk by chunk (``-``: standard output, no resume)."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        fingerprint: dict[str, Any],
        *,
        header: Sequence[str],
        resume: bool = False,
        overwrite: bool = False,
    ) -> None:
        self.to_stdout = str(path) == STDOUT
        if self.to_stdout and resume:
            raise ConfigError(
                "--resume needs an output file; standard output (--out -) cannot be continued. "
                "Fix: give --out a file name"
            )
        super().__init__(path, fingerprint, resume=resume, overwrite=overwrite)
        self.header = list(header)
        self._handle: IO[str] | None = None
        self._writer: Any = None

    def append(self, rows: Iterable[Sequence[str]]) -> None:
        """Add the rows of one chunk of records. A failed write (a full disk) names ``--out``:
        the error of a write to an open file carries no file name."""
        try:
            handle = self._handle or self._begin()
            count = 0
            for row in rows:
                self._writer.writerow(row)
                count += 1
            handle.flush()
            if not self.to_stdout:
                os.fsync(handle.fileno())
        except OSError as error:
            if not self.to_stdout:
                error.filename = error.filename or str(self.path)
                self._discard_if_uncommitted()
            raise
        if self.to_stdout:
            self.state["records"] += count
            return
        self._commit(count, size=handle.tell())

    def _begin(self) -> IO[str]:
        self._opened = True
        if self.to_stdout:
            self._handle = sys.stdout
        elif self.done:
            self._handle = open(self.staging, "r+", encoding="utf-8", newline="")  # noqa: SIM115
            self._handle.truncate(self.state["bytes"])
            self._handle.seek(self.state["bytes"])
        else:
            self._handle = open(self.staging, "w", encoding="utf-8", newline="")  # noqa: SIM115
        self._writer = csv.writer(self._handle, delimiter="\t", lineterminator="\n")
        if not self.done:
            self._writer.writerow(self.header)
        return self._handle

    def finish(self) -> Path:
        if self.to_stdout:
            if not self._opened:
                raise InputError("no records to run", fix="check the input file")
            sys.stdout.flush()
            return Path(STDOUT)
        return super().finish()

    def _close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None
