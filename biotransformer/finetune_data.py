"""Fine-tuning data: labelled records read, split without leakage, labels encoded.

What the fine-tuning recipe (``finetune``) does with its files before it builds a model:
``read_labelled`` reads a file with labels typed for the task, ``prepare_splits`` gives the
train/valid/test records (carving missing splits out of train, see ``splits``) and a
``SplitReport``, ``label_vocabulary`` the label names, ``loss_weights`` the class weights or
``pos_weight`` of the loss from the training labels.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from biotransformer.errors import ConfigError, InputError
from biotransformer.io import SequenceRecord, read_sequences
from biotransformer.splits import deduplicate, leakage_report, split_records
from biotransformer.tasks import TASKS

if TYPE_CHECKING:
    from biotransformer.config import FinetuneConfig, ReadOptions


def read_labelled(
    path: str | Path,
    task: str,
    read: ReadOptions,
    *,
    labelled: bool = True,
    alphabet: Literal["dna", "protein"] | None = None,
) -> list[SequenceRecord]:
    """All records of a file with labels typed for ``task``; with ``alphabet``, records that
    look like the other alphabet are refused (see ``io.read_sequences``)."""
    records = list(
        read_sequences(
            path,
            sequence_column=read.sequence_column,
            label_column=read.label_column,
            id_column=read.id_column,
            label_from=read.label_from,
            labels_file=read.labels_file,
            label_type=TASKS[task].label_type if labelled else None,
            alphabet=alphabet,
            duplicate_ids=read.duplicate_ids,
        )
    )
    if not records:
        raise InputError("the file holds no records", path=path, fix="check the file")
    if labelled:
        for record in records:
            if record.label is None:
                raise InputError(
                    "the record has no label",
                    path=path,
                    record=record.id,
                    line=record.line,
                    fix="name the label with --label-column, --label-from or --labels-file",
                )
        if task == "classification":
            _check_one_spelling_per_class(path, records)
    return records


def _check_one_spelling_per_class(path: str | Path, records: Sequence[SequenceRecord]) -> None:
    """Class labels that are all numbers write each number one way: ``1`` and ``1.0`` would
    silently become two classes."""
    try:
        numbers = [float(str(record.label)) for record in records]
    except ValueError:
        return
    spellings: dict[float, str] = {}
    for record, number in zip(records, numbers, strict=True):
        first = spellings.setdefault(number, str(record.label))
        if first != str(record.label):
            raise InputError(
                f"class labels {first!r} and {record.label!r} are the same number written two "
                "ways (they would be two classes)",
                path=path,
                record=record.id,
                line=record.line,
                fix="write each class label one way",
            )


def read_groups(path: str | Path, read: ReadOptions) -> list[str]:
    """The group value of each record of ``path``, in record order."""
    group = read.group_column
    is_table = Path(str(path).removesuffix(".gz")).suffix.lower() in (".csv", ".tsv", ".tab")
    records = read_sequences(
        path,
        sequence_column=read.sequence_column,
        id_column=read.id_column,
        label_column=group if is_table else None,
        label_from=None if is_table else str(group),
        label_type="class",
    )
    return [str(record.label) for record in records]


def _natural_key(label: str) -> tuple:
    try:
        return (0, float(label), label)
    except ValueError:
        return (1, 0.0, label)


def label_vocabulary(task: str, records: Sequence[SequenceRecord]) -> list[str]:
    """Sorted label names (numerically when they are numbers): classes, multilabel names, or
    the per-residue characters of token classification; empty for regression."""
    spec = TASKS[task]
    if spec.label_type == "numeric":
        return []
    names: set[str] = set()
    for record in records:
        label = record.label
        if spec.label_type == "multilabel":
            names.update(label)  # type: ignore[arg-type]
        elif spec.per_token:
            names.update(str(label))
        else:
            names.add(str(label))
    labels = sorted(names, key=_natural_key)
    if spec.classes and spec.label_type == "class" and len(labels) < 2:
        raise InputError(
            f"the training data has a single class {labels}",
            fix="classification needs at least two classes",
        )
    return labels


@dataclass
class SplitReport:
    """What happened to the data before training, for run.json and the log."""

    sizes: dict[str, int]
    removed_duplicates: int = 0
    conflicting_labels: int = 0
    cross_split_duplicates: int = 0
    cross_split_conflicting: int = 0
    examples: list[list[str]] = field(default_factory=list)

    def lines(self) -> list[str]:
        sizes = ", ".join(f"{name} {n}" for name, n in self.sizes.items())
        return [
            f"splits: {sizes}",
            f"duplicates removed before splitting: {self.removed_duplicates} "
            f"({self.conflicting_labels} duplicated sequences with conflicting labels)",
            f"sequences shared between splits: {self.cross_split_duplicates} "
            f"({self.cross_split_conflicting} with conflicting labels)",
        ]


def prepare_splits(
    config: FinetuneConfig, alphabet: str
) -> tuple[dict[str, list[SequenceRecord]], SplitReport]:
    """Train/valid/test records: the given files, the missing splits carved out of train
    (deduplicated, stratified or by group), and a report of duplicates and leakage."""
    train = read_labelled(config.train, config.task, config.read)
    given = {
        name: read_labelled(path, config.task, config.read)
        for name, path in (("valid", config.valid), ("test", config.test))
        if path is not None
    }
    missing = {
        name: fraction
        for name, fraction in (("valid", config.valid_fraction), ("test", config.test_fraction))
        if name not in given and fraction > 0
    }
    removed = conflicting = 0
    if missing:
        groups = (
            None if config.read.group_column is None else read_groups(config.train, config.read)
        )
        try:
            result = split_records(
                train,
                fractions=missing,
                alphabet=alphabet,
                seed=config.training.seed,
                groups=groups,
            )
        except InputError as error:  # too few records to split: name the training file
            raise error.with_path(config.train) from None
        splits = {**result.splits, **given}
        removed = result.deduplicated.n_removed
        conflicting = result.deduplicated.n_conflicting
    else:
        splits = {"train": train, **given}
        within = deduplicate(train, alphabet)
        conflicting = within.n_conflicting
    if "valid" not in splits:
        raise ConfigError(
            "no validation split: give --valid FILE or a valid_fraction above 0 (the model is "
            "selected on validation)"
        )
    leaks = leakage_report(splits, alphabet)
    report = SplitReport(
        sizes={name: len(records) for name, records in splits.items()},
        removed_duplicates=removed,
        conflicting_labels=conflicting,
        cross_split_duplicates=len(leaks.groups),
        cross_split_conflicting=len(leaks.conflicting),
        examples=[list(group.ids[:4]) for group in leaks.groups[:5]],
    )
    return {name: splits[name] for name in ("train", "valid", "test") if name in splits}, report


def loss_weights(
    config: FinetuneConfig, labels: list[str], targets: np.ndarray
) -> list[float] | None:
    """Class weights of the cross-entropy (single-label) or ``pos_weight`` of the BCE
    (multilabel) from ``--class-weights balanced`` / ``--pos-weight``."""
    label_type = TASKS[config.task].label_type
    if label_type == "multilabel":
        if config.pos_weight is None and config.class_weights is None:
            return None
        if config.pos_weight not in (None, "balanced"):
            return [float(config.pos_weight)] * len(labels)
        positives = targets.sum(axis=0)
        return [float((len(targets) - p) / max(p, 1)) for p in positives]
    if label_type != "class":
        return None
    counts = np.bincount(targets[targets >= 0], minlength=len(labels)).astype(float)
    if config.class_weights == "balanced":
        weights = counts.sum() / (len(labels) * np.maximum(counts, 1.0))
    else:
        weights = np.ones(len(labels))
    if config.pos_weight is not None:
        if len(labels) != 2:
            raise ConfigError("pos_weight needs a binary task; use --class-weights for more")
        weights[1] *= (
            counts[0] / max(counts[1], 1.0)
            if config.pos_weight == "balanced"
            else float(config.pos_weight)
        )
    if config.class_weights is None and config.pos_weight is None:
        return None
    return [float(w) for w in weights]


def targets_of(task: str, dataset: Any) -> np.ndarray:
    """The labels of a ``RecordDataset`` as one array: per token for token classification."""
    if task == "token-classification":
        return np.concatenate(dataset.labels)
    return np.stack(dataset.labels)
