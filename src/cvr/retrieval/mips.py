"""FM, FFM and FwFM as maximum inner product search: query vectors and item vectors.

Fields split into a query side (user and context fields) and an item side (item fields), as the
schema declares. For a query u and an item a the model's logit decomposes as

    logit(u, a) = c(u) + q(u) · v(a)

where c(u) collects everything that does not depend on the item (bias, query linear terms,
query-query interactions). So ranking items by q(u) · v(a) is exactly the model's ranking.

Layouts (Q query fields, J item fields, k = model.dim, the last slot is the item's own terms):

    FFM   q = [v[u_i, field j]] over (i in Q, j in I) + [1]     d = Q * J * k + 1
          a = [v[a_j, field i]] over (i in Q, j in I) + [w_I + item-item interactions]
    FM    q = sum_Q e(u_i) + [1]                                 d = k + 1
          a = sum_I e(a_j) + [w_I + item-item interactions]
    FwFM  q = [sum_Q r_ij e(u_i)] over j in I + [1]             d = J * k + 1
          a = [e(a_j)] over j in I + [w_I + item-item interactions]

FwFM uses the compact form: its (i, j) blocks scaled by r_ij, summed over i on the query side,
which gives the same inner product in J * k instead of Q * J * k dimensions.

Vectors come from `model.embedding(ids)` and `model.linear(ids)`, so every embedding variant
works. Those tables take ids for all F fields; the fields a side does not know are filled with
id 0 (the OOV bucket) and dropped, which relies on the contract that output row f depends on
input column f only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from cvr.data.store import EncodedStore
from cvr.models.ctr import FFM, FM, FwFM
from cvr.models.embeddings import FullEmbedding
from cvr.models.interactions import ffm_interaction, fm_interaction, fwfm_interaction

#: Rows per call to a generic embedding table (its output is rows x F x D floats).
_TABLE_CHUNK_ROWS = 4096
#: Items per block when building item vectors (bounds the temporary tensors).
_ITEM_CHUNK_ROWS = 65536
#: Items drawn per round when generating a catalogue (bounds memory for huge requests).
_MAX_DRAWS_PER_ROUND = 1 << 22

QUERY_SIDES = ("user", "context")
ITEM_SIDES = ("item",)


def split_fields(sides: Sequence[str]) -> tuple[list[int], list[int]]:
    """(query field indices, item field indices) from per-field sides ('user'|'context'|'item')."""
    query = [f for f, side in enumerate(sides) if side in QUERY_SIDES]
    item = [f for f, side in enumerate(sides) if side in ITEM_SIDES]
    unknown = sorted({s for s in sides if s not in QUERY_SIDES + ITEM_SIDES})
    if unknown:
        raise ValueError(f"field sides {unknown} are not one of {QUERY_SIDES + ITEM_SIDES}")
    if not query or not item:
        raise ValueError(
            f"retrieval needs at least one query field (user/context) and one item field; "
            f"got {len(query)} query and {len(item)} item fields"
        )
    return query, item


@dataclass(frozen=True)
class MipsLayout:
    """How one model's logit splits into a query side and an item side."""

    kind: str  # 'fm' | 'ffm' | 'fwfm'
    num_fields: int
    k: int
    query_fields: torch.Tensor  # int64 (Q,)
    item_fields: torch.Tensor  # int64 (J,)

    @property
    def dim(self) -> int:
        """Length of the query and item vectors, extra slot included."""
        q, j = len(self.query_fields), len(self.item_fields)
        return {"fm": self.k, "ffm": q * j * self.k, "fwfm": j * self.k}[self.kind] + 1


def mips_layout(
    model: nn.Module, query_fields: Sequence[int], item_fields: Sequence[int]
) -> MipsLayout:
    """Check that the fields partition the model's fields and name the model kind."""
    if isinstance(model, FFM):
        kind = "ffm"
    elif isinstance(model, FwFM):
        kind = "fwfm"
    elif isinstance(model, FM):
        kind = "fm"
    else:
        raise TypeError(
            f"retrieval needs an FM, FFM or FwFM model with a second-order term, "
            f"got {type(model).__name__}"
        )
    fields = sorted([*query_fields, *item_fields])
    if fields != list(range(model.num_fields)):
        raise ValueError(
            f"query_fields {list(query_fields)} and item_fields {list(item_fields)} must "
            f"partition the model's {model.num_fields} fields (each exactly once)"
        )
    device = model.bias.device
    return MipsLayout(
        kind=kind,
        num_fields=model.num_fields,
        k=model.dim,
        query_fields=torch.as_tensor(list(query_fields), dtype=torch.int64, device=device),
        item_fields=torch.as_tensor(list(item_fields), dtype=torch.int64, device=device),
    )


def mips_dim(model: nn.Module, query_fields: Sequence[int], item_fields: Sequence[int]) -> int:
    """Length d of the vectors `query_vectors` and `item_vectors` return."""
    return mips_layout(model, query_fields, item_fields).dim


# --- embeddings of a subset of fields ------------------------------------------------------------
def field_embeddings(
    table: nn.Module, ids: torch.Tensor, fields: torch.Tensor, num_fields: int
) -> torch.Tensor:
    """Rows of `table` for ids placed in columns `fields`.

    ids: int (n, C) field-local ids of the fields `fields` (int64 (C,)). Returns float32 (n, C, D)
    equal to `table(full)[:, fields]`, where `full` holds `ids` in those columns.
    """
    ids = ids.to(torch.int64)
    if type(table) is FullEmbedding:
        # Fast path: the plain table is one gather, without embedding the other F - C columns.
        return table.weight[table.offsets[fields] + ids]
    return _generic_field_embeddings(table, ids, fields, num_fields)


def _generic_field_embeddings(
    table: nn.Module, ids: torch.Tensor, fields: torch.Tensor, num_fields: int
) -> torch.Tensor:
    """Any table: embed each distinct (column, value) once, packing columns side by side."""
    n, c = ids.shape
    device = ids.device
    if n == 0:
        return table(torch.zeros(1, num_fields, dtype=torch.int64, device=device))[:0, fields]
    # One key per (column, value); sorted unique keys group the columns contiguously.
    stride = int(ids.max()) + 1
    columns = torch.arange(c, device=device)
    keys = ids + columns.unsqueeze(0) * stride
    uniq, inverse = torch.unique(keys.reshape(-1), return_inverse=True)
    column = uniq // stride
    value = uniq % stride
    first = torch.searchsorted(uniq, columns * stride)
    # Position of each distinct value within its column: its row in the packed batch.
    row = torch.arange(len(uniq), device=device) - first[column]
    packed = torch.zeros(int(row.max()) + 1, num_fields, dtype=torch.int64, device=device)
    packed[row, fields[column]] = value
    blocks = [
        table(packed[start : start + _TABLE_CHUNK_ROWS])[:, fields]
        for start in range(0, len(packed), _TABLE_CHUNK_ROWS)
    ]
    per_value = torch.cat(blocks)[row, column]  # (U, D)
    return per_value[inverse].reshape(n, c, -1)


# --- the decomposition ---------------------------------------------------------------------------
def _pairs(count: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.triu_indices(count, count, offset=1, device=device)


def _pair_weight_matrix(model: FwFM) -> torch.Tensor:
    """FwFM pair weights as a symmetric (F, F) matrix (diagonal unused)."""
    weights = model.pair_weight.new_zeros(model.num_fields, model.num_fields)
    weights[model.pair_i, model.pair_j] = model.pair_weight
    weights[model.pair_j, model.pair_i] = model.pair_weight
    return weights


def _same_side_terms(
    model: nn.Module, layout: MipsLayout, ids: torch.Tensor, fields: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(embeddings (n, C, D), linear terms + interactions among `fields` only (n,))."""
    emb = field_embeddings(model.embedding, ids, fields, layout.num_fields)
    linear = field_embeddings(model.linear, ids, fields, layout.num_fields).sum(dim=(1, 2))
    pair_a, pair_b = _pairs(len(fields), fields.device)
    if layout.kind == "ffm":
        # (n, C, F, k) -> the slots of the same side's fields: (n, C, C, k).
        own = emb.reshape(len(ids), len(fields), layout.num_fields, layout.k)[:, :, fields]
        inner = ffm_interaction(own, pair_a, pair_b)
    elif layout.kind == "fwfm":
        weights = _pair_weight_matrix(model)[fields][:, fields][pair_a, pair_b]
        inner = fwfm_interaction(emb, pair_a, pair_b, weights)
    else:
        inner = fm_interaction(emb)
    return emb, linear + inner


def _check_ids(ids: torch.Tensor | np.ndarray, fields: torch.Tensor, name: str) -> torch.Tensor:
    ids = torch.as_tensor(np.asarray(ids), dtype=torch.int64, device=fields.device)
    if ids.ndim != 2 or ids.shape[1] != len(fields):
        raise ValueError(
            f"{name}: expected int (n, {len(fields)}) ids of fields {fields.tolist()}, "
            f"got shape {tuple(ids.shape)}"
        )
    return ids


@torch.no_grad()
def query_vectors(
    model: nn.Module,
    query_ids: torch.Tensor | np.ndarray,
    query_fields: Sequence[int],
    item_fields: Sequence[int],
) -> tuple[np.ndarray, np.ndarray]:
    """Query side of the decomposition.

    query_ids: int (n, Q) field-local ids of `query_fields`, in that order. Returns
    (vectors float32 (n, d), constant float32 (n,)) with, for any item a,
    logit(u, a) = vectors[u] · item_vectors(a) + constant[u].
    """
    layout = mips_layout(model, query_fields, item_fields)
    ids = _check_ids(query_ids, layout.query_fields, "query_ids")
    emb, own = _same_side_terms(model, layout, ids, layout.query_fields)
    n, q, j = len(ids), len(layout.query_fields), len(layout.item_fields)
    if layout.kind == "ffm":
        # [b, i, j] = v[u_i, field j] for i in Q, j in I.
        cross = emb.reshape(n, q, layout.num_fields, layout.k)[:, :, layout.item_fields]
        cross = cross.reshape(n, q * j * layout.k)
    elif layout.kind == "fwfm":
        weights = _pair_weight_matrix(model)[layout.query_fields][:, layout.item_fields]
        cross = torch.einsum("nqk,qj->njk", emb, weights.to(emb.dtype)).reshape(n, j * layout.k)
    else:
        cross = emb.sum(dim=1)
    vectors = torch.cat([cross, torch.ones(n, 1, dtype=cross.dtype, device=cross.device)], dim=1)
    constant = own + model.bias
    return vectors.float().cpu().numpy(), constant.float().cpu().numpy()


@torch.no_grad()
def item_vectors(
    model: nn.Module,
    item_ids: torch.Tensor | np.ndarray,
    query_fields: Sequence[int],
    item_fields: Sequence[int],
    chunk_rows: int = _ITEM_CHUNK_ROWS,
) -> np.ndarray:
    """Item side of the decomposition: float32 (m, d) for item_ids int (m, J) of `item_fields`.

    Built in blocks of `chunk_rows` items so the temporaries stay bounded for catalogues of
    millions of items.
    """
    layout = mips_layout(model, query_fields, item_fields)
    ids = _check_ids(item_ids, layout.item_fields, "item_ids")
    out = np.empty((len(ids), layout.dim), dtype=np.float32)
    for start in range(0, len(ids), chunk_rows):
        out[start : start + chunk_rows] = _item_block(
            model, layout, ids[start : start + chunk_rows]
        )
    return out


def _item_block(model: nn.Module, layout: MipsLayout, ids: torch.Tensor) -> np.ndarray:
    emb, own = _same_side_terms(model, layout, ids, layout.item_fields)
    m, q, j = len(ids), len(layout.query_fields), len(layout.item_fields)
    if layout.kind == "ffm":
        # emb[b, j, i] = v[a_j, field i]; reorder to the query layout (i, j).
        cross = emb.reshape(m, j, layout.num_fields, layout.k)[:, :, layout.query_fields]
        cross = cross.transpose(1, 2).reshape(m, q * j * layout.k)
    elif layout.kind == "fwfm":
        cross = emb.reshape(m, j * layout.k)
    else:
        cross = emb.sum(dim=1)
    return torch.cat([cross, own.unsqueeze(1).to(cross.dtype)], dim=1).float().cpu().numpy()


# --- catalogues ----------------------------------------------------------------------------------
def catalogue_items(store: EncodedStore, item_fields: Sequence[int], split: str = "train"):
    """Distinct item-field combinations seen in a split: int32 (m, J), sorted by frequency."""
    rows = np.asarray(store.ids(split)[:, list(item_fields)])
    items, counts = np.unique(rows, axis=0, return_counts=True)
    return items[np.argsort(-counts, kind="stable")].astype(np.int32)


def value_frequencies(store: EncodedStore, fields: Sequence[int], split: str = "train"):
    """Counts of every value of `fields` in a split, stacked: int64 (sum of cardinalities,)."""
    cards = np.asarray(store.cardinalities, dtype=np.int64)[list(fields)]
    offsets = np.concatenate([[0], np.cumsum(cards)[:-1]])
    rows = np.asarray(store.ids(split)[:, list(fields)], dtype=np.int64)
    return np.bincount((rows + offsets).reshape(-1), minlength=int(cards.sum()))


def generate_catalogue(
    store: EncodedStore,
    item_fields: Sequence[int],
    num_items: int,
    split: str = "train",
    seed: int = 0,
    max_rounds: int = 50,
) -> np.ndarray:
    """`num_items` distinct random items: int32 (num_items, J).

    Each item field's value is drawn independently with the frequency it has in `split` (values
    never seen there are never drawn); repeated combinations are dropped and drawn again.
    """
    if num_items < 1:
        raise ValueError(f"num_items must be >= 1, got {num_items}")
    cards = np.asarray(store.cardinalities, dtype=np.int64)[list(item_fields)]
    counts = value_frequencies(store, item_fields, split).astype(np.float64)
    offsets = np.concatenate([[0], np.cumsum(cards)[:-1]])
    field_of = np.repeat(np.arange(len(cards)), cards)
    totals = np.bincount(field_of, weights=counts, minlength=len(cards))
    if (totals == 0).any():
        raise ValueError(f"split {split!r} of {store.path} has no rows to draw item values from")
    # Each field's probabilities sum to 1, so one running sum puts field j's CDF in (j, j + 1]
    # and a single searchsorted draws every field.
    cdf = np.cumsum(counts / totals[field_of])
    possible = math.prod(int(n) for n in np.bincount(field_of, weights=counts > 0))
    if num_items > possible:
        raise ValueError(
            f"asked for {num_items} distinct items, but the item values seen in split "
            f"{split!r} make only {possible} distinct items"
        )
    rng = np.random.default_rng([seed, 11])
    seen = np.empty((0, len(cards)), dtype=np.int64)
    for _ in range(max_rounds):
        need = num_items - len(seen)
        size = min(int(need * 1.2) + 16, _MAX_DRAWS_PER_ROUND)
        draws = rng.random((size, len(cards))) + np.arange(len(cards))
        flat = np.searchsorted(cdf, draws.reshape(-1), side="right").reshape(draws.shape)
        # Rounding in the running sum can step over a field's edge; keep each draw in its field.
        flat = np.clip(flat, offsets, offsets + cards - 1)
        seen = _distinct_in_order(np.concatenate([seen, flat - offsets]), cards)
        if len(seen) >= num_items:
            return seen[:num_items].astype(np.int32)
    raise ValueError(
        f"drew only {len(seen)} distinct items in {max_rounds} rounds from the item values "
        f"seen in split {split!r}; asked for {num_items}"
    )


def _distinct_in_order(rows: np.ndarray, cards: np.ndarray) -> np.ndarray:
    """Rows (values < cards per column) without repeats, first occurrences in original order."""
    if math.prod(int(c) for c in cards) < 2**63:
        # One mixed-radix int64 key per row: a 1-D unique is far faster than unique(axis=0).
        radix = np.concatenate([np.cumprod(cards[::-1])[::-1][1:], [1]]).astype(np.int64)
        _, first = np.unique(rows.astype(np.int64) @ radix, return_index=True)
    else:
        _, first = np.unique(rows, axis=0, return_index=True)
    return rows[np.sort(first)]
