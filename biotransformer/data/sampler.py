"""Batches filled up to a token budget: little compute is spent on padding.

Indices are sorted by length (ties shuffled per epoch), cut greedily into batches whose padded
size ``len(batch) * longest`` stays within ``max_tokens`` (as fair-esm's ``get_batch_indices``),
and the batches are shuffled. The same (seed, epoch) gives the same batches on every rank, and
each rank takes a disjoint share.

Every rank must take the same number of optimiser steps, or the ranks of a distributed run
wait on each other forever. So the number of batches is made a multiple of ``num_replicas``:
by splitting the largest batches in two (no sample dropped or repeated), or, with
``drop_last``, by dropping the last few batches. Only when there are fewer samples than ranks
are batches repeated.

Keep this sampler out of ``accelerator.prepare()``: Accelerate would shard the batches again,
and each rank would see only part of its share (``tests/test_sampler.py`` shows it).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from torch.utils.data import Sampler

from biotransformer.errors import ConfigError


class TokenBudgetBatchSampler(Sampler[list[int]]):
    """Yield lists of indices whose padded size ``len(batch) * longest <= max_tokens``."""

    def __init__(
        self,
        lengths: Sequence[int] | np.ndarray,
        max_tokens: int,
        *,
        shuffle: bool = True,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
        drop_last: bool = False,
    ) -> None:
        self.lengths = np.asarray(lengths, dtype=np.int64)
        if self.lengths.ndim != 1 or len(self.lengths) == 0:
            raise ConfigError("lengths: need a non-empty list of sequence lengths")
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ConfigError(
                f"rank {rank} / num_replicas {num_replicas}: need 0 <= rank < num_replicas"
            )
        longest = int(self.lengths.max())
        if max_tokens < longest:
            raise ConfigError(
                f"max_tokens {max_tokens} is smaller than the longest sequence ({longest} "
                "tokens). Fix: raise max_tokens or crop sequences to a shorter max_length"
            )
        self.max_tokens = int(max_tokens)
        self.shuffle = shuffle
        self.seed = seed
        self.num_replicas = num_replicas
        self.rank = rank
        self.drop_last = drop_last
        self.epoch = 0
        self._skip = 0
        self._yielded = 0
        self._num_batches: int | None = None

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch whose batches the next iteration yields."""
        self.epoch = epoch

    def global_batches(self) -> list[list[int]]:
        """All batches of the current epoch, in order, before the split across ranks."""
        rng = np.random.default_rng([self.seed, self.epoch])
        if self.shuffle:
            order = rng.permutation(len(self.lengths))
            order = order[np.argsort(self.lengths[order], kind="stable")]
        else:
            order = np.argsort(self.lengths, kind="stable")
        batches = self._fill(order)
        if self.shuffle:
            batches = [batches[i] for i in rng.permutation(len(batches))]
        return self._equalise(batches)

    def _fill(self, order: np.ndarray) -> list[list[int]]:
        batches: list[list[int]] = []
        current: list[int] = []
        longest = 0
        for index, length in zip(order.tolist(), self.lengths[order].tolist(), strict=True):
            if current and (len(current) + 1) * max(longest, length) > self.max_tokens:
                batches.append(current)
                current, longest = [], 0
            current.append(index)
            longest = max(longest, length)
        batches.append(current)
        return batches

    def _equalise(self, batches: list[list[int]]) -> list[list[int]]:
        missing = -len(batches) % self.num_replicas
        if missing == 0:
            return batches
        if self.drop_last and len(batches) >= self.num_replicas:
            return batches[: len(batches) - (self.num_replicas - missing)]
        for _ in range(missing):
            largest = max(range(len(batches)), key=lambda i: len(batches[i]))
            batch = batches[largest]
            if len(batch) < 2:
                break
            half = len(batch) // 2
            batches[largest : largest + 1] = [batch[:half], batch[half:]]
        repeats = -len(batches) % self.num_replicas
        return batches + [batches[i % len(batches)] for i in range(repeats)]

    def __iter__(self) -> Iterator[list[int]]:
        mine = self.global_batches()[self.rank :: self.num_replicas]
        skip, self._skip = self._skip, 0
        self._yielded = skip
        for batch in mine[skip:]:
            self._yielded += 1
            yield batch

    def __len__(self) -> int:
        """Batches per rank in one epoch (the same on every rank and in every epoch)."""
        if self._num_batches is None:
            self._num_batches = len(self.global_batches()) // self.num_replicas
        return self._num_batches

    def state_dict(self) -> dict[str, Any]:
        """Epoch and batches yielded so far on this rank, for a mid-epoch resume.

        A DataLoader with workers draws batches ahead of the training loop; a loop that
        resumes exactly should store its own count of finished steps as ``batches_done``.
        """
        return {"seed": self.seed, "epoch": self.epoch, "batches_done": self._yielded}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume: the next iteration continues epoch ``state['epoch']`` after its done batches."""
        if state.get("seed", self.seed) != self.seed:
            raise ConfigError(
                f"sampler state was saved with seed {state['seed']}, this sampler has seed "
                f"{self.seed}. Fix: resume with the same seed"
            )
        self.epoch = int(state["epoch"])
        self._skip = int(state["batches_done"])
