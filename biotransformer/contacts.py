"""Residue contact maps from a protein model's contact head (ESM-2's, kept on import).

``contact_maps`` runs records shortest first in batches whose attention maps stay within a
budget, yielding each record's (L, L) map of P(contact) between its residues as soon as its
batch is done; ``write_contacts_h5`` writes them as they come: one float32 dataset per record
in the group ``contacts`` (named by the record's position in the input) and the ``ids``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from biotransformer.atomic import atomic_path
from biotransformer.errors import ConfigError, InputError
from biotransformer.heads import MaskedLM
from biotransformer.io import SequenceRecord

ATTENTION_BUDGET = 2**27  # attention weights (all layers and heads) held for one batch: 512 MB


def contact_maps(
    model: MaskedLM, records: Sequence[SequenceRecord], *, max_tokens: int = 16384
) -> Iterator[tuple[int, np.ndarray]]:
    """``(index, map)`` for every record, shortest first: ``map`` (L, L) float32 holds
    P(contact) between the record's L residues. A record longer than the model's
    ``max_length`` (special tokens included) is refused: its contacts need one window."""
    if not isinstance(model, MaskedLM) or not model.head_config.contact_head:
        raise ConfigError(
            "this model has no contact head. Fix: use an ESM-2 masked LM imported with "
            "biotransformer (hf:ORG/NAME, hf:PATH or fair-esm:PATH keep its contact head)"
        )
    tokenizer, config = model.tokenizer, model.config
    if tokenizer is None:
        raise ConfigError("this model has no tokenizer. Fix: attach one as model.tokenizer")
    encoded = [np.asarray(tokenizer.encode(record.sequence)) for record in records]
    for record, ids in zip(records, encoded, strict=True):
        if len(ids) > config.max_length:
            raise InputError(
                f"{len(ids)} tokens, longer than the model's max_length = {config.max_length}",
                record=record.id,
                fix="contacts are predicted over the whole protein at once: split it into "
                "domains, or leave it out",
            )
    per_row = config.num_layers * config.num_heads
    order = sorted(range(len(records)), key=lambda i: len(encoded[i]))
    device = next(model.parameters()).device
    for batch in _batches(order, [len(ids) for ids in encoded], per_row, max_tokens):
        width = max(len(encoded[i]) for i in batch)
        input_ids = torch.full((len(batch), width), tokenizer.pad_id, dtype=torch.long)
        for row, i in enumerate(batch):
            input_ids[row, : len(encoded[i])] = torch.as_tensor(encoded[i])
        attention_mask = (torch.arange(width)[None, :] < _lengths(batch, encoded)[:, None]).long()
        probabilities = model.predict_contacts(input_ids.to(device), attention_mask.to(device))
        for row, i in enumerate(batch):
            residues = len(encoded[i]) - 2
            yield i, probabilities[row, :residues, :residues].float().cpu().numpy()


def _lengths(batch: list[int], encoded: list[np.ndarray]) -> torch.Tensor:
    return torch.tensor([len(encoded[i]) for i in batch])


def _batches(
    order: list[int], lengths: list[int], per_row: int, max_tokens: int
) -> Iterator[list[int]]:
    """Consecutive records of ``order`` (shortest first) while the padded batch stays within
    ``max_tokens`` tokens and ``ATTENTION_BUDGET`` attention weights (a record alone always
    makes a batch)."""
    batch: list[int] = []
    for i in order:
        rows, width = len(batch) + 1, lengths[i]
        if batch and (rows * width > max_tokens or rows * per_row * width**2 > ATTENTION_BUDGET):
            yield batch
            batch = []
        batch.append(i)
    if batch:
        yield batch


def write_contacts_h5(
    maps: Iterable[tuple[int, np.ndarray]],
    ids: Sequence[str],
    path: str | os.PathLike[str],
    *,
    attributes: dict[str, Any],
) -> Path:
    """HDF5 with ``contacts/<index>`` (L, L) float32 per record, written as ``maps`` yields
    them, and ``ids`` (UTF-8, input order), written aside and renamed when complete."""
    import h5py

    with atomic_path(path) as staging, h5py.File(staging, "w") as handle:
        group = handle.create_group("contacts")
        for index, contact_map in maps:
            group.create_dataset(str(index), data=contact_map, compression="gzip")
        handle.create_dataset("ids", data=list(ids), dtype=h5py.string_dtype(encoding="utf-8"))
        for key, value in attributes.items():
            handle.attrs[key] = value
    return Path(path)
