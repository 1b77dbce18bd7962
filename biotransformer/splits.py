"""Train/validation/test splits without leakage.

Two records leak into each other when they hold the same sequence, ignoring case and, for
DNA, strand: a sequence and its reverse complement are the same molecule. ``deduplicate``
keeps the first record of each such group, ``split_records`` then splits what is left
stratified by label (or by a user group column, so that a whole group lands in one split),
and ``leakage_report`` finds sequences shared by splits the user gave.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from biotransformer.errors import ConfigError, InputError
from biotransformer.io import DuplicateReport, SequenceRecord, cross_split_duplicates
from biotransformer.tokenizers import reverse_complement

SPLIT_NAMES = ("train", "valid", "test")


def sequence_key(sequence: str, alphabet: str) -> str:
    """The identity of a sequence for leakage checks: uppercase, and for DNA the smaller of
    the sequence and its reverse complement."""
    upper = sequence.upper()
    if alphabet != "dna":
        return upper
    return min(upper, reverse_complement(upper))


def _keyed(records: Sequence[SequenceRecord], alphabet: str) -> list[SequenceRecord]:
    return [
        dataclasses.replace(record, sequence=sequence_key(record.sequence, alphabet))
        for record in records
    ]


@dataclass(frozen=True)
class Deduplicated:
    """The records left after removing duplicates, and what was removed."""

    records: list[SequenceRecord]
    n_removed: int
    n_conflicting: int
    conflicting_ids: tuple[tuple[str, ...], ...]

    def summary(self) -> str:
        """One line for a log."""
        return (
            f"{len(self.records)} records kept, {self.n_removed} duplicates removed "
            f"({self.n_conflicting} duplicated sequences carried conflicting labels)"
        )


def deduplicate(records: Sequence[SequenceRecord], alphabet: str) -> Deduplicated:
    """Keep the first record of each sequence (strand-insensitive for DNA).

    Copies with different labels are reported in ``conflicting_ids``; the first copy's label
    is kept, as for any other duplicate.
    """
    seen: dict[str, SequenceRecord] = {}
    labels: dict[str, set] = {}
    ids: dict[str, list[str]] = {}
    for record in records:
        key = sequence_key(record.sequence, alphabet)
        seen.setdefault(key, record)
        labels.setdefault(key, set()).add(record.label)
        ids.setdefault(key, []).append(record.id)
    conflicting = tuple(tuple(ids[key]) for key in seen if len(labels[key]) > 1)
    return Deduplicated(
        records=list(seen.values()),
        n_removed=len(records) - len(seen),
        n_conflicting=len(conflicting),
        conflicting_ids=conflicting,
    )


def leakage_report(
    splits: Mapping[str, Sequence[SequenceRecord]], alphabet: str
) -> DuplicateReport:
    """Sequences found in more than one split (strand-insensitive for DNA, case-insensitive)."""
    return cross_split_duplicates(
        {name: _keyed(records, alphabet) for name, records in splits.items()}
    )


def _stratum(label: object) -> object:
    if isinstance(label, float):
        return None  # numeric targets: binned by quantile in _strata
    return label


def _strata(records: Sequence[SequenceRecord]) -> list[object]:
    """The stratum of each record: its class (or label set); quantile bins for numbers."""
    labels = [record.label for record in records]
    if labels and all(isinstance(label, float) for label in labels):
        values = np.asarray(labels, dtype=float)
        edges = np.quantile(values, np.linspace(0, 1, 11)[1:-1])
        return np.searchsorted(edges, values).tolist()
    return [_stratum(label) for label in labels]


def _allocate(n: int, fractions: Sequence[float]) -> list[int]:
    """Counts per split for ``n`` items: rounded shares, train taking the remainder."""
    counts = [0] + [math.floor(n * fraction + 0.5) for fraction in fractions[1:]]
    counts[0] = n - sum(counts[1:])
    return counts


def _stratified_counts(
    sizes: Sequence[int], shares: Sequence[float], rng: np.random.Generator
) -> np.ndarray:
    """``counts[k, s]``: records of stratum k in split s. Each split s >= 1 gets its rounded
    share of all records: every stratum its floor share, the rest by largest remainder (ties
    at random), so strata too small for a share of their own (e.g. singletons) still fill the
    split. Split 0 (train) takes what is left."""
    sizes = np.asarray(sizes, dtype=np.int64)
    counts = np.zeros((len(sizes), len(shares)), dtype=np.int64)
    for split in range(1, len(shares)):
        quota = sizes * shares[split]
        counts[:, split] = np.floor(quota)
        missing = math.floor(sizes.sum() * shares[split] + 0.5) - int(counts[:, split].sum())
        room = sizes - counts[:, 1:].sum(axis=1)
        for stratum in np.lexsort((rng.random(len(sizes)), np.floor(quota) - quota)):
            if missing <= 0:
                break
            if room[stratum] > 0:
                counts[stratum, split] += 1
                room[stratum] -= 1
                missing -= 1
    counts[:, 0] = sizes - counts[:, 1:].sum(axis=1)
    return counts


@dataclass(frozen=True)
class SplitResult:
    """Records per split name (``train``, ``valid``, ``test``) and the dedup summary."""

    splits: dict[str, list[SequenceRecord]]
    deduplicated: Deduplicated


def split_records(
    records: Sequence[SequenceRecord],
    *,
    fractions: Mapping[str, float],
    alphabet: str,
    seed: int = 0,
    groups: Sequence[str] | None = None,
) -> SplitResult:
    """Split ``records`` into the named splits (``train`` takes what the others leave).

    Duplicates are removed first (``deduplicate``). Without ``groups`` the split is
    stratified by label: each class (label set, or decile of a numeric label) is cut in the
    same proportions. With ``groups`` (one value per record, e.g. a cluster id) whole groups
    are assigned to splits, in a random order, until each split has its share of records.
    """
    names = ["train", *(name for name in fractions if name != "train")]
    shares = [0.0] + [float(fractions[name]) for name in names[1:]]
    if any(share < 0 for share in shares) or sum(shares) >= 1.0:
        raise ConfigError(
            f"split fractions {dict(fractions)} must be >= 0 and leave some records for train"
        )
    if groups is not None and len(groups) != len(records):
        raise ConfigError(f"{len(groups)} group values for {len(records)} records")
    group_of = (
        None
        if groups is None
        else {id(record): group for record, group in zip(records, groups, strict=True)}
    )
    unique = deduplicate(records, alphabet)
    kept = unique.records
    rng = np.random.default_rng(seed)
    out: dict[str, list[SequenceRecord]] = {name: [] for name in names}
    if group_of is None:
        by_stratum: dict[object, list[int]] = {}
        for index, stratum in enumerate(_strata(kept)):
            by_stratum.setdefault(stratum, []).append(index)
        members = list(by_stratum.values())
        counts = _stratified_counts([len(m) for m in members], shares, rng)
        assignment = np.zeros(len(kept), dtype=np.int64)
        for stratum, indices in enumerate(members):
            order = rng.permutation(indices)
            start = 0
            for split, count in enumerate(counts[stratum]):
                assignment[order[start : start + count]] = split
                start += count
    else:
        by_group: dict[str, list[int]] = {}
        for index, record in enumerate(kept):
            by_group.setdefault(group_of[id(record)], []).append(index)
        targets = _allocate(len(kept), shares)
        filled = [0] * len(names)
        assignment = np.zeros(len(kept), dtype=np.int64)
        for group in rng.permutation(sorted(by_group)).tolist():
            members = by_group[group]
            split = next(
                (s for s in range(1, len(names)) if filled[s] + len(members) <= targets[s]), 0
            )
            assignment[members] = split
            filled[split] += len(members)
    for index, record in enumerate(kept):
        out[names[int(assignment[index])]].append(record)
    for name, members in out.items():
        if not members:
            raise InputError(
                f"the {name} split is empty ({len(kept)} distinct records)",
                fix="give more records, change the split fractions, or pass the split as a file",
            )
    return SplitResult(splits=out, deduplicated=unique)
