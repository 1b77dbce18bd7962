"""Pretraining corpora tokenised once into HDF5 shards, and the dataset that reads them.

``prepare_corpus`` makes two passes over each input. The first checksums the file and lists
its records with their lengths; it decides the validation split. The second streams each
record in pieces of a few MiB, cuts windows in base coordinates, tokenises each window and
appends it to a shard, so memory holds a few windows, never a chromosome. FASTA is read by
``io``'s streaming reader (``io.read_sequences`` joins a whole record before yielding it);
FASTQ, CSV and TSV records are short and go through ``read_sequences``.

A shard is written as ``NAME.h5.partial`` and renamed when closed; ``manifest.json``, written
last and atomically, marks the directory complete. ``docs/data-format.md`` lists the layout.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from biotransformer.atomic import write_json
from biotransformer.errors import ConfigError, InputError
from biotransformer.io import (
    FastaEvent,
    decompressed_chunks,
    fasta_events,
    guess_alphabet,
    read_chunks,
    read_sequences,
)
from biotransformer.tokenizers import Tokenizer

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
SPLITS = ("train", "valid")
VALID_BLOCK_WINDOWS = 16  # a held-out block of a long record spans at most this many windows
FLUSH_TOKENS = 1 << 22
GROUP_BASES = 1 << 20  # neighbouring windows tokenised together, up to this many bases
_LOWERCASE = bytes(range(ord("a"), ord("z") + 1))


@dataclass
class PrepareSummary:
    """What ``prepare_corpus`` wrote (or found already written, ``skipped=True``)."""

    out_dir: str
    skipped: bool
    sequences: dict[str, int] = field(default_factory=dict)
    tokens: dict[str, int] = field(default_factory=dict)
    bases: int = 0
    dropped_windows: int = 0
    split_by: str = "records"
    shards: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def mbp_per_s(self) -> float:
        return self.bases / 1e6 / self.seconds if self.seconds else 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class _Record:
    id: str
    length: int


@dataclass
class _Source:
    path: Path
    size: int
    sha256: str
    fasta: bool
    records: list[_Record]


# ---------------------------------------------------------------- reading inputs in pieces


def _sequence_events(source: _Source) -> Iterator[FastaEvent]:
    """The records of ``source`` as ``io.stream_fasta`` events, whatever its format."""
    if source.fasta:
        yield from fasta_events(
            decompressed_chunks(read_chunks(source.path), source.path), source.path
        )
        return
    for record in read_sequences(source.path, label_column=None, duplicate_ids="allow"):
        yield "id", record.id
        yield "seq", record.sequence.encode()


def _index(path: Path) -> _Source:
    """Checksum a file and list its records with their lengths (one streaming pass)."""
    if not path.is_file():
        raise InputError("no such file", path=path, fix="check the path")
    digest = hashlib.sha256()

    def hashed() -> Iterator[bytes]:
        for chunk in read_chunks(path):
            digest.update(chunk)
            yield chunk

    plain = decompressed_chunks(hashed(), path)
    first = b""
    for first in plain:
        if first.strip():
            break
    fasta = first.lstrip().startswith(b">")
    source = _Source(path, path.stat().st_size, "", fasta, [])
    if fasta:
        events = fasta_events(_chain(first, plain), path)
    else:
        for _ in plain:
            pass
        events = _sequence_events(source)
    for _, value in events:
        if isinstance(value, str):
            source.records.append(_Record(value, 0))
        else:
            source.records[-1].length += len(value)
    source.sha256 = digest.hexdigest()
    if not any(record.length for record in source.records):
        raise InputError("no sequences in this file", path=path, fix="check the input")
    return source


def _chain(first: bytes, rest: Iterator[bytes]) -> Iterator[bytes]:
    yield first
    yield from rest


# ---------------------------------------------------------------- windows and the split


@dataclass(frozen=True)
class _Geometry:
    """Window size and step in bases, derived from the tokenizer's k and stride."""

    window_bases: int
    step_bases: int
    min_bases: int

    @classmethod
    def of(cls, tokenizer: Tokenizer, window_tokens: int, stride: int) -> _Geometry:
        k = getattr(tokenizer, "k", None) or 1
        token_step = getattr(tokenizer, "stride", None) or k
        return cls((window_tokens - 1) * token_step + k, stride * token_step, k)


def _windows(start: int, end: int, geometry: _Geometry) -> list[tuple[int, int]]:
    """Windows covering [start, end): a fixed step, the last one flush with ``end``."""
    length = end - start
    if length < geometry.min_bases:
        return []
    if length <= geometry.window_bases:
        return [(start, end)]
    last = end - geometry.window_bases
    starts = [*range(start, last, geometry.step_bases), last]
    return [(s, s + geometry.window_bases) for s in starts]


def _unit(seed: int, *parts: object) -> float:
    """A uniform number in [0, 1) from a hash: the same on every machine and every run."""
    text = ":".join(str(part) for part in (seed, *parts)).encode()
    return int.from_bytes(hashlib.sha256(text).digest()[:8], "big") / 2**64


def _held_out_blocks(
    record: _Record, valid_fraction: float, geometry: _Geometry, seed: int
) -> list[tuple[int, int]]:
    """Contiguous validation blocks of one long record, each with a window of space around."""
    valid_bases = round(valid_fraction * record.length)
    if valid_bases == 0:
        return []
    count = math.ceil(valid_bases / (VALID_BLOCK_WINDOWS * geometry.window_bases))
    block = max(math.ceil(valid_bases / count), geometry.window_bases)
    segment = record.length // count
    room = segment - block - 2 * geometry.window_bases
    if room < 0:
        return []
    blocks = []
    for i in range(count):
        offset = int(_unit(seed, record.id, i) * (room + 1))
        start = i * segment + geometry.window_bases + offset
        blocks.append((start, start + block))
    return blocks


def _record_plan(
    record: _Record, split: str | None, blocks: list[tuple[int, int]], geometry: _Geometry
) -> list[tuple[int, int, str]]:
    """The windows of one record, sorted, each with its split."""
    if split is not None:
        return [(s, e, split) for s, e in _windows(0, record.length, geometry)]
    plan = []
    train_from = 0
    for start, end in blocks:
        train_to = start - geometry.window_bases
        plan += [(s, e, "train") for s, e in _windows(train_from, train_to, geometry)]
        plan += [(s, e, "valid") for s, e in _windows(start, end, geometry)]
        train_from = end + geometry.window_bases
    plan += [(s, e, "train") for s, e in _windows(train_from, record.length, geometry)]
    return plan


# ---------------------------------------------------------------- writing shards


def _token_dtype(vocab_size: int) -> np.dtype:
    for dtype in (np.uint8, np.uint16, np.uint32):
        if vocab_size <= np.iinfo(dtype).max + 1:
            return np.dtype(dtype)
    return np.dtype(np.uint64)


class _ShardWriter:
    """Appends windows to ``SPLIT-NNNNN.h5.partial`` files; renames each when it is full."""

    def __init__(
        self, out_dir: Path, split: str, attrs: dict[str, Any], dtype: np.dtype, shard_tokens: int
    ) -> None:
        self.out_dir, self.split, self.attrs = out_dir, split, attrs
        self.dtype, self.shard_tokens = dtype, shard_tokens
        self.names: list[str] = []
        self.files: dict[str, dict[str, int]] = {}
        self.sequences = 0
        self.tokens = 0
        self._file: h5py.File | None = None
        self._reset_buffers()

    def _reset_buffers(self) -> None:
        self._tokens: list[np.ndarray] = []
        self._lengths: list[int] = []
        self._ids: list[str] = []
        self._starts: list[int] = []
        self._ends: list[int] = []
        self._buffered = 0

    def add(self, tokens: np.ndarray, record_id: str, start: int, end: int) -> None:
        self._tokens.append(tokens)
        self._lengths.append(len(tokens))
        self._ids.append(record_id)
        self._starts.append(start)
        self._ends.append(end)
        self._buffered += len(tokens)
        self.sequences += 1
        self.tokens += len(tokens)
        if self._buffered >= FLUSH_TOKENS:
            self._flush()

    def _open(self) -> h5py.File:
        name = f"{self.split}-{len(self.names):05d}.h5"
        self.names.append(name)
        handle = h5py.File(self.out_dir / f"{name}.partial", "w")
        handle.create_dataset("tokens", (0,), self.dtype, maxshape=(None,), chunks=(1 << 18,))
        handle.create_dataset(
            "offsets", data=np.zeros(1, np.int64), maxshape=(None,), chunks=(1 << 14,)
        )
        handle.create_dataset("ids", (0,), h5py.string_dtype(), maxshape=(None,), chunks=(1 << 12,))
        for name_ in ("starts", "ends"):
            handle.create_dataset(name_, (0,), np.int64, maxshape=(None,), chunks=(1 << 14,))
        return handle

    def _flush(self) -> None:
        if not self._lengths:
            return
        if self._file is None:
            self._file = self._open()
        handle = self._file
        tokens = np.concatenate(self._tokens).astype(self.dtype)
        offsets = handle["offsets"]
        base = int(offsets[-1])
        new_offsets = base + np.cumsum(self._lengths, dtype=np.int64)
        _append(handle["tokens"], tokens)
        _append(offsets, new_offsets)
        _append(handle["ids"], np.array(self._ids, dtype=object))
        _append(handle["starts"], np.array(self._starts, dtype=np.int64))
        _append(handle["ends"], np.array(self._ends, dtype=np.int64))
        self._reset_buffers()
        if len(handle["tokens"]) >= self.shard_tokens:
            self._close_shard()

    def _close_shard(self) -> None:
        handle, self._file = self._file, None
        for key, value in self.attrs.items():
            handle.attrs[key] = value
        handle.attrs["split"] = self.split
        sequences, tokens = len(handle["offsets"]) - 1, len(handle["tokens"])
        handle.attrs["num_sequences"] = sequences
        handle.attrs["num_tokens"] = tokens
        handle.close()
        name = self.names[-1]
        os.replace(self.out_dir / f"{name}.partial", self.out_dir / name)
        size = (self.out_dir / name).stat().st_size
        self.files[name] = {"bytes": size, "sequences": sequences, "tokens": tokens}

    def close(self) -> None:
        self._flush()
        if self._file is not None:
            self._close_shard()


def _append(dataset: h5py.Dataset, values: np.ndarray) -> None:
    start = len(dataset)
    dataset.resize((start + len(values),))
    dataset[start:] = values


# ---------------------------------------------------------------- prepare_corpus


def prepare_corpus(
    inputs: Sequence[str | os.PathLike[str]],
    tokenizer: Tokenizer,
    out_dir: str | os.PathLike[str],
    *,
    window_tokens: int = 1024,
    stride: int | None = None,
    valid_fraction: float = 0.01,
    seed: int = 0,
    force: bool = False,
    keep_soft_masked: bool = True,
    max_n_fraction: float = 0.5,
    shard_tokens: int = 1 << 28,
    progress: bool = True,
) -> PrepareSummary:
    """Tokenise sequence files into HDF5 shards under ``out_dir``; return what was written.

    Records longer than ``window_tokens`` tokens are cut into windows (``stride`` tokens
    apart, default ``window_tokens``: no overlap). Windows whose share of N (and, unless
    ``keep_soft_masked``, of lowercase bases) exceeds ``max_n_fraction`` are dropped.
    Validation holds out ``valid_fraction`` of the records when there are many, else blocks
    of each long record with a window of unused bases on each side. Re-running with the same
    inputs and options does nothing unless ``force``.
    """
    started = time.perf_counter()
    stride = window_tokens if stride is None else stride
    if window_tokens < 1 or stride < 1:
        raise ConfigError(f"window_tokens {window_tokens}, stride {stride}: need both >= 1")
    if not 0.0 <= valid_fraction < 1.0:
        raise ConfigError(f"valid_fraction {valid_fraction}: need 0 <= valid_fraction < 1")
    if not 0.0 <= max_n_fraction <= 1.0:
        raise ConfigError(f"max_n_fraction {max_n_fraction}: need 0 <= max_n_fraction <= 1")
    if not inputs:
        raise ConfigError("no input files given")
    out = Path(out_dir)
    sources = [_index(Path(path)) for path in inputs]
    options = {
        "window_tokens": window_tokens,
        "stride": stride,
        "valid_fraction": valid_fraction,
        "seed": seed,
        "keep_soft_masked": keep_soft_masked,
        "max_n_fraction": max_n_fraction,
        "shard_tokens": shard_tokens,
    }
    source_list = [
        {"name": s.path.name, "path": str(s.path.resolve()), "size": s.size, "sha256": s.sha256}
        for s in sources
    ]
    fingerprint = _fingerprint(tokenizer.to_dict(), options, source_list)
    previous = _read_manifest(out)
    if previous is not None and not force:
        if previous.get("fingerprint") != fingerprint:
            raise ConfigError(
                f"{out} already holds shards prepared from other inputs or options. Fix: pass "
                "--force (force=True) to replace them, or choose another output directory"
            )
        damage = _shard_damage(out, previous)
        if damage is None:
            return PrepareSummary(**{**previous["summary"], "skipped": True, "seconds": 0.0})
        logger.warning("%s; preparing the shards again", damage)
    _clear(out)

    geometry = _Geometry.of(tokenizer, window_tokens, stride)
    all_records = [record for source in sources for record in source.records if record.length]
    split_by_records = valid_fraction > 0 and len(all_records) >= math.ceil(1 / valid_fraction)
    valid_ids = _held_out_records(all_records, valid_fraction, seed) if split_by_records else set()
    attrs = {
        "format_version": FORMAT_VERSION,
        "tokenizer": json.dumps(tokenizer.to_dict()),
        "sources": json.dumps(source_list),
        "options": json.dumps(options),
    }
    dtype = _token_dtype(tokenizer.vocab_size)
    writers = {split: _ShardWriter(out, split, attrs, dtype, shard_tokens) for split in SPLITS}
    summary = PrepareSummary(
        str(out), skipped=False, split_by="records" if split_by_records else "blocks"
    )
    total_bases = sum(record.length for record in all_records)
    _require_space(out, _expected_bytes(total_bases, len(all_records), tokenizer, geometry))
    encoder = _WindowEncoder(tokenizer, writers)
    with _progress_bar(total_bases, progress) as bar:
        for source in sources:
            encoder.path = source.path
            lengths = iter(source.records)
            record: _Record | None = None
            cutter: _WindowCutter | None = None
            for kind, value in _sequence_events(source):
                if kind == "id":
                    record = next(lengths)
                    if split_by_records:
                        split = "valid" if record.id in valid_ids else "train"
                        plan = _record_plan(record, split, [], geometry)
                    else:
                        blocks = _held_out_blocks(record, valid_fraction, geometry, seed)
                        plan = _record_plan(record, None, blocks, geometry)
                    cutter = _WindowCutter(record.id, plan)
                    continue
                for start, end, split, bases in cutter.feed(value):
                    if _is_masked(bases, keep_soft_masked, max_n_fraction):
                        summary.dropped_windows += 1
                    else:
                        encoder.add(record.id, start, end, split, bases)
                summary.bases += len(value)
                bar.update(len(value))
            encoder.flush()
    if not any(writer.tokens for writer in writers.values()):
        raise InputError(
            f"no sequence left to train on: all {summary.dropped_windows} windows are more than "
            f"{max_n_fraction:.0%} N{'' if keep_soft_masked else ' or soft-masked'}",
            path=", ".join(str(source.path) for source in sources),
            fix="check that the files hold sequence data, or raise --max-n-fraction",
        )
    for writer in writers.values():
        writer.close()
    summary.sequences = {split: writers[split].sequences for split in SPLITS}
    summary.tokens = {split: writers[split].tokens for split in SPLITS}
    summary.shards = [name for split in SPLITS for name in writers[split].names]
    summary.seconds = time.perf_counter() - started
    manifest = {
        "format_version": FORMAT_VERSION,
        "fingerprint": fingerprint,
        "tokenizer": tokenizer.to_dict(),
        "sources": source_list,
        "options": options,
        "splits": {
            split: {
                "shards": writers[split].names,
                "sequences": writers[split].sequences,
                "tokens": writers[split].tokens,
            }
            for split in SPLITS
        },
        "files": {name: info for split in SPLITS for name, info in writers[split].files.items()},
        "summary": summary.to_dict(),
    }
    write_json(out / MANIFEST, manifest)
    return summary


def _expected_bytes(bases: int, records: int, tokenizer: Tokenizer, geometry: _Geometry) -> int:
    """About what the shards of ``bases`` bases take on disk: the tokens (a BPE token counted
    as 8 bases, more than most hold), every window's offsets, start, end and id, and a first
    HDF5 chunk per split."""
    bases_per_token = 8 if tokenizer.scheme == "dna-bpe" else tokenizer.stride
    overlap = max(1.0, geometry.window_bases / geometry.step_bases)
    tokens = bases * overlap / bases_per_token
    windows = bases // geometry.step_bases + records
    itemsize = _token_dtype(tokenizer.vocab_size).itemsize
    return int(tokens * itemsize + windows * 48 + len(SPLITS) * (1 << 18))


def _require_space(directory: Path, needed: int) -> None:
    """Refuse to start when the file system cannot hold the shards: HDF5 fails badly (it can
    crash the process) when a disk fills up in the middle of a write."""
    free = shutil.disk_usage(directory).free
    if free < needed:
        raise OSError(
            errno.ENOSPC,
            f"No space left on device: the shards need about {needed / 1e6:.1f} MB and "
            f"{free / 1e6:.1f} MB are free",
            str(directory),
        )


class _WindowCutter:
    """Yields the planned windows of one record as its pieces arrive, keeping only a window."""

    def __init__(self, record_id: str, plan: list[tuple[int, int, str]]) -> None:
        self.record_id = record_id
        self.plan = plan
        self.next = 0
        self.buffer = bytearray()
        self.buffer_start = 0

    def feed(self, piece: bytes) -> Iterator[tuple[int, int, str, bytes]]:
        self.buffer += piece
        buffer_end = self.buffer_start + len(self.buffer)
        while self.next < len(self.plan) and self.plan[self.next][1] <= buffer_end:
            start, end, split = self.plan[self.next]
            offset = start - self.buffer_start
            yield start, end, split, bytes(self.buffer[offset : offset + end - start])
            self.next += 1
        keep_from = self.plan[self.next][0] if self.next < len(self.plan) else buffer_end
        drop = min(keep_from, buffer_end) - self.buffer_start
        if drop > 0:
            del self.buffer[:drop]
            self.buffer_start += drop


def _is_masked(bases: bytes, keep_soft_masked: bool, max_n_fraction: float) -> bool:
    """Whether N (and, unless kept, lowercase) bases exceed ``max_n_fraction`` of a window."""
    masked = bases.count(b"N") + bases.count(b"n")
    if not keep_soft_masked:
        masked += len(bases) - len(bases.translate(None, _LOWERCASE)) - bases.count(b"n")
    return masked > max_n_fraction * len(bases)


class _WindowEncoder:
    """Tokenises windows into their split's writer.

    Each window is tokenised on its own, as if it were a record. Where that equals a slice of
    the tokens of a longer stretch (one token per base, or overlapping k-mers on one grid:
    the token at each position depends only on the k bases from there), overlapping or
    adjacent windows of one record share one ``encode`` call, which is several times faster.
    """

    def __init__(self, tokenizer: Tokenizer, writers: dict[str, _ShardWriter]) -> None:
        self.tokenizer = tokenizer
        self.writers = writers
        self.k = tokenizer.k
        self.sliceable = (
            tokenizer.stride == 1
            and tokenizer.bpe_model is None
            and tokenizer.options.get("ambiguous") != "fallback"
        )
        self.group: list[tuple[str, int, int, str, bytes]] = []
        self.path = Path()

    def add(self, record_id: str, start: int, end: int, split: str, bases: bytes) -> None:
        if self.group and not self._joins(record_id, start):
            self.flush()
        self.group.append((record_id, start, end, split, bases))

    def _joins(self, record_id: str, start: int) -> bool:
        first, last = self.group[0], self.group[-1]
        return (
            self.sliceable
            and record_id == first[0]
            and first[1] <= start <= last[2]
            and last[2] - first[1] < GROUP_BASES
        )

    def flush(self) -> None:
        group, self.group = self.group, []
        if not group:
            return
        if len(group) > 1:
            origin = group[0][1]
            stretch = bytearray(group[0][4])
            for _, start, _end, _, bases in group[1:]:
                stretch += bases[origin + len(stretch) - start :]
            tokens = self._encode(bytes(stretch), group[0][0], origin, group[-1][2])
            if len(tokens) == len(stretch) - self.k + 1:
                for record_id, start, end, split, _ in group:
                    window = tokens[start - origin : end - origin - self.k + 1]
                    self.writers[split].add(window, record_id, start, end)
                return
        for record_id, start, end, split, bases in group:
            tokens = self._encode(bases, record_id, start, end)
            self.writers[split].add(tokens, record_id, start, end)

    def _encode(self, bases: bytes, record_id: str, start: int, end: int) -> np.ndarray:
        try:
            return self.tokenizer.encode(
                bases.decode("ascii"), add_special_tokens=False, max_length=len(bases) + 2
            )
        except (InputError, UnicodeDecodeError) as error:
            problem = error.problem if isinstance(error, InputError) else str(error)
            fix = "check the file holds sequences of the tokenizer's alphabet"
            alphabet = guess_alphabet(bases.decode("ascii", errors="replace"))
            if alphabet != self.tokenizer.alphabet:
                fix = f"this looks like {alphabet}: prepare it with --tokenizer {alphabet}"
            raise InputError(
                f"cannot tokenise bases {start}-{end}: {problem}",
                path=self.path,
                record=record_id,
                fix=fix,
            ) from error


def _held_out_records(records: list[_Record], valid_fraction: float, seed: int) -> set[str]:
    """The ``valid_fraction`` of record ids that hash lowest (the same ids on every run)."""
    ids = sorted({record.id for record in records}, key=lambda rid: _unit(seed, rid))
    return set(ids[: max(1, round(valid_fraction * len(ids)))])


def _fingerprint(tokenizer: dict, options: dict, sources: list[dict]) -> str:
    content = {
        "format_version": FORMAT_VERSION,
        "tokenizer": tokenizer,
        "options": options,
        "sources": [(s["name"], s["size"], s["sha256"]) for s in sources],
    }
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()


def _read_manifest(directory: Path) -> dict[str, Any] | None:
    path = directory / MANIFEST
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise InputError(
            f"unreadable manifest: {error}", path=path, fix="re-run prepare with --force"
        ) from error
    splits = manifest.get("splits") if isinstance(manifest, dict) else None
    if not isinstance(splits, dict) or not all(
        isinstance(entry, dict) and isinstance(entry.get("shards"), list)
        for entry in splits.values()
    ):
        raise InputError(
            "not a manifest written by prepare (no splits with their shards)",
            path=path,
            fix="re-run prepare with --force",
        )
    return manifest


SHARD_DATASETS = ("tokens", "offsets", "ids", "starts", "ends")


def _shard_damage(directory: Path, manifest: dict[str, Any]) -> str | None:
    """What is wrong with the shards a manifest lists (None: all there and whole). Checks
    each shard's size against the manifest (directories written before sizes were recorded:
    skipped), that HDF5 opens it, and that its datasets hold the sequences and tokens the
    manifest counts."""
    files = manifest.get("files") or {}
    for split, entry in manifest["splits"].items():
        sequences = tokens = 0
        for name in entry["shards"]:
            path = directory / name
            if not path.is_file():
                return f"{path}: missing"
            recorded = files.get(name, {})
            if "bytes" in recorded and path.stat().st_size != recorded["bytes"]:
                return (
                    f"{path}: {path.stat().st_size} bytes, but prepare wrote "
                    f"{recorded['bytes']} (truncated or changed)"
                )
            try:
                with h5py.File(path, "r") as handle:
                    lengths = {key: len(handle[key]) for key in SHARD_DATASETS}
                    end = int(handle["offsets"][-1])
            except (OSError, KeyError, ValueError, IndexError) as error:
                return f"{path}: not a readable shard ({error})"
            count = lengths["offsets"] - 1
            if {lengths["ids"], lengths["starts"], lengths["ends"]} != {count} or (
                end != lengths["tokens"]
            ):
                return f"{path}: its datasets disagree on how many sequences it holds"
            if recorded and (count, end) != (recorded["sequences"], recorded["tokens"]):
                return f"{path}: holds {count} sequences, but prepare wrote {recorded['sequences']}"
            sequences, tokens = sequences + count, tokens + end
        if (sequences, tokens) != (entry.get("sequences"), entry.get("tokens")):
            return (
                f"{directory / MANIFEST}: the {split} shards hold {sequences} sequences and "
                f"{tokens} tokens, but the manifest counts {entry.get('sequences')} and "
                f"{entry.get('tokens')}"
            )
    return None


def _clear(directory: Path) -> None:
    """Remove a previous run's manifest (first), shards and partial shards."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / MANIFEST).unlink(missing_ok=True)
    for split in SPLITS:
        for stale in [*directory.glob(f"{split}-*.h5"), *directory.glob(f"{split}-*.h5.partial")]:
            stale.unlink()


def _progress_bar(total: int, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="bp", unit_scale=True, desc="prepare", disable=not enabled)


# ---------------------------------------------------------------- the dataset


class ShardDataset:
    """The sequences of one split of a prepared directory, as ``{"index", "input_ids"}``.

    Sequences longer than ``max_length`` (special tokens included) are cropped at a random
    place drawn from (seed, epoch, index). HDF5 files are opened lazily in each process, so a
    DataLoader's workers never share a handle.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        split: str = "train",
        *,
        max_length: int | None = None,
        seed: int = 0,
    ) -> None:
        self.directory = Path(directory)
        manifest = _read_manifest(self.directory)
        if manifest is None:
            raise InputError(
                "not a complete prepared directory (no manifest.json)",
                path=self.directory,
                fix="run 'biotransformer prepare' (again) into this directory",
            )
        if manifest.get("format_version") != FORMAT_VERSION:
            raise InputError(
                f"shard format version {manifest.get('format_version')!r}, this version of "
                f"biotransformer reads {FORMAT_VERSION}",
                path=self.directory / "manifest.json",
                fix="re-run 'biotransformer prepare --force'",
            )
        if split not in manifest["splits"]:
            raise ConfigError(f"split {split!r}: choose one of {sorted(manifest['splits'])}")
        damage = _shard_damage(self.directory, manifest)
        if damage is not None:
            raise InputError(
                f"{damage}; the prepared directory is damaged",
                fix="run 'biotransformer prepare' again with the same inputs and options: it "
                "rebuilds damaged shards",
            )
        self.split = split
        self.paths = [self.directory / name for name in manifest["splits"][split]["shards"]]
        self.seed = seed
        self.epoch = 0
        offsets = []
        for path in self.paths:
            with h5py.File(path, "r") as handle:
                offsets.append(handle["offsets"][:])
        self._offsets = offsets
        self._first = np.cumsum([0] + [len(o) - 1 for o in offsets])
        stored = np.concatenate([np.diff(o) for o in offsets]) if offsets else np.zeros(0, int)
        self._tokenizer = Tokenizer.from_dict(manifest["tokenizer"])
        self._prefix, self._suffix = _special_affixes(self._tokenizer)
        extra = len(self._prefix) + len(self._suffix)
        if max_length is not None and max_length <= extra:
            raise ConfigError(f"max_length {max_length}: need more than {extra} tokens")
        self.max_length = max_length
        self.lengths = stored + extra
        if max_length is not None:
            self.lengths = np.minimum(self.lengths, max_length)
        self.num_tokens = int(stored.sum())
        self._handles: dict[int, h5py.File] = {}
        self._pid = os.getpid()

    @property
    def tokenizer(self) -> Tokenizer:
        """The tokenizer the shards were written with, rebuilt from the shard attributes."""
        handle = self._handle(0)
        return Tokenizer.from_dict(json.loads(handle.attrs["tokenizer"]))

    def set_epoch(self, epoch: int) -> None:
        """Crop at other places in each epoch."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def _handle(self, shard: int) -> h5py.File:
        if self._pid != os.getpid():
            self._handles, self._pid = {}, os.getpid()
        if shard not in self._handles:
            self._handles[shard] = h5py.File(self.paths[shard], "r")
        return self._handles[shard]

    def _locate(self, index: int) -> tuple[int, int]:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} sequences")
        shard = int(np.searchsorted(self._first, index, side="right")) - 1
        return shard, index - int(self._first[shard])

    def location(self, index: int) -> tuple[str, int, int]:
        """(record id, start, end): where sequence ``index`` lies in its input record."""
        shard, local = self._locate(index)
        handle = self._handle(shard)
        record = handle["ids"][local]
        record = record.decode() if isinstance(record, bytes) else record
        return record, int(handle["starts"][local]), int(handle["ends"][local])

    def __getitem__(self, index: int) -> dict[str, Any]:
        shard, local = self._locate(index)
        start, end = self._offsets[shard][local : local + 2]
        room = int(self.lengths[index]) - len(self._prefix) - len(self._suffix)
        if end - start > room:
            rng = np.random.default_rng([self.seed, self.epoch, index])
            start += int(rng.integers(0, end - start - room + 1))
            end = start + room
        tokens = self._handle(shard)["tokens"][start:end].astype(np.int64)
        return {"index": index, "input_ids": np.concatenate([self._prefix, tokens, self._suffix])}

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_handles": {}}


def _special_affixes(tokenizer: Tokenizer) -> tuple[np.ndarray, np.ndarray]:
    """The special tokens ``encode`` puts before and after a sequence's own tokens."""
    letters = "ACGT" if tokenizer.alphabet == "dna" else "MKLV"
    sample = letters * 4
    bare = np.asarray(tokenizer.encode(sample, add_special_tokens=False), dtype=np.int64)
    full = np.asarray(tokenizer.encode(sample), dtype=np.int64)
    for start in range(len(full) - len(bare) + 1):
        if np.array_equal(full[start : start + len(bare)], bare):
            return full[:start], full[start + len(bare) :]
    raise ConfigError(f"tokenizer {tokenizer.spec!r} changes a sequence's own tokens")
