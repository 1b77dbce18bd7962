"""Pretraining and fine-tuning data: HDF5 shards, the masking collator, token-budget batches."""

from biotransformer.data.sampler import TokenBudgetBatchSampler

__all__ = ["TokenBudgetBatchSampler"]
