"""The training order: which images each process trains on, batch by batch, resumable mid-epoch.

Every epoch is a fresh permutation drawn from (seed, epoch) alone, split between the processes as
torch's DistributedSampler does, so a run resumed mid-epoch continues with the very batches it would
have seen. Each batch carries its own seed for the random draws made while it is loaded (a bag's
positive, a cached view): those draws do not depend on how far the data loader had read ahead when
the run stopped.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import Sampler


class SeededBatch(list):
    """A batch's indices, with `seed`: the seed of the random draws made while loading it."""

    def __init__(self, indices: list[int], seed: int):
        super().__init__(indices)
        self.seed = seed


def batch_generator(indices: list[int]) -> torch.Generator | None:
    """A generator for the random draws of loading `indices` (its own seed), or None: torch's global one."""
    seed = getattr(indices, "seed", None)
    return None if seed is None else torch.Generator().manual_seed(seed)


class EpochBatches(Sampler[SeededBatch]):
    """This process's batches of one epoch of `size` samples, resumable within the epoch.

    Full batches only unless `drop_last` is False (then a last, smaller batch too). Lightning calls
    `set_epoch` at each epoch start; `resume(epoch, batches)` skips the batches an interrupted run had
    trained on in that epoch.
    """

    def __init__(self, size: int, batch_size: int, seed: int, rank: int = 0, processes: int = 1,
                 drop_last: bool = True):
        if not 0 <= rank < processes:
            raise ValueError(f"rank {rank} of {processes} processes")
        self.size, self.batch_size, self.seed, self.drop_last = size, batch_size, seed, drop_last
        self.rank, self.processes = rank, processes
        self.epoch, self.skip = 0, 0  # skip: batches of `epoch` already trained on

    @property
    def sampler(self) -> EpochBatches:
        """Itself: at each epoch start Lightning calls `set_epoch` on the `sampler` of a loader's batch sampler."""
        return self

    def __len__(self) -> int:
        """Batches per epoch for this process (the whole epoch, also when resumed within it)."""
        share = self.size // self.processes
        return share // self.batch_size if self.drop_last else -(-share // self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        """Start `epoch` (from its first batch, unless it is the epoch a resume stopped in)."""
        if epoch != self.epoch:
            self.epoch, self.skip = epoch, 0

    def resume(self, epoch: int, batches: int) -> None:
        """Continue `epoch` after its first `batches` batches."""
        self.epoch, self.skip = epoch, batches

    def __iter__(self) -> Iterator[SeededBatch]:
        order = torch.randperm(self.size, generator=torch.Generator().manual_seed(self._seed(0, rank=0)))
        share = order[self.rank:self.size - self.size % self.processes:self.processes]  # (size // processes,)
        for number in range(self.skip, len(self)):
            indices = share[number * self.batch_size:(number + 1) * self.batch_size].tolist()
            yield SeededBatch(indices, self._seed(1 + number, self.rank))

    def _seed(self, stream: int, rank: int) -> int:
        """A 63-bit seed of this epoch's `stream` (0: the permutation, the same in every process; 1 + b: batch b)."""
        words = (self.seed % 2**32, self.epoch, rank, stream)
        return int(np.random.SeedSequence(words).generate_state(1, np.uint64)[0]) >> 1
