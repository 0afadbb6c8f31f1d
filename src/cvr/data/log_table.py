"""LogTable: Criteo winners' `floor(log(x)^2)` categories of float values -> provisional ids.

As `cvr.data.vocab.StringTable` for strings: ids 1..n in first-seen order, 0 for NaN, grown by
the caller when full; `values()` are the category keys (`value_rules.criteo_log_keys`).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from cvr.data.vocab import _mix


@njit(cache=True, nogil=True)
def _criteo_log_key(v):  # pragma: no cover
    # As value_rules.criteo_log_keys: 2 * code + 1 for `L` (v > 2), 2 * code for `V`.
    if v > 2:
        return np.int64(np.floor(np.log(v) ** 2)) * 2 + 1
    return np.int64(np.floor(max(v, -(2.0**61)))) * 2


@njit(cache=True, nogil=True)
def _encode_log(values, out, keys, slots, table_values, state, start, direct):  # pragma: no cover
    # direct[x]: the id of a small non-negative integer x seen before (0: not yet), so that
    # most values skip the logarithm and the probe.
    mask = np.uint64(len(keys) - 1)
    n_ids = state[0]
    for i in range(start, len(out)):
        x = values[i]
        if np.isnan(x):
            out[i] = 0
            continue
        small = -1
        if x >= 0 and x < len(direct):
            small = np.int64(x)
            if small != x:
                small = -1
            elif direct[small] != 0:
                out[i] = direct[small]
                continue
        v = _criteo_log_key(x)
        h = _mix(np.uint64(v))
        slot = h & mask
        found = 0
        while True:
            ident = slots[slot]
            if ident == 0:
                break
            if table_values[ident] == v:
                found = ident
                break
            slot = (slot + np.uint64(1)) & mask
        if found == 0:
            if (n_ids + 1) * 2 > len(keys) or n_ids + 2 > len(table_values):
                state[0] = n_ids
                return i
            n_ids += 1
            table_values[n_ids] = v
            keys[slot] = h
            slots[slot] = n_ids
            found = n_ids
        if small >= 0:
            direct[small] = found
        out[i] = found
    state[0] = n_ids
    return -1


@njit(cache=True, nogil=True)
def _rehash(keys, slots, new_keys, new_slots):  # pragma: no cover
    mask = np.uint64(len(new_keys) - 1)
    for j in range(len(keys)):
        ident = slots[j]
        if ident == 0:
            continue
        slot = keys[j] & mask
        while new_slots[slot] != 0:
            slot = (slot + np.uint64(1)) & mask
        new_keys[slot] = keys[j]
        new_slots[slot] = ident


class LogTable:
    """criteo_log categories of float values -> provisional ids 1..n in first-seen order (0 for
    NaN); `values()` are the category keys (`value_rules.criteo_log_keys`)."""

    def __init__(self, capacity: int = 1 << 8) -> None:
        self.keys = np.zeros(capacity, dtype=np.uint64)
        self.slots = np.zeros(capacity, dtype=np.int32)
        self.table_values = np.zeros(capacity + 1, dtype=np.int64)
        self.state = np.zeros(1, dtype=np.int64)
        self.direct = np.zeros(1 << 16, dtype=np.int32)  # ids of small integers, by value

    def __len__(self) -> int:
        return int(self.state[0])

    def encode(self, values: np.ndarray) -> np.ndarray:
        """int32 (n,) provisional ids of float values (NaN -> 0)."""
        out = np.empty(len(values), dtype=np.int32)
        values = np.ascontiguousarray(values, dtype=np.float64)
        start = 0
        while True:
            start = _encode_log(
                values,
                out,
                self.keys,
                self.slots,
                self.table_values,
                self.state,
                start,
                self.direct,
            )
            if start < 0:
                return out
            if (len(self) + 1) * 2 > len(self.keys):
                keys = np.zeros(len(self.keys) * 2, dtype=np.uint64)
                slots = np.zeros(len(self.keys) * 2, dtype=np.int32)
                _rehash(self.keys, self.slots, keys, slots)
                self.keys, self.slots = keys, slots
            if len(self) + 2 > len(self.table_values):
                self.table_values = np.concatenate(
                    [self.table_values, np.zeros_like(self.table_values)]
                )

    def values(self) -> np.ndarray:
        """int64 (n,): the key of provisional id i + 1 at position i."""
        return self.table_values[1 : len(self) + 1].copy()
