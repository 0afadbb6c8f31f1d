"""Batches from an EncodedStore as contiguous slices of memory-mapped arrays.

Training order is block-shuffled: the rows are cut into blocks of `batch_size` consecutive rows and
the order of the blocks is permuted each epoch from (seed, epoch). Every batch is then one
contiguous slice of the int32 id array: one copy per batch, no per-row Python.
"""

from __future__ import annotations

from collections.abc import Iterator

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from cvr.data.store import EncodedStore


class SliceBatches(Dataset):
    """Item b is the b-th contiguous batch: (ids int32 (n, F), labels float32 (n,))."""

    def __init__(self, ids: np.ndarray, labels: np.ndarray, batch_size: int) -> None:
        self.ids = ids
        self.labels = labels
        self.batch_size = batch_size

    def __len__(self) -> int:
        return -(-len(self.ids) // self.batch_size)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        start = index * self.batch_size
        stop = start + self.batch_size
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

    def batches(self, split: str, batch_size: int) -> SliceBatches:
        ids = self.store.ids(split)
        labels = self.store.labels(split, self.label)
        if len(ids) == 0:
            raise ValueError(f"store {self.store.path}: split {split!r} has no rows")
        return SliceBatches(ids, labels, batch_size)

    def _loader(self, split: str, batch_size: int, shuffle: bool) -> DataLoader:
        batches = self.batches(split, batch_size)
        order = BlockOrder(len(batches), self.seed, shuffle)
        return DataLoader(batches, batch_size=None, sampler=order, num_workers=0)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", self.batch_size, self.shuffle)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", self.eval_batch_size, False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", self.eval_batch_size, False)
