"""Pretraining and fine-tuning data: HDF5 shards, the masking collator, token-budget batches."""

from biotransformer.data.collator import MaskingCollator, PaddingCollator
from biotransformer.data.sampler import TokenBudgetBatchSampler
from biotransformer.data.shards import PrepareSummary, ShardDataset, prepare_corpus

__all__ = [
    "MaskingCollator",
    "PaddingCollator",
    "PrepareSummary",
    "ShardDataset",
    "TokenBudgetBatchSampler",
    "prepare_corpus",
]
