"""A resumable, rank-sharded batch sampler, the engine's only source of sample order, and the DataLoader it drives
(:func:`build_loader`)."""

from __future__ import annotations

from typing import Any, Callable, Iterator, List, Optional, Tuple

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from ..hardware import default_workers


class ResumableBatchSampler(Sampler[List[int]]):
    """Batches of indices for one rank: a permutation seeded by ``(seed, epoch)`` (or the identity when
    ``shuffle`` is False), padded by wrapping to a multiple of ``world_size`` and dealt out rank by rank, as
    :class:`torch.utils.data.DistributedSampler`. ``set_epoch(epoch, start_batch)`` skips the first
    ``start_batch`` batches, so a run resumed mid-epoch sees exactly the batches it had not seen.
    Uses no global RNG, so iterating never disturbs the states saved in checkpoints."""

    def __init__(self, num_samples: int, batch_size: int, *, shuffle: bool = True, seed: int = 0,
                 rank: int = 0, world_size: int = 1, drop_last: bool = True) -> None:
        if num_samples < 1:
            raise ValueError("the data set is empty")
        if batch_size < 1:
            raise ValueError(f"batch size must be >= 1, got {batch_size}")
        self.num_samples, self.batch_size, self.shuffle, self.seed = num_samples, batch_size, shuffle, seed
        self.rank, self.world_size, self.drop_last = rank, world_size, drop_last
        self.epoch, self.start_batch = 0, 0
        self.per_rank = -(-num_samples // world_size)
        if drop_last and self.per_rank < batch_size:
            raise ValueError(f"{num_samples} samples over {world_size} process(es) give fewer than one batch "
                             f"of {batch_size}; lower the batch size")

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Select the epoch's order and the first batch to yield."""
        self.epoch, self.start_batch = epoch, start_batch

    def __len__(self) -> int:
        """Batches per epoch (not counting the skipped ones)."""
        return self.per_rank // self.batch_size if self.drop_last else -(-self.per_rank // self.batch_size)

    def __iter__(self) -> Iterator[List[int]]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            order = torch.randperm(self.num_samples, generator=g)
        else:
            order = torch.arange(self.num_samples)
        total = self.per_rank * self.world_size
        if total > self.num_samples:
            order = torch.cat([order, order[: total - self.num_samples]])
        mine = order[self.rank::self.world_size].tolist()
        for b in range(self.start_batch, len(self)):
            yield mine[b * self.batch_size:(b + 1) * self.batch_size]


def build_loader(dataset: Dataset, batch_size: int, *, train: bool, seed: int = 0, rank: int = 0,
                 world_size: int = 1, workers: Optional[int] = 0, collate_fn: Optional[Callable[[Any], Any]] = None,
                 device: Optional[torch.device] = None) -> Tuple[DataLoader, ResumableBatchSampler]:
    """A DataLoader over ``dataset`` driven by a :class:`ResumableBatchSampler` (shuffled and dropping the
    last partial batch when ``train``; in order and complete otherwise). Its own generator keeps worker seeding
    off torch's global RNG.

    Args:
        dataset: a map-style data set.
        batch_size: images per batch (per process).
        train: shuffle and drop the last partial batch.
        seed: the sampler's and the workers' seed.
        rank: this process's rank (its shard of each epoch).
        world_size: the number of processes.
        workers: DataLoader worker processes; None: :func:`res2net.hardware.default_workers`.
        collate_fn: the DataLoader's collate (None: torch's default).
        device: where the batches go (memory is pinned for CUDA).

    Returns:
        The loader and its sampler (``sampler.set_epoch`` positions it).
    """
    workers = default_workers() if workers is None else workers
    sampler = ResumableBatchSampler(len(dataset), batch_size, shuffle=train, seed=seed,  # type: ignore[arg-type]
                                    rank=rank, world_size=world_size, drop_last=train)
    loader = DataLoader(dataset, batch_sampler=sampler, num_workers=workers, collate_fn=collate_fn,
                        pin_memory=device is not None and device.type == "cuda",
                        generator=torch.Generator().manual_seed(seed))
    return loader, sampler
