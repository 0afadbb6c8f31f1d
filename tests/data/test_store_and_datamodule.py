import numpy as np
import pytest

from cvr.data.datamodule import StoreDataModule
from cvr.data.store import EncodedStore, StoreWriter
from cvr.ops.manifest import ManifestError


def make_store(path, rows=103, fields=3):
    writer = StoreWriter(path, fields, 1)
    ids = np.arange(rows * fields, dtype=np.int32).reshape(rows, fields)
    writer.append("train", ids[:50], np.arange(50) % 2)
    writer.append("train", ids[50:], np.arange(50, rows) % 2)
    writer.append("val", ids[:10], np.arange(10) % 2)
    writer.append("test", ids[:7], np.arange(7) % 2)
    meta = {"fingerprint": "x", "cardinalities": [rows * fields] * fields, "labels": ["click"]}
    meta["fields"] = [{"name": f"f{i}"} for i in range(fields)]
    return writer.finish(meta), ids


def test_store_round_trip_and_memory_map(tmp_path):
    store, ids = make_store(tmp_path / "s")
    assert isinstance(store.ids("train"), np.memmap)
    np.testing.assert_array_equal(store.ids("train"), ids)
    assert store.rows("train") == 103 and store.rows("test") == 7
    assert store.meta["splits"]["train"]["label_rates"][0] == pytest.approx(51 / 103)
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no temp dir left


def test_store_refuses_a_changed_array(tmp_path):
    store, _ = make_store(tmp_path / "s")
    path = store.path / "train.ids.npy"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ManifestError, match=r"train\.ids\.npy"):
        EncodedStore.open(store.path)


def test_failed_write_leaves_nothing(tmp_path):
    writer = StoreWriter(tmp_path / "s", 2, 1)
    writer.append("train", np.zeros((4, 2)), np.zeros(4))
    writer.abort()
    assert list(tmp_path.iterdir()) == []


def test_batches_are_contiguous_slices_covering_every_row_once(tmp_path):
    store, ids = make_store(tmp_path / "s")
    dm = StoreDataModule(store, batch_size=10, seed=3)
    loader = dm.train_dataloader()
    seen = []
    for batch_ids, labels in loader:
        first = int(batch_ids[0, 0]) // 3
        # Consecutive rows: the batch is one slice of the array.
        np.testing.assert_array_equal(batch_ids.numpy(), ids[first : first + len(batch_ids)])
        assert labels.dtype.is_floating_point
        seen.extend(range(first, first + len(batch_ids)))
    assert sorted(seen) == list(range(103))


def test_block_order_depends_on_seed_and_epoch_only(tmp_path):
    store, _ = make_store(tmp_path / "s")

    def order(seed, epoch):
        loader = StoreDataModule(store, batch_size=10, seed=seed).train_dataloader()
        loader.sampler.set_epoch(epoch)
        return [int(b[0][0, 0]) for b in loader]

    assert order(1, 0) == order(1, 0)
    assert order(1, 0) != order(1, 1)
    assert order(1, 0) != order(2, 0)


def test_eval_loaders_keep_file_order(tmp_path):
    store, ids = make_store(tmp_path / "s")
    dm = StoreDataModule(store, batch_size=4, eval_batch_size=4)
    got = np.concatenate([b[0].numpy() for b in dm.val_dataloader()])
    np.testing.assert_array_equal(got, ids[:10])


@pytest.mark.parametrize("chunk_rows", [1, 7, 50, 1000])
def test_rewrite_in_place_equals_writing_the_transformed_rows(tmp_path, chunk_rows):
    """A split's ids rewritten in place, chunk by chunk: the same files and digests as a store
    written with the final rows to begin with."""
    rows, fields = 103, 3
    ids = np.arange(rows * fields, dtype=np.int32).reshape(rows, fields)
    labels = np.arange(rows) % 2
    final = ids * 3 + 1
    direct = StoreWriter(tmp_path / "direct", fields, 1)
    direct.append("train", final, labels)
    direct.append("val", final[:5], labels[:5])
    writer = StoreWriter(tmp_path / "rewritten", fields, 1)
    writer.append("train", ids[:40], labels[:40])
    writer.append("train", ids[40:], labels[40:])
    writer.append("val", ids[:5], labels[:5])
    starts = []

    def transform(chunk, start):
        starts.append(start)
        np.testing.assert_array_equal(chunk, ids[start : start + len(chunk)])
        chunk *= 3
        chunk += 1

    writer.rewrite("train", "ids", transform, chunk_rows)
    writer.rewrite("val", "ids", lambda chunk, start: np.copyto(chunk, chunk * 3 + 1), chunk_rows)
    assert starts == list(range(0, rows, chunk_rows))
    meta = {"fingerprint": "x", "cardinalities": [1000] * fields, "labels": ["click"]}
    a, b = direct.finish(dict(meta)), writer.finish(dict(meta))
    assert a.meta["files"] == b.meta["files"]
    np.testing.assert_array_equal(EncodedStore.open(b.path).ids("train"), final)  # verified
    with pytest.raises(ValueError, match="no appended rows"):
        StoreWriter(tmp_path / "empty", fields, 1).rewrite("test", "ids", transform)


def test_a_failed_rewrite_leaves_nothing(tmp_path):
    writer = StoreWriter(tmp_path / "s", 2, 1)
    writer.append("train", np.zeros((9, 2), dtype=np.int32), np.zeros(9))

    def transform(chunk, start):
        if start >= 4:
            raise RuntimeError("remap failed")

    with pytest.raises(RuntimeError, match="remap failed"):
        writer.rewrite("train", "ids", transform, 4)
    writer.abort()
    assert list(tmp_path.iterdir()) == []
