"""Arrow arrays over numpy arrays and string lists, built from their buffers.

`pa.array()` asks pandas whether its argument is a pandas object, importing pandas (~0.3 s) on
the first call in a process, even for a plain list or ndarray. A store build never needs pandas,
so its per-batch conversions go through here instead: zero-copy for contiguous numeric arrays.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa


def _validity(mask: np.ndarray | None, n: int) -> tuple[pa.Buffer | None, int]:
    """Arrow's validity bitmap (1 = valid, least significant bit first) from a null mask."""
    if mask is None:
        return None, 0
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != (n,):
        raise ValueError(f"mask has shape {mask.shape}, expected ({n},)")
    nulls = int(np.count_nonzero(mask))
    if not nulls:
        return None, 0
    return pa.py_buffer(np.packbits(~mask, bitorder="little")), nulls


def from_numpy(
    values: np.ndarray, type: pa.DataType | None = None, mask: np.ndarray | None = None
) -> pa.Array:
    """A 1-d numeric or boolean ndarray as an Arrow array, null where `mask` is True.

    Equals `pa.array(values, type=type, mask=mask)` (a test holds them equal); `type`, when
    given, must be the array's own numpy type (no casts happen here).
    """
    values = np.asarray(values)
    if values.ndim != 1:
        raise ValueError(f"expected a 1-d array, got shape {values.shape}")
    own = pa.from_numpy_dtype(values.dtype)
    if type is not None and type != own:
        raise TypeError(f"values are {own}, not {type}")
    n = len(values)
    validity, nulls = _validity(mask, n)
    if values.dtype == np.bool_:
        data = pa.py_buffer(np.packbits(values, bitorder="little"))
    else:
        data = pa.py_buffer(np.ascontiguousarray(values))
    return pa.Array.from_buffers(own, n, [validity, data], null_count=nulls)


def from_strings(items: Sequence[str]) -> pa.Array:
    """A list of str as an Arrow string array (equals `pa.array(items, pa.string())`)."""
    encoded = [s.encode() for s in items]
    offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum(np.fromiter(map(len, encoded), dtype=np.int64, count=len(encoded)))
    if offsets[-1] >= 2**31:
        raise ValueError(f"{offsets[-1]} bytes of strings: more than a string array holds")
    offsets = offsets.astype(np.int32)
    return pa.Array.from_buffers(
        pa.string(), len(encoded), [None, pa.py_buffer(offsets), pa.py_buffer(b"".join(encoded))]
    )


_NUMBER_TYPES = "int8 int16 int32 int64 uint8 uint16 uint32 uint64 float32 float64".split()
_NUMPY_TYPES = {pa.from_numpy_dtype(np.dtype(t)): np.dtype(t) for t in _NUMBER_TYPES}


def to_numpy(values: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """A numeric or boolean Arrow array as numpy: a read-only view where there are no nulls,
    NaN for null in float arrays.

    Equals `values.to_numpy(zero_copy_only=False)`; nulls in other types, and other types, go
    through that.
    """
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    n, start = len(values), values.offset
    dtype = _NUMPY_TYPES.get(values.type)
    if values.null_count:
        if dtype is None or dtype.kind != "f":
            return values.to_numpy(zero_copy_only=False)
        valid = np.unpackbits(
            np.frombuffer(values.buffers()[0], dtype=np.uint8), count=start + n, bitorder="little"
        )[start:]
        data = np.frombuffer(values.buffers()[1], dtype, count=n, offset=start * dtype.itemsize)
        return np.where(valid.view(bool), data, np.nan).astype(dtype, copy=False)
    if n == 0 and dtype is not None:
        return np.empty(0, dtype=dtype)
    if values.type == pa.bool_():
        bits = np.frombuffer(values.buffers()[1], dtype=np.uint8)
        return np.unpackbits(bits, count=start + n, bitorder="little")[start:].view(bool)
    if dtype is None:
        return values.to_numpy(zero_copy_only=False)
    return np.frombuffer(values.buffers()[1], dtype=dtype, count=n, offset=start * dtype.itemsize)
