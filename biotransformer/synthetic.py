"""The synthetic planted-motif promoter task: the quickstart's built-in data set, made here.

Each sequence is 64 bp of random DNA (independent bases, 42% GC) read as the stretch from
60 bp upstream to 4 bp downstream of a transcription start site (TSS). A TATA box
(consensus TATAAAAG, each base kept with probability ``conservation``, else one of the other
three) is planted according to the class:

- promoter (label 1): the box starts 26 to 31 bp upstream of the TSS, where a core promoter
  has it;
- non-promoter (label 0): with probability ``decoy_rate`` the same box at a wrong place (its
  start at least ``decoy_distance`` bp from any promoter position), otherwise no box.

Then a share ``label_noise`` of the labels is flipped. Counting k-mers shows whether a box is
there but not where, so a k-mer logistic regression separates promoters only from the
non-promoters without a box; a model that sees positions can also reject the misplaced
boxes. With the defaults, that k-mer baseline (``biotransformer.baselines.kmer_baseline``)
reaches a test MCC between 0.3 and 0.6. Every draw comes from one ``numpy`` generator seeded
by ``seed``, so a seed gives the same data on every machine.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from biotransformer.atomic import atomic_write

TASK_NAME = "synthetic planted-motif promoter task"
BASES = np.array(list("ACGT"))
SPLITS = ("train", "valid", "test")


@dataclass(frozen=True)
class SyntheticTask:
    """The knobs of the generated task; the defaults are the quickstart's data set.

    ``tss`` is the 0-based index of the TSS in the sequence; ``box_upstream`` the range
    (inclusive) of distances from the box's first base to the TSS in promoters.
    """

    length: int = 64
    tss: int = 60
    gc: float = 0.42
    box: str = "TATAAAAG"
    box_upstream: tuple[int, int] = (26, 31)
    conservation: float = 0.95
    decoy_rate: float = 0.3
    decoy_distance: int = 12
    label_noise: float = 0.05
    sizes: dict[str, int] = field(
        default_factory=lambda: {"train": 16000, "valid": 500, "test": 1000}
    )

    def promoter_starts(self) -> np.ndarray:
        """Indices where a promoter's box may start."""
        return np.arange(self.tss - self.box_upstream[1], self.tss - self.box_upstream[0] + 1)

    def decoy_starts(self) -> np.ndarray:
        """Indices where a misplaced box may start: far enough from every promoter start."""
        starts = np.arange(self.length - len(self.box) + 1)
        distance = np.abs(starts[:, None] - self.promoter_starts()[None, :]).min(axis=1)
        return starts[distance >= self.decoy_distance]


@dataclass(frozen=True)
class SyntheticSplit:
    """Sequences and 0/1 labels of one split."""

    sequences: list[str]
    labels: list[int]


def _sequence(rng: np.random.Generator, task: SyntheticTask, box_start: int | None) -> str:
    """Background bases with the box (sampled from its PWM) at ``box_start``, if any."""
    at, gc = (1.0 - task.gc) / 2.0, task.gc / 2.0
    codes = rng.choice(4, size=task.length, p=[at, gc, gc, at])
    if box_start is not None:
        consensus = np.searchsorted(BASES, list(task.box))
        keep = rng.random(len(consensus)) < task.conservation
        other = (consensus + rng.integers(1, 4, size=len(consensus))) % 4
        codes[box_start : box_start + len(consensus)] = np.where(keep, consensus, other)
    return "".join(BASES[codes])


def generate_split(rng: np.random.Generator, task: SyntheticTask, size: int) -> SyntheticSplit:
    """``size`` sequences, half promoters, then ``task.label_noise`` of the labels flipped."""
    labels = rng.permutation(np.arange(size) % 2)
    promoter_starts, decoy_starts = task.promoter_starts(), task.decoy_starts()
    sequences = []
    for label in labels:
        if label:
            start = int(rng.choice(promoter_starts))
        elif rng.random() < task.decoy_rate:
            start = int(rng.choice(decoy_starts))
        else:
            start = None
        sequences.append(_sequence(rng, task, start))
    flipped = rng.random(size) < task.label_noise
    return SyntheticSplit(sequences, [int(y) for y in np.where(flipped, 1 - labels, labels)])


def generate(seed: int = 0, task: SyntheticTask | None = None) -> dict[str, SyntheticSplit]:
    """Train, valid and test splits of the synthetic planted-motif promoter task."""
    task = task or SyntheticTask()
    rng = np.random.default_rng(seed)
    return {name: generate_split(rng, task, task.sizes[name]) for name in SPLITS}


def write_csv(sequences: Sequence[str], labels: Sequence[object], path: str | Path) -> Path:
    """A ``sequence,label`` CSV, as ``biotransformer finetune`` reads it."""
    with atomic_write(path, newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["sequence", "label"])
        writer.writerows(zip(sequences, labels, strict=True))
    return Path(path)


def write_fasta(sequences: Sequence[str], path: str | Path, prefix: str = "synthetic") -> Path:
    """An unlabelled FASTA file, one line per sequence, as ``biotransformer pretrain`` reads."""
    with atomic_write(path) as handle:
        for index, sequence in enumerate(sequences):
            handle.write(f">{prefix}_{index}\n{sequence}\n")
    return Path(path)
