"""The fine-tuning defaults that adapt to the data and to the start, resolved in one place.

A ``FinetuneConfig`` field left at its automatic value (None) is decided here, from what the
run knows before training: whether the encoder is new or warm started, the alphabet, the
number of training records and their lengths. A value the user gave is kept as given. Every
resolved value is printed at the start (``Resolved.lines``) and written, as it ran, to
``config.yaml``, so the file reruns the same run with every value explicit.

The rules, and why (figures measured with ``benchmarks/finetune_defaults.py``):

- ``preset``: ``small`` (2 layers of width 64) for a new encoder: a new encoder learns from
  the labelled set alone, and a 6-layer 8M model neither fits the CPU minutes nor the few
  thousand labelled records that sets of this kind hold.
- ``tokenizer``, a new DNA model: non-overlapping 3-mers when the median record is at least
  ``KMER_MIN_LENGTH`` bp (three times fewer tokens, so three times faster epochs);
  overlapping 6-mers for shorter records when there are at least ``OVERLAP_MIN_RECORDS`` of
  them (a motif stays whole in every frame); single bases otherwise (a 4096-word vocabulary
  overfits a small set).
- ``training.lr`` and ``warmup_fraction``: ``NEW_LR`` with ``NEW_WARMUP`` of the steps
  warming up for a new encoder, ``WARM_LR`` and ``WARM_WARMUP`` for a warm start, whose
  weights a large rate would wash out.
- ``max_tokens``: batches of ``BATCH_SEQUENCES`` records of typical length (fewer for a small
  set, so that an epoch has at least ``MIN_STEPS_PER_EPOCH`` steps).
- ``epochs``/``max_steps``: ``NEW_EPOCHS`` passes within ``NEW_STEPS`` optimizer steps (new
  encoder) or ``WARM_EPOCHS`` within ``WARM_STEPS`` (warm start): a 200-record set still gets
  enough updates, a 30000-record set stays within minutes. A new encoder learns everything
  from the labelled set: with a floor of 1000 steps its best validation step was the last
  one, or nearly, on four of the five benchmark sets (quiet CPU: 27 to 157 s a run), so its
  floor is 3000.
- ``evals_per_epoch``: about ``EVALUATIONS`` validation evaluations per run, at least
  ``EVALUATION_GAP`` steps apart and at least one per epoch, so that selection and early
  stopping see the curve (``training.eval_every``).
- ``patience``: stop after ``PATIENCE`` evaluations without a better validation score.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from biotransformer.config import FinetuneConfig, TrainingConfig

NEW_PRESET = "small"
WARM_LR, NEW_LR = 3e-4, 2e-3
WARM_WARMUP, NEW_WARMUP = 0.06, 0.1
KMER_MIN_LENGTH = 200
OVERLAP_MIN_RECORDS = 10000
BATCH_SEQUENCES = 32
MIN_STEPS_PER_EPOCH = 10
WARM_EPOCHS, NEW_EPOCHS = 3.0, 10.0
WARM_STEPS, NEW_STEPS = (1000, 3000), (3000, 6000)
EVALUATIONS, EVALUATION_GAP = 20, 10
PATIENCE = 5


@dataclass
class Resolved:
    """A config with every automatic value decided, and why: ``reasons`` maps a key
    (``training.lr``) to its value's origin, ``given`` or the rule that chose it."""

    config: FinetuneConfig
    reasons: dict[str, str] = field(default_factory=dict)

    def set(self, key: str, value: Any, reason: str) -> None:
        """Set ``key`` (``training.KEY`` for the training section) to ``value``."""
        section, _, name = key.rpartition(".")
        target = self.config.training if section == "training" else self.config
        setattr(target, name, value)
        self.reasons[key] = reason

    def keep(self, key: str) -> None:
        """Record that the user gave ``key``."""
        self.reasons[key] = "given"

    def lines(self) -> list[str]:
        """One line per resolved value: ``  training.lr = 0.002  (new encoder)``."""
        lines = ["settings (auto: chosen for this data and start; override any of them):"]
        for key, reason in self.reasons.items():
            section, _, name = key.rpartition(".")
            value = getattr(self.config.training if section else self.config, name)
            lines.append(f"  {key} = {value}  ({reason})")
        return lines


def resolve_setup(config: FinetuneConfig, alphabet: str, lengths: Sequence[int]) -> Resolved:
    """The values that shape the model and its optimiser, from the start (``model_dir`` or
    not), the ``alphabet`` and the residue ``lengths`` of the training records; a copy of
    ``config`` (the given one is not changed)."""
    resolved = Resolved(dataclasses.replace(config, training=dataclasses.replace(config.training)))
    new = config.model_dir is None
    start = "new encoder" if new else "warm start"
    if new:
        if config.preset is None:
            resolved.set("preset", NEW_PRESET, "new encoder: a small model trains in minutes")
        else:
            resolved.keep("preset")
        if config.tokenizer is None:
            resolved.set("tokenizer", *_tokenizer(alphabet, lengths))
        else:
            resolved.keep("tokenizer")
    for key, value in (
        ("training.lr", NEW_LR if new else WARM_LR),
        ("warmup_fraction", NEW_WARMUP if new else WARM_WARMUP),
    ):
        section, _, name = key.rpartition(".")
        if getattr(config.training if section else config, name) is None:
            resolved.set(key, value, start)
        else:
            resolved.keep(key)
    return resolved


def _tokenizer(alphabet: str, lengths: Sequence[int]) -> tuple[str, str]:
    """The token scheme of a new model and why."""
    if alphabet == "protein":
        return "protein", "protein: one token per residue"
    median = int(np.median(lengths))
    if median >= KMER_MIN_LENGTH:
        return "dna-kmer:k=3,stride=3", f"DNA, median {median} bp: 3-mers, 3x shorter"
    if len(lengths) >= OVERLAP_MIN_RECORDS:
        return "dna-kmer:k=6,stride=1", (
            f"DNA, median {median} bp, {len(lengths)} records: overlapping 6-mers"
        )
    return "dna", f"DNA, median {median} bp, {len(lengths)} records: single bases"


def resolve_batch(resolved: Resolved, token_lengths: np.ndarray) -> None:
    """``max_tokens``: ``BATCH_SEQUENCES`` records of the 90th-percentile token length per
    batch, fewer when the set would give an epoch under ``MIN_STEPS_PER_EPOCH`` steps."""
    if resolved.config.max_tokens is not None:
        resolved.keep("max_tokens")
        return
    records = len(token_lengths)
    batch = max(1, min(BATCH_SEQUENCES, records // MIN_STEPS_PER_EPOCH))
    typical = int(np.percentile(token_lengths, 90))
    resolved.set(
        "max_tokens",
        batch * typical,
        f"batches of about {batch} records of {typical} tokens",
    )


def resolve_length(
    resolved: Resolved, training: TrainingConfig, steps_per_epoch: int
) -> TrainingConfig:
    """``training`` with ``max_steps``, ``warmup_steps``, ``eval_every`` and ``log_every``
    derived; ``epochs``/``max_steps``, ``evals_per_epoch`` and ``patience`` resolved."""
    config = resolved.config
    new = config.model_dir is None
    if config.max_steps is not None:
        resolved.keep("max_steps")
        max_steps = config.max_steps
    elif config.epochs is not None:
        resolved.keep("epochs")
        max_steps = max(math.ceil(config.epochs * steps_per_epoch), 1)
    else:
        epochs = NEW_EPOCHS if new else WARM_EPOCHS
        low, high = NEW_STEPS if new else WARM_STEPS
        wanted = math.ceil(epochs * steps_per_epoch)
        max_steps = min(max(wanted, low), high)
        resolved.set(
            "max_steps",
            max_steps,
            f"{epochs:g} epochs of {steps_per_epoch} steps, within [{low}, {high}]",
        )
    if config.evals_per_epoch is None:
        spread = max(math.ceil(max_steps / EVALUATIONS), EVALUATION_GAP)
        eval_every = max(min(steps_per_epoch, spread), 1)
        reason = (
            f"evals_per_epoch auto: about {EVALUATIONS} per run, {EVALUATION_GAP}+ steps "
            "apart, at least one per epoch"
        )
    else:
        resolved.keep("evals_per_epoch")
        eval_every = max(min(steps_per_epoch, max_steps) // config.evals_per_epoch, 1)
        reason = f"{config.evals_per_epoch} per epoch of {steps_per_epoch} steps"
    if config.patience is None:
        resolved.set("patience", PATIENCE, "evaluations without improvement before stopping")
    else:
        resolved.keep("patience")
    config.training = dataclasses.replace(
        training,
        max_steps=max_steps,
        warmup_steps=round(config.warmup_fraction * max_steps),
        eval_every=eval_every,
        log_every=min(training.log_every, eval_every),
    )
    resolved.reasons["training.eval_every"] = reason
    return config.training
