"""Provisional ids to final ids: grouped by split in one compiled pass over the rows, or in place.

Once the vocabulary is fitted, `cvr.data.encode` turns every column's provisional ids into the
Preprocessor's ids through a per-column remap table (`final_ids`).
"""

from __future__ import annotations

import numpy as np
from numba import njit


def remap_table(width: int, remaps: dict[int, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(every remap concatenated, offsets (width,): where column j's starts, -1 for none)."""
    offsets = np.full(width, -1, dtype=np.int64)
    parts, at = [], 0
    for j, remap in remaps.items():
        offsets[j] = at
        parts.append(remap.astype(np.int32, copy=False))
        at += len(remap)
    table = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int32)
    return table, offsets


@njit(cache=True, nogil=True)
def _remap_split(
    ids, labels, codes, table, offsets, starts, out_ids, out_labels
):  # pragma: no cover
    # Row i goes to out row starts[codes[i]]++ (its split's block, file order kept), remapped.
    for i in range(ids.shape[0]):
        c = codes[i]
        r = starts[c]
        starts[c] = r + 1
        for j in range(ids.shape[1]):
            v = ids[i, j]
            out_ids[r, j] = table[offsets[j] + v] if offsets[j] >= 0 else v
        for q in range(labels.shape[1]):
            out_labels[r, q] = labels[i, q]


def remap_split_rows(
    ids: np.ndarray,
    labels: np.ndarray,
    codes: np.ndarray,
    remaps: dict[int, np.ndarray],
    parts: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ids, labels, bounds (parts + 1,)): ids[:, j] = remaps[j][ids[:, j]] for each j in
    `remaps`, the rows grouped by their code 0..parts-1 in one pass, file order kept within a
    group; group c is rows bounds[c]:bounds[c + 1]."""
    table, offsets = remap_table(ids.shape[1], remaps)
    codes = np.ascontiguousarray(codes, dtype=np.int8)
    bounds = np.zeros(parts + 1, dtype=np.int64)
    bounds[1:] = np.cumsum(np.bincount(codes, minlength=parts)[:parts])
    out_ids = np.empty(ids.shape, dtype=ids.dtype)  # C order, whatever the layout of ids
    out_labels = np.empty(labels.shape, dtype=labels.dtype)
    _remap_split(ids, labels, codes, table, offsets, bounds[:-1].copy(), out_ids, out_labels)
    return out_ids, out_labels, bounds


@njit(cache=True, nogil=True)
def _remap_in_place(ids, table, offsets):  # pragma: no cover
    for i in range(ids.shape[0]):
        for j in range(ids.shape[1]):
            if offsets[j] >= 0:
                ids[i, j] = table[offsets[j] + ids[i, j]]


def remap_in_place(ids: np.ndarray, table: tuple[np.ndarray, np.ndarray]) -> None:
    """ids[:, j] = remaps[j][ids[:, j]] for every column j with a remap, in place; `table` is
    `remap_table(ids.shape[1], remaps)`, built once for every chunk."""
    _remap_in_place(ids, *table)
