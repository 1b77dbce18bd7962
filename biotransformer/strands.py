"""Both DNA strands: reverse-complement augmentation in training, strand averaging at inference.

Both work on sequences, before tokenisation, so every DNA scheme (single bases, k-mers, BPE)
sees a cleanly tokenised reverse complement. Proteins have no reverse strand: asking for
either is a ``ConfigError``.

Augmentation: ``StrandAugmentedDataset`` holds both strands of every training record,
tokenised once, and serves the reverse complement of sample ``index`` in ``epoch`` with
probability ``probability``, drawn from ``np.random.default_rng([seed, epoch, index])`` like
every random draw of the package. Per-residue labels (token classification) are reversed
with the sequence.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np
from torch.utils.data import Dataset

from biotransformer.errors import ConfigError
from biotransformer.io import SequenceRecord
from biotransformer.tokenizers import reverse_complement

if TYPE_CHECKING:
    from biotransformer.tokenizers import Tokenizer

STRAND_SALT = 0x5C  # separates the strand draws from other draws seeded by (seed, epoch, index)


def require_dna(tokenizer: Tokenizer, what: str) -> None:
    """A ``ConfigError`` unless ``tokenizer`` reads DNA."""
    if tokenizer.alphabet != "dna":
        raise ConfigError(
            f"{what} needs DNA: proteins have no reverse complement (the model's tokenizer "
            f"is {tokenizer.spec!r})"
        )


def reverse_complement_record(record: SequenceRecord) -> SequenceRecord:
    """The record on the other strand; a per-letter label string is reversed with it."""
    label = record.label
    if isinstance(label, str) and len(label) == len(record.sequence) and len(label) > 1:
        label = label[::-1]
    return replace(record, sequence=reverse_complement(record.sequence), label=label)


def average_strands(forward: np.ndarray, reverse: np.ndarray) -> np.ndarray:
    """The mean of the per-record outputs on both strands (sequence-level outputs)."""
    return (np.asarray(forward, np.float64) + np.asarray(reverse, np.float64)) / 2.0


class StrandAugmentedDataset(Dataset):
    """Items of ``forward`` or of ``reverse`` (the same records, reverse-complemented), the
    reverse one with probability ``probability``, drawn from (seed, epoch, index)."""

    def __init__(
        self,
        forward: Dataset,
        reverse: Dataset,
        probability: float,
        *,
        seed: int = 0,
    ) -> None:
        if not 0.0 <= probability <= 1.0:
            raise ConfigError(f"reverse-complement probability {probability} is not in [0, 1]")
        if len(forward) != len(reverse):
            raise ConfigError("the two strands hold different numbers of records")
        self.forward, self.reverse = forward, reverse
        self.probability = probability
        self.seed = seed
        self.epoch = 0
        self.lengths = np.maximum(np.asarray(forward.lengths), np.asarray(reverse.lengths))
        self.labels = getattr(forward, "labels", None)

    def set_epoch(self, epoch: int) -> None:
        """Draw the strands of ``epoch``."""
        self.epoch = epoch

    def flipped(self, index: int) -> bool:
        """Whether sample ``index`` is served reverse-complemented in the current epoch."""
        rng = np.random.default_rng([self.seed, STRAND_SALT, self.epoch, index])
        return bool(rng.random() < self.probability)

    def __len__(self) -> int:
        return len(self.forward)

    def __getitem__(self, index: int) -> dict[str, Any]:
        source = self.reverse if self.flipped(index) else self.forward
        return source[index]


def strand_augmented(
    records: Sequence[SequenceRecord],
    make_dataset: Callable[[Sequence[SequenceRecord]], Dataset],
    tokenizer: Tokenizer,
    probability: float,
    *,
    seed: int,
) -> StrandAugmentedDataset:
    """``make_dataset`` over ``records`` and over their reverse complements, mixed."""
    require_dna(tokenizer, "reverse-complement augmentation")
    reverse = [reverse_complement_record(record) for record in records]
    return StrandAugmentedDataset(
        make_dataset(records), make_dataset(reverse), probability, seed=seed
    )
