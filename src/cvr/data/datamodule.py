"""Batches from an EncodedStore as contiguous slices of memory-mapped arrays.

Training order is block-shuffled: the rows are cut into blocks of `batch_size` consecutive rows and
the order of the blocks is permuted each epoch from (seed, epoch). Every batch is then one
contiguous slice of the int32 id array: one copy per batch, no per-row Python.

Under DDP (`trainer=ddp`) every process walks the same block order and takes its own contiguous
part of each block (`SliceBatches(rank=, world_size=)`): a step of W processes trains exactly
the rows of one process's step, `batch_size` is the global batch, every row of a split is seen
exactly once per epoch (no DistributedSampler padding), and every process has the same number
of batches, as DDP's collectives need.
"""

from __future__ import annotations

from collections.abc import Iterator

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from cvr.data.store import EncodedStore


def block_starts(rows: int, batch_size: int, world_size: int = 1) -> np.ndarray:
    """First row of each block of `batch_size` rows, plus `rows` at the end: int64 (blocks + 1,).

    A last block shorter than `world_size` rows is merged into the one before, so that every
    process's share of every block has at least one row.
    """
    starts = np.arange(0, rows, batch_size, dtype=np.int64)
    if len(starts) > 1 and rows - starts[-1] < world_size:
        starts = starts[:-1]
    return np.append(starts, rows)


class SliceBatches(Dataset):
    """Item b is this process's part of the b-th contiguous block of `batch_size` rows:
    (ids int32 (n, F), labels float32 (n,)); with one process, the whole block."""

    def __init__(
        self,
        ids: np.ndarray,
        labels: np.ndarray,
        batch_size: int,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside [0, {world_size})")
        if batch_size < world_size:
            raise ValueError(
                f"datamodule.batch_size={batch_size} is the global batch: it needs at least one "
                f"row for each of the {world_size} processes"
            )
        self.ids = ids
        self.labels = labels
        self.batch_size = batch_size
        self.rank = rank
        self.world_size = world_size
        self.starts = block_starts(len(ids), batch_size, world_size)

    def __len__(self) -> int:
        return len(self.starts) - 1

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        block_start, block_stop = int(self.starts[index]), int(self.starts[index + 1])
        # Split like np.array_split: the first (size % W) parts get one row more.
        size, world = block_stop - block_start, self.world_size
        start = block_start + self.rank * (size // world) + min(self.rank, size % world)
        stop = start + size // world + (1 if self.rank < size % world else 0)
        # One copy out of the memory map: the batch owns writable memory.
        ids = torch.from_numpy(np.array(self.ids[start:stop], dtype=np.int32))
        labels = torch.from_numpy(np.array(self.labels[start:stop], dtype=np.float32))
        return ids, labels


class BlockOrder(Sampler[int]):
    """A permutation of block indices, reseeded from (seed, epoch) each epoch."""

    def __init__(self, num_blocks: int, seed: int, shuffle: bool = True) -> None:
        self.num_blocks = num_blocks
        self.seed = seed
        self.shuffle = shuffle
        self.epoch = 0
        self._skip = 0

    def skip_next(self, batches: int) -> None:
        """Drop the first `batches` blocks of the next epoch (resuming mid-epoch)."""
        self._skip = batches

    def set_epoch(self, epoch: int) -> None:  # called by Lightning at the start of each epoch
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_blocks

    def __iter__(self) -> Iterator[int]:
        # A generator: the order is drawn at the first batch, after Lightning has set the epoch
        # (it creates the iterator before calling set_epoch on a resumed run).
        if self.shuffle:
            order = np.random.default_rng([self.seed, self.epoch]).permutation(self.num_blocks)
        else:
            order = np.arange(self.num_blocks)
        skip, self._skip = self._skip, 0
        yield from order[skip:].tolist()


class StoreDataModule(L.LightningDataModule):
    """Train/val/test loaders over one store and one label column."""

    def __init__(
        self,
        store: EncodedStore,
        label: str | None = None,
        batch_size: int = 4096,
        eval_batch_size: int = 65536,
        seed: int = 0,
        shuffle: bool = True,
    ) -> None:
        super().__init__()
        if batch_size < 1 or eval_batch_size < 1:
            raise ValueError("datamodule.batch_size and eval_batch_size must be >= 1")
        self.store = store
        self.label = label
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.seed = seed
        self.shuffle = shuffle

    def process(self) -> tuple[int, int]:
        """(rank, world size) of this process in the trainer (0, 1 without one)."""
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return 0, 1
        return int(trainer.global_rank), int(trainer.world_size)

    def batches(self, split: str, batch_size: int) -> SliceBatches:
        ids = self.store.ids(split)
        labels = self.store.labels(split, self.label)
        rank, world = self.process()
        if len(ids) < world:
            raise ValueError(
                f"store {self.store.path}: split {split!r} has {len(ids)} rows, fewer than the "
                f"{world} processes"
            )
        if len(ids) == 0:
            raise ValueError(f"store {self.store.path}: split {split!r} has no rows")
        return SliceBatches(ids, labels, batch_size, rank, world)

    def _loader(self, split: str, batch_size: int, shuffle: bool) -> DataLoader:
        batches = self.batches(split, batch_size)
        connector = getattr(getattr(self, "trainer", None), "_accelerator_connector", None)
        if batches.world_size > 1 and getattr(connector, "use_distributed_sampler", False):
            # Lightning would shard the already sharded blocks again: half the data, silently.
            raise ValueError(
                "trainer.use_distributed_sampler=true with more than one process: this "
                "DataModule shards batches itself; set trainer.use_distributed_sampler=false"
            )
        order = BlockOrder(len(batches), self.seed, shuffle)
        return DataLoader(batches, batch_size=None, sampler=order, num_workers=0)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", self.batch_size, self.shuffle)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", self.eval_batch_size, False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", self.eval_batch_size, False)
