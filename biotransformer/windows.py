"""Long sequences: windows cut in base coordinates, outputs aggregated or stitched per base.

A record whose tokens do not fit the model (``max_length`` tokens, special tokens included)
is cut into windows of ``size`` letters that start ``size - overlap`` letters apart, the last
one ending where the sequence ends. Each window is tokenised on its own, so k-mer and BPE
schemes see clean window edges. ``size`` starts from what the scheme needs for
``max_length`` tokens (``room x stride + k - stride`` letters for k-mers, ``room`` letters
otherwise) and shrinks until every window fits, so nothing is ever cropped.

Sequence outputs of a record's windows are aggregated element-wise (``mean`` or ``max``).
Token outputs are first put on bases (a base takes the output of the covering token that
starts last, i.e. the token starting at the base for overlapping k-mers, as training labels
take a token's first base), then stitched: where two windows overlap, each takes the half of
the overlap on its own side, so every base is read from the window in which it lies farther
from an edge, and bases outside overlaps are exactly their window's outputs.
"""

from __future__ import annotations

import itertools
import sys
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from biotransformer.errors import ConfigError, InputError
from biotransformer.io import SequenceRecord

if TYPE_CHECKING:
    from biotransformer.tokenizers import Tokenizer

AGGREGATES = ("mean", "max")
#: Windows of a long record tokenized together while it is cut.
COUNT_WINDOWS = 1024


@dataclass(frozen=True)
class WindowOptions:
    """``overlap`` in letters between consecutive windows (default: a quarter of the window);
    ``aggregate`` combines the sequence outputs of a record's windows."""

    overlap: int | None = None
    aggregate: str = "mean"

    def __post_init__(self) -> None:
        if self.aggregate not in AGGREGATES:
            raise ConfigError(f"window aggregate {self.aggregate!r} is not one of {AGGREGATES}")
        if self.overlap is not None and self.overlap < 0:
            raise ConfigError(f"window overlap = {self.overlap} must be >= 0 letters")


@dataclass
class WindowPlan:
    """The windows of some ``sources`` records: per window, the index of its record
    (``owner``, non-decreasing) and its ``start``/``end`` in that record's sequence. A window
    record (id ``ID[start-end]``, 0-based half-open; the record itself when it is not cut) is
    built only when asked for (``window_records``), so a long record's windows cost their
    coordinates until they are run."""

    sources: list[SequenceRecord]
    owner: np.ndarray
    start: np.ndarray
    end: np.ndarray

    @property
    def lengths(self) -> list[int]:
        return [len(record.sequence) for record in self.sources]

    @property
    def cut(self) -> bool:
        """Whether any record was cut."""
        return len(self.owner) != len(self.sources)

    @property
    def records(self) -> list[SequenceRecord]:
        """Every window record, in order."""
        return self.window_records(range(len(self.owner)))

    def window_records(self, windows: range) -> list[SequenceRecord]:
        """The window records of ``windows`` (indices into the plan)."""
        result = []
        for window in windows:
            record = self.sources[int(self.owner[window])]
            start, end = int(self.start[window]), int(self.end[window])
            whole = start == 0 and end == len(record.sequence)  # the record's only window
            result.append(record if whole else _window_record(record, start, end))
        return result

    def groups(self, max_letters: int) -> list[range]:
        """Consecutive runs of windows, a new one begun where the letters so far pass a
        multiple of ``max_letters`` (so each holds at most ``max_letters`` letters and one
        window): the unit a long record's windows are run in."""
        if not len(self.owner):
            return []
        bins = (np.cumsum(self.end - self.start) - 1) // max_letters
        cuts = [0, *(np.flatnonzero(np.diff(bins)) + 1).tolist(), len(bins)]
        return [range(a, b) for a, b in itertools.pairwise(cuts)]

    def windows_per_record(self) -> np.ndarray:
        return np.bincount(self.owner, minlength=len(self.sources))

    def window_ranges(self) -> list[range]:
        """Per record: the indices of its windows (consecutive, in order of ``start``)."""
        counts = self.windows_per_record().tolist()
        ends = np.cumsum(counts).tolist()
        return [range(end - count, end) for end, count in zip(ends, counts, strict=True)]

    def stitch(self, per_base: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Per record: (length, ...) values from its windows' per-base ``(window length, ...)``
        values, overlaps split at their midpoint."""
        return [self.stitch_record(windows, per_base) for windows in self.window_ranges()]

    def stitch_record(self, windows: range, per_base: Sequence[np.ndarray]) -> np.ndarray:
        """``stitch`` of the record whose windows are ``windows`` (``per_base`` indexed by
        window)."""
        length = len(self.sources[int(self.owner[windows[0]])].sequence)
        first = per_base[windows[0]]
        result = np.full((length, *first.shape[1:]), np.nan)
        for n, window in enumerate(windows):
            start, end = int(self.start[window]), int(self.end[window])
            left = start if n == 0 else (start + int(self.end[windows[n - 1]])) // 2
            right = end
            if n + 1 < len(windows):
                right = (int(self.start[windows[n + 1]]) + end) // 2
            result[left:right] = per_base[window][left - start : right - start]
        return result


class RunningAggregate:
    """The element-wise mean or max per record of window values added in any number of
    steps (summed in float64): a long record's windows need not be held at once."""

    def __init__(self, how: str, records: int) -> None:
        if how not in AGGREGATES:
            raise ConfigError(f"window aggregate {how!r} is not one of {AGGREGATES}")
        self.how = how
        self.records = records
        self.counts = np.zeros(records, np.int64)
        self.values: np.ndarray | None = None
        self.dtype: np.dtype = np.dtype(np.float64)

    def add(self, owners: np.ndarray, values: np.ndarray) -> None:
        """Fold in ``values`` (n, ...) of windows whose records are ``owners`` (n,)."""
        if self.values is None:
            fill = 0.0 if self.how == "mean" else -np.inf
            self.values = np.full((self.records, *values.shape[1:]), fill, np.float64)
            self.dtype = values.dtype
        if self.how == "mean":
            np.add.at(self.values, owners, values)
        else:
            np.maximum.at(self.values, owners, values)
        self.counts += np.bincount(owners, minlength=self.records)

    def result(self) -> np.ndarray:
        """Per record: the mean or max of its windows' values, in the values' dtype (a record
        of one window gets its window's values exactly)."""
        if self.values is None or not self.counts.all():
            raise ValueError("a record has no window values")
        if self.how == "max":
            return self.values.astype(self.dtype)
        shape = (-1, *([1] * (self.values.ndim - 1)))
        return (self.values / self.counts.reshape(shape)).astype(self.dtype)


def encode_records(
    tokenizer: Tokenizer, records: Sequence[SequenceRecord], **options: Any
) -> dict[str, Any]:
    """``tokenizer.encode_batch`` of the records' sequences; a sequence the tokenizer refuses
    is an ``InputError`` naming its record (id and line), not its place in the batch."""
    try:
        return tokenizer.encode_batch([record.sequence for record in records], **options)
    except InputError as error:
        record = records[getattr(error, "batch_row", 0)]
        raise InputError(
            error.problem.split(" (sequence ")[0],
            record=record.id,
            line=record.line,
            position=error.position,
            fix=error.fix,
        ) from None


def token_counts(tokenizer: Tokenizer, sequences: Sequence[str]) -> np.ndarray:
    """Tokens of each sequence, special tokens included, never cropped."""
    if not sequences:
        return np.zeros(0, np.int64)
    batch = tokenizer.encode_batch(list(sequences), max_length=sys.maxsize)
    return batch["attention_mask"].sum(axis=1)


def first_window_size(tokenizer: Tokenizer, max_length: int) -> int:
    """Letters that make at most ``max_length`` tokens in the common case."""
    room = max_length - int(tokenizer.add_cls) - int(tokenizer.add_eos)
    if room < 1:
        raise ConfigError(f"max_length = {max_length} leaves no room for a token")
    if tokenizer.scheme == "dna-kmer":
        return room * tokenizer.stride + tokenizer.k - tokenizer.stride
    return room


def window_starts(length: int, size: int, overlap: int) -> np.ndarray:
    """Starts of windows of ``size`` letters, ``size - overlap`` apart, the last one ending at
    ``length``."""
    if length <= size:
        return np.zeros(1, np.int64)
    return np.append(np.arange(0, length - size, size - overlap, dtype=np.int64), length - size)


def cut_sequence(
    tokenizer: Tokenizer, sequence: str, max_length: int, overlap: int | None
) -> np.ndarray:
    """``[start, end)`` windows (n, 2) of one sequence whose tokens fit in ``max_length``."""
    room = max_length - int(tokenizer.add_cls) - int(tokenizer.add_eos)
    size = min(first_window_size(tokenizer, max_length), len(sequence))
    while True:
        gap = size // 4 if overlap is None else overlap
        if gap >= size:
            raise ConfigError(
                f"window overlap = {gap} letters is not smaller than the window ({size} letters)",
            )
        starts = window_starts(len(sequence), size, gap)
        spans = np.stack([starts, starts + size], axis=1)
        longest = _most_tokens(tokenizer, sequence, spans)
        if longest <= max_length:
            return spans
        size = max(room, min(size - 1, size * room // (longest - (max_length - room))))


def _most_tokens(tokenizer: Tokenizer, sequence: str, spans: np.ndarray) -> int:
    """The most tokens of any window, counted ``COUNT_WINDOWS`` windows at a time (memory set
    by those, not by the sequence); a letter the tokenizer refuses is reported at its place in
    the whole sequence."""
    longest = 0
    for first in range(0, len(spans), COUNT_WINDOWS):
        batch = spans[first : first + COUNT_WINDOWS].tolist()
        try:
            counts = token_counts(tokenizer, [sequence[a:b] for a, b in batch])
        except InputError as error:
            if error.position is None:
                raise
            start = batch[getattr(error, "batch_row", 0)][0]
            raise InputError(
                error.problem.split(" (sequence ")[0],
                position=start + error.position,
                fix=error.fix,
            ) from None
        longest = max(longest, int(counts.max()))
    return longest


def plan_windows(
    records: Sequence[SequenceRecord],
    tokenizer: Tokenizer,
    max_length: int,
    options: WindowOptions | None = None,
) -> WindowPlan:
    """Windows for every record: the record itself when it fits, else its cut windows.

    Only a record short enough that it could fit (``max_token_letters`` letters a token) is
    tokenized whole; a longer one is cut straight away, its windows tokenized a batch at a
    time, so planning a chromosome costs its window coordinates, not its tokens."""
    options = options or WindowOptions()
    records = list(records)
    could_fit = max_length * tokenizer.max_token_letters + 1  # + 1: a stripped protein stop
    short = [i for i, record in enumerate(records) if len(record.sequence) <= could_fit]
    fits = np.zeros(len(records), bool)
    if short:
        encoded = encode_records(tokenizer, [records[i] for i in short], max_length=sys.maxsize)
        fits[short] = encoded["attention_mask"].sum(axis=1) <= max_length
    owner, spans_of = [], []
    for index, record in enumerate(records):
        if fits[index]:
            spans = np.array([[0, len(record.sequence)]], np.int64)
        else:
            try:
                spans = cut_sequence(tokenizer, record.sequence, max_length, options.overlap)
            except InputError as error:
                raise InputError(
                    error.problem,
                    record=record.id,
                    line=record.line,
                    position=error.position,
                    fix=error.fix,
                ) from None
        owner.append(np.full(len(spans), index, np.int64))
        spans_of.append(spans)
    if not records:
        return WindowPlan([], *(np.zeros(0, np.int64),) * 3)
    spans = np.concatenate(spans_of)
    return WindowPlan(records, np.concatenate(owner), spans[:, 0].copy(), spans[:, 1].copy())


def _window_record(record: SequenceRecord, start: int, end: int) -> SequenceRecord:
    label = record.label
    if isinstance(label, str) and len(label) == len(record.sequence):
        label = label[start:end]
    return replace(record, id=f"{record.id}[{start}-{end}]", sequence=record.sequence[start:end])


def tokens_to_bases(values: np.ndarray, offsets: np.ndarray, length: int) -> np.ndarray:
    """Per-token ``values`` (n, ...) of one sequence onto its ``length`` letters: each letter
    takes the covering token that starts last; letters no token covers are NaN. ``offsets``
    (n, 2) are the tokens' ``[start, end)`` spans, (-1, -1) for special tokens."""
    content = offsets[:, 0] >= 0
    values, offsets = values[content], offsets[content]
    order = np.argsort(offsets[:, 0], kind="stable")
    values, offsets = values[order], offsets[order]
    bases = np.arange(length)
    token = np.searchsorted(offsets[:, 0], bases, side="right") - 1
    covered = (token >= 0) & (offsets[np.maximum(token, 0), 1] > bases)
    out = np.full((length, *values.shape[1:]), np.nan, dtype=np.float64)
    out[covered] = values[token[covered]]
    return out
