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
    """Window records (ids ``ID[start-end]``, 0-based half-open) with, per window, the index
    of its record (``owner``) and its ``start``/``end`` in that record's sequence."""

    records: list[SequenceRecord]
    owner: np.ndarray
    start: np.ndarray
    end: np.ndarray
    lengths: list[int]

    @property
    def cut(self) -> bool:
        """Whether any record was cut."""
        return len(self.records) != len(self.lengths)

    def windows_per_record(self) -> np.ndarray:
        return np.bincount(self.owner, minlength=len(self.lengths))

    def window_ranges(self) -> list[range]:
        """Per record: the indices of its windows (consecutive, in order of ``start``)."""
        counts = self.windows_per_record().tolist()
        ends = np.cumsum(counts).tolist()
        return [range(end - count, end) for end, count in zip(ends, counts, strict=True)]

    def aggregate(self, values: Sequence[np.ndarray], how: str) -> list[np.ndarray]:
        """Per record: the element-wise mean or max of its windows' ``values``."""
        if not self.cut:
            return list(values)
        out = []
        for windows in self.window_ranges():
            rows = np.stack([values[i] for i in windows])
            out.append(rows.mean(axis=0) if how == "mean" else rows.max(axis=0))
        return out

    def stitch(self, per_base: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Per record: (length, ...) values from its windows' per-base ``(window length, ...)``
        values, overlaps split at their midpoint."""
        out = []
        for windows, length in zip(self.window_ranges(), self.lengths, strict=True):
            first = per_base[windows[0]]
            result = np.full((length, *first.shape[1:]), np.nan, dtype=np.float64)
            for n, window in enumerate(windows):
                start, end = int(self.start[window]), int(self.end[window])
                left = start if n == 0 else (start + int(self.end[windows[n - 1]])) // 2
                right = end
                if n + 1 < len(windows):
                    right = (int(self.start[windows[n + 1]]) + end) // 2
                result[left:right] = per_base[window][left - start : right - start]
            out.append(result)
        return out


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


def window_starts(length: int, size: int, overlap: int) -> list[int]:
    """Starts of windows of ``size`` letters, ``size - overlap`` apart, the last one ending at
    ``length``."""
    if length <= size:
        return [0]
    step = size - overlap
    return [*range(0, length - size, step), length - size]


def cut_sequence(
    tokenizer: Tokenizer, sequence: str, max_length: int, overlap: int | None
) -> list[tuple[int, int]]:
    """``[start, end)`` windows of one sequence whose tokens fit in ``max_length``."""
    room = max_length - int(tokenizer.add_cls) - int(tokenizer.add_eos)
    size = min(first_window_size(tokenizer, max_length), len(sequence))
    while True:
        gap = size // 4 if overlap is None else overlap
        if gap >= size:
            raise ConfigError(
                f"window overlap = {gap} letters is not smaller than the window ({size} letters)",
            )
        starts = window_starts(len(sequence), size, gap)
        spans = [(start, start + size) for start in starts]
        longest = int(token_counts(tokenizer, [sequence[a:b] for a, b in spans]).max())
        if longest <= max_length:
            return spans
        size = max(room, min(size - 1, size * room // (longest - (max_length - room))))


def plan_windows(
    records: Sequence[SequenceRecord],
    tokenizer: Tokenizer,
    max_length: int,
    options: WindowOptions | None = None,
) -> WindowPlan:
    """Windows for every record: the record itself when it fits, else its cut windows."""
    options = options or WindowOptions()
    counts = (
        encode_records(tokenizer, records, max_length=sys.maxsize)["attention_mask"].sum(axis=1)
        if records
        else np.zeros(0, np.int64)
    )
    window_records, owner, start, end = [], [], [], []
    for index, (record, count) in enumerate(zip(records, counts.tolist(), strict=True)):
        length = len(record.sequence)
        if count <= max_length:
            spans = [(0, length)]
        else:
            spans = cut_sequence(tokenizer, record.sequence, max_length, options.overlap)
        for a, b in spans:
            piece = record if len(spans) == 1 else _window_record(record, a, b)
            window_records.append(piece)
            owner.append(index)
            start.append(a)
            end.append(b)
    return WindowPlan(
        window_records,
        np.asarray(owner, np.int64),
        np.asarray(start, np.int64),
        np.asarray(end, np.int64),
        [len(record.sequence) for record in records],
    )


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
