"""How one field's raw values become categories or ids, apart from any vocabulary.

- the stable string hash of `hash_buckets` fields: 64-bit FNV-1a over the UTF-8 bytes, then the
  splitmix64 finalizer (`mix64`), the same in every process and on every platform;
- the Criteo winners' `criteo_log` rule for numeric fields (`L{floor(log(v)^2)}` for v > 2,
  `V{floor(v)}` otherwise);
- `quantile` buckets from a bounded, deterministic stride sample of the train values.

`cvr.data.preprocess` composes these into a Preprocessor; the one-pass store build
(`cvr.data.encode`) and the Dask engine use them directly.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from cvr.data.arrow_numpy import to_numpy

# --- stable hashing --------------------------------------------------------------------------

_FNV_OFFSET = np.uint64(0xCBF29CE484222325)
_FNV_PRIME = np.uint64(0x100000001B3)


def mix64(z: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer over uint64 (wrapping arithmetic); a bijection that mixes all bits."""
    z = np.asarray(z, dtype=np.uint64)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def stable_hash(strings: pa.Array) -> np.ndarray:
    """uint64 (n,): mix64(FNV-1a-64(UTF-8 bytes)) of each string (nulls hash like "").

    Vectorized over strings, one numpy step per byte position (category strings are short).
    """
    strings = pc.fill_null(strings.cast(pa.large_string()), "")
    n = len(strings)
    bufs = strings.buffers()
    offsets = np.frombuffer(bufs[1], dtype=np.int64)[strings.offset : strings.offset + n + 1]
    data = np.frombuffer(bufs[2], dtype=np.uint8) if bufs[2] is not None else np.zeros(0, np.uint8)
    starts = offsets[:-1]
    lengths = np.diff(offsets)
    # Longest first, so the strings still being hashed at byte j are a prefix: slices, no masks.
    order = np.argsort(-lengths, kind="stable")
    starts, lengths = starts[order], lengths[order]
    h = np.full(n, _FNV_OFFSET, dtype=np.uint64)
    active = n
    for j in range(int(lengths[0]) if n else 0):
        while active and lengths[active - 1] <= j:
            active -= 1
        h[:active] = (h[:active] ^ data[starts[:active] + j]) * _FNV_PRIME
    out = np.empty(n, dtype=np.uint64)
    out[order] = mix64(h)
    return out


_MASK64 = (1 << 64) - 1


def stable_hash_one(text: str) -> int:
    """`stable_hash` of one string, in plain Python ints: no array set-up, for single records.

    Equals `int(stable_hash(pa.array([text]))[0])` (a property test holds the two equal).
    """
    h = int(_FNV_OFFSET)
    for byte in text.encode("utf-8"):
        h = ((h ^ byte) * int(_FNV_PRIME)) & _MASK64
    h = ((h ^ (h >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    h = ((h ^ (h >> 27)) * 0x94D049BB133111EB) & _MASK64
    return h ^ (h >> 31)


# --- numeric rules -----------------------------------------------------------------------------

# Quantile boundaries come from at most this many train values per field (a deterministic
# stride sample), so fitting needs bounded memory whatever the file size.
QUANTILE_SAMPLE = 1 << 20


def criteo_log_keys(values: np.ndarray) -> np.ndarray:
    """int64 (n,) category key 2 * code + (1 for `L`, 0 for `V`) of float64 values; NaN -> key 0."""
    v = np.where(np.isnan(values), 0.0, values)
    big = v > 2
    # Clip so that 2 * floor(v) fits int64: values below -2^61 share one category.
    small = np.floor(np.maximum(v, -(2.0**61)))
    code = np.where(big, np.floor(np.log(np.where(big, v, 3.0)) ** 2), small).astype(np.int64)
    return code * 2 + big


def criteo_log_name(key: int) -> str:
    """The category string of a `criteo_log_keys` key."""
    return ("L" if key & 1 else "V") + str(key >> 1)


def criteo_log_categories(values: np.ndarray) -> pa.Array:
    """Category strings for float64 values (NaN = missing -> null) by the criteo_log rule."""
    missing = np.isnan(values)
    # There are few distinct categories: name each once, then spread the names by index.
    keys, inverse = np.unique(criteo_log_keys(values), return_inverse=True)
    names = pa.array([criteo_log_name(k) for k in keys.tolist()], pa.string())
    return names.take(pa.array(inverse.reshape(-1), type=pa.int64(), mask=missing))


def quantile_ids(boundaries: list[float] | None, values: np.ndarray) -> np.ndarray:
    """int64 (n,) quantile-bucket ids of float64 values: 1 + bucket, 0 for NaN (missing)."""
    ids = 1 + np.searchsorted(np.asarray(boundaries or [], dtype=np.float64), values, side="left")
    return np.where(np.isnan(values), 0, ids)


def numbers_of(col: pa.Array) -> np.ndarray:
    """float64 (n,) with NaN for null."""
    return to_numpy(col if col.type == pa.float64() else col.cast(pa.float64()))


class StrideSample:
    """A deterministic stride sample of at most `cap` values (global indices % stride == 0)."""

    def __init__(self, cap: int) -> None:
        self.cap, self.stride, self.seen = cap, 1, 0
        self.parts: list[np.ndarray] = []
        self.size = 0

    def add(self, values: np.ndarray) -> None:
        kept = values[(self.seen + np.arange(len(values))) % self.stride == 0]
        self.seen += len(values)
        self.parts.append(kept)
        self.size += len(kept)
        while self.size > self.cap:
            # Keeping every other kept value is exactly the sample with twice the stride.
            merged = self.values[::2]
            self.parts, self.size, self.stride = [merged], len(merged), self.stride * 2

    @property
    def values(self) -> np.ndarray:
        return np.concatenate(self.parts) if self.parts else np.zeros(0, dtype=np.float64)


def quantile_boundaries(values: np.ndarray, buckets: int) -> list[float]:
    if len(values) == 0 or buckets < 2:
        return []
    levels = np.arange(1, buckets) / buckets
    return np.unique(np.quantile(values, levels)).astype(float).tolist()
