"""Collators: items to padded tensors. Masking for pretraining happens here and only here.

Items are dicts ``{"index": int, "input_ids": np.ndarray}`` (``ShardDataset`` yields them);
fine-tuning items also carry ``labels``. Every random draw of ``MaskingCollator`` comes from
``np.random.default_rng([seed, epoch, index])``, so a sample is masked the same way whichever
worker, batch or resumed run collates it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from biotransformer.constants import IGNORE_INDEX
from biotransformer.errors import ConfigError

if TYPE_CHECKING:
    from biotransformer.tokenizers import Tokenizer


def _pad(rows: Sequence[np.ndarray], value: int) -> tuple[np.ndarray, np.ndarray]:
    """Stack 1-D arrays into (B, T) padded with ``value``, and the (B, T) mask of real entries."""
    longest = max(len(row) for row in rows)
    out = np.full((len(rows), longest), value, dtype=np.asarray(rows[0]).dtype)
    mask = np.zeros((len(rows), longest), dtype=np.int64)
    for i, row in enumerate(rows):
        out[i, : len(row)] = row
        mask[i, : len(row)] = 1
    return out, mask


def default_span_length(tokenizer: Tokenizer) -> int:
    """``2k - 1`` for overlapping k-mers (hides one whole k-mer per span), else 1."""
    k, stride = getattr(tokenizer, "k", 1) or 1, getattr(tokenizer, "stride", 1) or 1
    return 2 * k - 1 if k > 1 and stride == 1 else 1


class MaskingCollator:
    """Masked-token prediction: select ``mask_rate`` of the real tokens, in spans.

    A selected token becomes the mask token (``mask_token_rate``), a random non-special token
    (``random_token_rate``) or stays as it is (the rest); its label is the original id, every
    other label is -100. Special and pad tokens are never selected.

    With overlapping k-mers each base is spelled by k neighbouring tokens, so a lone masked
    token can be read off its neighbours. Spans of ``2k - 1`` tokens (the default for such
    tokenizers) hide the k bases of the centre token from every unmasked token.
    """

    def __init__(
        self,
        tokenizer: Tokenizer,
        *,
        mask_rate: float = 0.15,
        mask_token_rate: float = 0.8,
        random_token_rate: float = 0.1,
        span_length: int | None = None,
        seed: int = 0,
    ) -> None:
        if not 0.0 < mask_rate < 1.0:
            raise ConfigError(f"mask_rate {mask_rate}: need 0 < mask_rate < 1")
        if mask_token_rate < 0 or random_token_rate < 0 or mask_token_rate + random_token_rate > 1:
            raise ConfigError(
                f"mask_token_rate {mask_token_rate} + random_token_rate {random_token_rate}: "
                "each must be >= 0 and their sum <= 1"
            )
        self.span_length = default_span_length(tokenizer) if span_length is None else span_length
        if self.span_length < 1:
            raise ConfigError(f"span_length {self.span_length}: need at least 1")
        self.pad_id = int(tokenizer.pad_id)
        self.mask_id = int(tokenizer.mask_id)
        self.special_ids = np.array(sorted({*tokenizer.special_ids, self.pad_id}), dtype=np.int64)
        self.random_pool = np.setdiff1d(np.arange(tokenizer.vocab_size), self.special_ids)
        self.mask_rate = mask_rate
        self.mask_token_rate = mask_token_rate
        self.random_token_rate = random_token_rate
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Mask differently in each epoch (call before the DataLoader starts its workers)."""
        self.epoch = epoch

    def select(self, input_ids: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Boolean mask of the positions to predict: spans over non-special tokens."""
        eligible = ~np.isin(input_ids, self.special_ids)
        target = self.mask_rate * int(eligible.sum())
        selected = np.zeros(len(input_ids), dtype=bool)
        if self.span_length == 1:
            positions = rng.permutation(np.flatnonzero(eligible))[: round(target)]
            selected[positions] = True
            return selected
        # Span starts may lie up to span-1 before the first token, so edges are hidden as often.
        starts = rng.permutation(np.arange(1 - self.span_length, len(input_ids)))
        count = 0
        for start in starts.tolist():
            span = slice(max(start, 0), start + self.span_length)
            added = int((eligible[span] & ~selected[span]).sum())
            if count + added / 2 > target:
                break
            selected[span] |= eligible[span]
            count += added
        return selected

    def mask(self, input_ids: np.ndarray, index: int) -> tuple[np.ndarray, np.ndarray]:
        """The corrupted ids and the labels of one sample."""
        rng = np.random.default_rng([self.seed, self.epoch, index])
        selected = self.select(input_ids, rng)
        labels = np.where(selected, input_ids, IGNORE_INDEX)
        corrupted = input_ids.copy()
        draw = rng.random(len(input_ids))
        to_mask = selected & (draw < self.mask_token_rate)
        to_random = (
            selected
            & (draw >= self.mask_token_rate)
            & (draw < self.mask_token_rate + self.random_token_rate)
        )
        corrupted[to_mask] = self.mask_id
        corrupted[to_random] = rng.choice(self.random_pool, size=int(to_random.sum()))
        return corrupted, labels

    def __call__(self, items: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        corrupted, labels = [], []
        for item in items:
            ids, target = self.mask(np.asarray(item["input_ids"], dtype=np.int64), item["index"])
            corrupted.append(ids)
            labels.append(target)
        input_ids, attention_mask = _pad(corrupted, self.pad_id)
        padded_labels, _ = _pad(labels, IGNORE_INDEX)
        return {
            "input_ids": torch.from_numpy(input_ids),
            "attention_mask": torch.from_numpy(attention_mask),
            "labels": torch.from_numpy(padded_labels),
            "index": torch.tensor([int(item["index"]) for item in items]),
        }


class PaddingCollator:
    """Fine-tuning batches: pad ``input_ids`` and collate ``labels`` as they come.

    Sequence labels (a number, or a fixed-length multi-label vector) are stacked; per-token
    labels (one per input token) are padded with ``label_pad``. ``token_labels=None`` tells
    them apart by length: labels as long as every item's input are per-token.
    """

    def __init__(
        self, pad_id: int, label_pad: int = IGNORE_INDEX, *, token_labels: bool | None = None
    ):
        self.pad_id = pad_id
        self.label_pad = label_pad
        self.token_labels = token_labels

    def __call__(self, items: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        rows = [np.asarray(item["input_ids"], dtype=np.int64) for item in items]
        input_ids, attention_mask = _pad(rows, self.pad_id)
        batch = {
            "input_ids": torch.from_numpy(input_ids),
            "attention_mask": torch.from_numpy(attention_mask),
        }
        if "index" in items[0]:
            batch["index"] = torch.tensor([int(item["index"]) for item in items])
        if "labels" in items[0]:
            batch["labels"] = self._labels([np.asarray(item["labels"]) for item in items], rows)
        return batch

    def _labels(self, labels: list[np.ndarray], rows: list[np.ndarray]) -> torch.Tensor:
        per_token = self.token_labels
        if per_token is None:
            per_token = all(
                label.ndim == 1 and len(label) == len(row)
                for label, row in zip(labels, rows, strict=True)
            )
        if per_token:
            padded, _ = _pad([label.astype(np.int64) for label in labels], self.label_pad)
            return torch.from_numpy(padded)
        stacked = np.stack(labels)
        if np.issubdtype(stacked.dtype, np.floating):
            return torch.from_numpy(stacked.astype(np.float32))
        return torch.from_numpy(stacked.astype(np.int64))
