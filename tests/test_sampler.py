"""TokenBudgetBatchSampler: budgets, determinism, resume, and rank sharding."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from biotransformer.data.sampler import TokenBudgetBatchSampler
from biotransformer.errors import ConfigError


@pytest.fixture
def lengths() -> np.ndarray:
    return np.random.default_rng(1).integers(5, 300, size=1000)


def _flatten(batches) -> list[int]:
    return [i for batch in batches for i in batch]


def test_budget_never_exceeded_and_every_index_once(lengths):
    sampler = TokenBudgetBatchSampler(lengths, 1024, seed=3)
    batches = list(sampler)
    assert len(batches) == len(sampler)
    for batch in batches:
        assert len(batch) * lengths[batch].max() <= 1024
    assert sorted(_flatten(batches)) == list(range(len(lengths)))


def test_batches_are_length_buckets_and_little_padding(lengths):
    batches = list(TokenBudgetBatchSampler(lengths, 2048, seed=0))
    real = sum(lengths[b].sum() for b in batches)
    padded = sum(len(b) * lengths[b].max() for b in batches)
    assert real / padded > 0.95


def test_deterministic_per_epoch_and_different_across_epochs(lengths):
    a = TokenBudgetBatchSampler(lengths, 1024, seed=5)
    b = TokenBudgetBatchSampler(lengths, 1024, seed=5)
    assert list(a) == list(b)
    first = list(a)
    a.set_epoch(1)
    assert list(a) != first
    assert len(list(a)) == len(first)


def test_no_shuffle_yields_length_order(lengths):
    batches = list(TokenBudgetBatchSampler(lengths, 1024, shuffle=False))
    flat = _flatten(batches)
    assert list(lengths[flat]) == sorted(lengths)


def test_resume_mid_epoch_continues_exactly(lengths):
    sampler = TokenBudgetBatchSampler(lengths, 1024, seed=2)
    sampler.set_epoch(4)
    full = list(sampler)
    iterator = iter(sampler)
    for _ in range(7):
        next(iterator)
    state = sampler.state_dict()
    assert state == {"seed": 2, "epoch": 4, "batches_done": 7}

    resumed = TokenBudgetBatchSampler(lengths, 1024, seed=2)
    resumed.load_state_dict(state)
    assert list(resumed) == full[7:]
    assert list(resumed) == full  # the skip applies to one iteration only


def test_resume_with_other_seed_is_refused(lengths):
    sampler = TokenBudgetBatchSampler(lengths, 1024, seed=2)
    with pytest.raises(ConfigError, match="seed"):
        sampler.load_state_dict({"seed": 9, "epoch": 0, "batches_done": 0})


@pytest.mark.parametrize("num_replicas", [2, 3])
def test_ranks_are_disjoint_equal_and_cover_everything(lengths, num_replicas):
    per_rank = []
    for rank in range(num_replicas):
        sampler = TokenBudgetBatchSampler(
            lengths, 1024, seed=7, num_replicas=num_replicas, rank=rank
        )
        sampler.set_epoch(2)
        per_rank.append(list(sampler))
    assert len({len(batches) for batches in per_rank}) == 1
    sets = [set(_flatten(batches)) for batches in per_rank]
    for i in range(num_replicas):
        for j in range(i + 1, num_replicas):
            assert not sets[i] & sets[j]
    assert sorted(_flatten(b for batches in per_rank for b in batches)) == list(range(len(lengths)))


def test_odd_batch_count_is_split_not_repeated():
    lengths = [10] * 30  # 3 batches of 10 at a budget of 100
    ranks = [list(TokenBudgetBatchSampler(lengths, 100, num_replicas=2, rank=r)) for r in range(2)]
    assert len(ranks[0]) == len(ranks[1]) == 2
    assert sorted(_flatten(ranks[0] + ranks[1])) == list(range(30))


def test_drop_last_drops_the_remainder():
    lengths = [10] * 30
    ranks = [
        list(TokenBudgetBatchSampler(lengths, 100, num_replicas=2, rank=r, drop_last=True))
        for r in range(2)
    ]
    assert len(ranks[0]) == len(ranks[1]) == 1
    assert len(set(_flatten(ranks[0] + ranks[1]))) == 20


def test_fewer_samples_than_ranks_repeat():
    ranks = [list(TokenBudgetBatchSampler([4], 8, num_replicas=3, rank=r)) for r in range(3)]
    assert ranks == [[[0]], [[0]], [[0]]]


def test_too_small_budget_is_a_config_error():
    with pytest.raises(ConfigError, match="max_tokens 50 is smaller than the longest"):
        TokenBudgetBatchSampler([10, 60], 50)


def test_accelerate_prepare_would_shard_again(lengths):
    """Documents why the training loop keeps this sampler out of ``accelerator.prepare``.

    ``prepare()`` wraps a DataLoader's batch sampler in ``BatchSamplerShard``; with two
    processes, rank 0 would then see only every other one of its own batches.
    """
    from accelerate.data_loader import prepare_data_loader

    sampler = TokenBudgetBatchSampler(lengths, 1024, num_replicas=2, rank=0)
    loader = DataLoader(
        torch.arange(len(lengths)), batch_sampler=sampler, collate_fn=lambda b: list(b)
    )
    ours = [[int(i) for i in batch] for batch in loader]
    prepared = prepare_data_loader(loader, num_processes=2, process_index=0)
    theirs = [[int(i) for i in batch] for batch in prepared]
    assert len(theirs) < len(ours)
    assert set(_flatten(theirs)) < set(_flatten(ours))
