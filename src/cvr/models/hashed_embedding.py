"""HashedEmbedding: the hashing trick, a fixed number of rows however many values a field has.

Two layouts:

- per field (`shared=False`): field f keeps `min(n_f, buckets)` rows. A field with at most
  `buckets` values keeps one row per value (no collisions); a larger field's values are hashed
  into `buckets` rows of its own.
- shared (`shared=True`): every field hashes into one table of `buckets` rows; each field has its
  own hash function, so equal local ids of different fields land in unrelated buckets.

The hash of field f is the universal (Carter-Wegman) family on int64,

    h_f(x) = ((a_f * x + b_f) mod p) mod m_f,   p = 2^31 - 1,  1 <= a_f < p,  0 <= b_f < p,

with (a_f, b_f) drawn once from `seed`. Ids are int32 (< 2^31), so a_f * x < 2^62 never overflows.
Fields kept whole use a_f = 1, b_f = 0, m_f = n_f, i.e. the identity. The coefficients are a
persistent buffer: a checkpoint alone reproduces the hashing, whatever the random generator does.

Id 0 (the field's OOV/missing value) is hashed like any other id, so in a hashed field it may
share its bucket with real values.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from cvr.models.tables import EmbeddingTable, FullEmbedding

#: The Mersenne prime 2^31 - 1: larger than every int32 id, small enough that a * x fits int64.
HASH_PRIME = 2**31 - 1


def hash_coefficients(num_fields: int, seed: int) -> torch.Tensor:
    """(a_f, b_f) for each field, int64 (F, 2), a_f in [1, p), b_f in [0, p)."""
    rng = np.random.default_rng(seed)
    a = rng.integers(1, HASH_PRIME, size=num_fields, dtype=np.int64)
    b = rng.integers(0, HASH_PRIME, size=num_fields, dtype=np.int64)
    return torch.as_tensor(np.stack([a, b], axis=1))


def universal_hash(
    ids: torch.Tensor, coefficients: torch.Tensor, moduli: torch.Tensor
) -> torch.Tensor:
    """h_f(x) = ((a_f x + b_f) mod p) mod m_f, vectorized.

    ids int (B, F), coefficients int64 (F, 2), moduli int64 (F,) -> int64 (B, F) in [0, m_f).
    """
    a, b = coefficients[:, 0], coefficients[:, 1]
    return torch.remainder(torch.remainder(ids.long() * a + b, HASH_PRIME), moduli)


class HashedEmbedding(EmbeddingTable):
    """Hashed rows: (B, F) field-local ids -> float32 (B, F, dim).

    Rows: sum_f min(n_f, buckets) per field, or `buckets` when shared. Serialized bytes: rows *
    dim * 4 for the table plus 16 * F for the hash coefficients.
    """

    def __init__(
        self,
        cardinalities: Sequence[int],
        dim: int,
        sparse: bool = False,
        init_std: float = 0.01,
        buckets: int = 10_000,
        shared: bool = False,
        seed: int = 0,
    ) -> None:
        super().__init__(cardinalities, dim, sparse)
        if buckets < 1:
            raise ValueError(f"embedding.buckets must be >= 1, got {buckets}")
        self.buckets = int(buckets)
        self.shared = bool(shared)
        coefficients = hash_coefficients(self.num_fields, seed)
        if self.shared:
            rows_per_field = [self.buckets] * self.num_fields
            table_fields = [self.buckets]  # one field: every hashed id indexes the same rows
        else:
            rows_per_field = [min(n, self.buckets) for n in self.cardinalities]
            table_fields = rows_per_field
            whole = torch.as_tensor([n <= self.buckets for n in self.cardinalities])
            coefficients[whole] = torch.tensor([1, 0])  # identity: these fields keep every value
        self.rows_per_field = rows_per_field
        self.register_buffer("hash_coefficients", coefficients)
        self.register_buffer(
            "moduli", torch.as_tensor(rows_per_field, dtype=torch.int64), persistent=False
        )
        self.table = FullEmbedding(table_fields, self.dim, sparse=sparse, init_std=init_std)

    @property
    def num_rows(self) -> int:
        return self.table.num_rows

    def bucket_ids(self, ids: torch.Tensor) -> torch.Tensor:
        """Field-local ids (B, F) -> field-local bucket ids (B, F) int64, in [0, rows_f)."""
        return universal_hash(ids, self.hash_coefficients, self.moduli)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """ids: int (B, F) field-local -> float32 (B, F, dim)."""
        # In the shared layout the table has one "field", whose offset 0 broadcasts over F.
        return self.table(self.bucket_ids(ids))
