"""Pretraining and fine-tuning data: HDF5 shards, the masking collator, token-budget batches.

Names load lazily, so ``prepare`` (shards only) never imports torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_PUBLIC_NAMES: dict[str, str] = {
    "MaskingCollator": "biotransformer.data.collator",
    "PaddingCollator": "biotransformer.data.collator",
    "PrepareSummary": "biotransformer.data.shards",
    "ShardDataset": "biotransformer.data.shards",
    "prepare_corpus": "biotransformer.data.shards",
    "TokenBudgetBatchSampler": "biotransformer.data.sampler",
}

__all__ = list(_PUBLIC_NAMES)


def __getattr__(name: str) -> Any:
    module_name = _PUBLIC_NAMES.get(name)
    if module_name is None:
        raise AttributeError(f"module 'biotransformer.data' has no attribute {name!r}")
    return getattr(importlib.import_module(module_name), name)
