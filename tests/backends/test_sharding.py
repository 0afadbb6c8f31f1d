"""The DataModule's own DDP sharding: every row once, equal batch counts, global batch."""

from __future__ import annotations

import numpy as np
import pytest

from cvr.backends.distributed import gather_concat, is_main_process
from cvr.data.datamodule import SliceBatches, block_starts


@pytest.mark.parametrize("rows", [1, 7, 100, 101, 4097])
@pytest.mark.parametrize("world", [1, 2, 3])
@pytest.mark.parametrize("batch", [1, 4, 64])
def test_every_row_is_in_exactly_one_process_share_of_one_block(rows, world, batch):
    if rows < world or batch < world:
        pytest.skip("fewer rows (or a smaller global batch) than processes is refused")
    ids = np.arange(rows, dtype=np.int32).reshape(-1, 1)
    labels = np.zeros(rows, np.float32)
    shards = [SliceBatches(ids, labels, batch, rank, world) for rank in range(world)]
    counts = {len(s) for s in shards}
    assert len(counts) == 1  # DDP's collectives need the same number of batches everywhere
    seen = []
    for b in range(len(shards[0])):
        parts = [s[b][0].numpy().ravel() for s in shards]
        assert all(len(p) >= 1 for p in parts)
        block = np.concatenate(parts)
        # One step of W processes trains exactly one contiguous block, in rank order.
        assert np.array_equal(block, np.arange(block[0], block[0] + len(block)))
        seen.append(block)
    assert np.array_equal(np.concatenate(seen), np.arange(rows))


def test_a_global_batch_smaller_than_the_world_is_refused():
    with pytest.raises(ValueError, match="global batch"):
        SliceBatches(np.zeros((8, 1), np.int32), np.zeros(8, np.float32), 1, 0, 2)


def test_a_last_block_shorter_than_the_world_joins_the_one_before():
    assert block_starts(9, 4, world_size=1).tolist() == [0, 4, 8, 9]
    assert block_starts(9, 4, world_size=2).tolist() == [0, 4, 9]
    assert block_starts(10, 4, world_size=2).tolist() == [0, 4, 8, 10]


def test_one_process_shards_are_the_old_contiguous_batches():
    ids = np.arange(10, dtype=np.int32).reshape(-1, 1)
    batches = SliceBatches(ids, np.zeros(10, np.float32), 4)
    assert [batches[b][0].numpy().ravel().tolist() for b in range(len(batches))] == [
        [0, 1, 2, 3],
        [4, 5, 6, 7],
        [8, 9],
    ]


def test_without_a_process_group_gather_returns_its_input_and_rank_zero_is_main(monkeypatch):
    a, b = np.arange(3), np.ones(3)
    assert gather_concat(a, b) == (a, b)
    for name in ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID"):
        monkeypatch.delenv(name, raising=False)
    assert is_main_process()
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert not is_main_process()


def test_parameter_checksum_is_the_float64_sum_and_sees_a_moved_or_swapped_value():
    import torch

    from cvr.backends.distributed import parameter_checksum
    from cvr.models.ctr import FFM

    torch.manual_seed(0)
    model = FFM([5, 3, 8], dim=2)
    reference = sum(
        float(p.detach().double().sum()) + 1e-3 * i * float(p.detach().double().abs().sum())
        for i, p in enumerate(model.parameters(), start=1)
    )
    assert parameter_checksum(model) == pytest.approx(reference, rel=1e-12)
    before = parameter_checksum(model)
    with torch.no_grad():
        model.bias += 1e-3
    assert parameter_checksum(model) != before
