"""QREmbedding: quotient-remainder compositional embeddings (Shi et al., KDD 2020).

A field with n_f > `threshold` values is embedded from two small tables instead of one big one:
value x has quotient q = x // c and remainder r = x % c (c = `collisions`), and

    e(x) = Q_f[q] (op) R_f[r],   Q_f: ceil(n_f / c) rows,   R_f: c rows,

with op one of `mult` (elementwise product), `add`, or `concat` (Q_f rows have ceil(dim/2)
columns, R_f rows floor(dim/2), so odd dims work; concat needs dim >= 2). No two values share
both q and r, so each value still gets a distinct vector. Fields with n_f <= threshold keep a
full table, and `collisions=1` compresses nothing (every field keeps a full table): both
degenerate to `FullEmbedding` exactly.

Storage: the quotient rows of all compressed fields are one stacked FullEmbedding, their
remainder rows another, the uncompressed fields a third; serialized bytes are

    4 * (sum_full n_f * dim + sum_qr (ceil(n_f / c) * d_q + c * d_r)).

Initialisation: with `mult` the remainder rows start at 1 + N(0, init_std) so that a product
starts at the quotient rows' scale (init_std) instead of init_std^2, which would stall learning;
with `add` both halves are N(0, init_std / sqrt 2) so the sum has std init_std.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from cvr.models.tables import EmbeddingTable, FieldGroups, FullEmbedding

OPERATIONS = ("mult", "add", "concat")


class QREmbedding(EmbeddingTable):
    """Quotient-remainder rows: (B, F) field-local ids -> float32 (B, F, dim)."""

    def __init__(
        self,
        cardinalities: Sequence[int],
        dim: int,
        sparse: bool = False,
        init_std: float = 0.01,
        threshold: int = 1000,
        collisions: int = 4,
        operation: str = "mult",
    ) -> None:
        super().__init__(cardinalities, dim, sparse)
        if operation not in OPERATIONS:
            raise ValueError(f"embedding.operation must be one of {OPERATIONS}, got {operation!r}")
        if collisions < 1:
            raise ValueError(f"embedding.collisions must be >= 1, got {collisions}")
        self.threshold = int(threshold)
        self.collisions = int(collisions)
        self.operation = operation
        compressed = [
            f for f, n in enumerate(self.cardinalities) if n > self.threshold and collisions > 1
        ]
        whole = [f for f in range(self.num_fields) if f not in compressed]
        if compressed and operation == "concat" and self.dim < 2:
            raise ValueError("embedding.operation=concat needs dim >= 2 (half for each table)")
        self.compressed_fields, self.whole_fields = compressed, whole
        self.groups = FieldGroups([g for g in (whole, compressed) if g])

        self.full = None
        if whole:
            cards = [self.cardinalities[f] for f in whole]
            self.full = FullEmbedding(cards, self.dim, sparse=sparse, init_std=init_std)
        self.quotient = self.remainder = None
        if compressed:
            dim_q, dim_r = self.dim, self.dim
            if operation == "concat":
                dim_q, dim_r = self.dim - self.dim // 2, self.dim // 2
            std = init_std / math.sqrt(2) if operation == "add" else init_std
            quotient_rows = [math.ceil(self.cardinalities[f] / collisions) for f in compressed]
            self.quotient = FullEmbedding(quotient_rows, dim_q, sparse=sparse, init_std=std)
            self.remainder = FullEmbedding(
                [self.collisions] * len(compressed), dim_r, sparse=sparse, init_std=std
            )
            if operation == "mult":
                with torch.no_grad():
                    self.remainder.weight.add_(1.0)

    @property
    def num_rows(self) -> int:
        """Rows stored over all tables (full, quotient and remainder)."""
        return sum(t.num_rows for t in (self.full, self.quotient, self.remainder) if t is not None)

    def compose(self, ids: torch.Tensor) -> torch.Tensor:
        """Compressed fields' ids (B, F_qr) -> their vectors (B, F_qr, dim)."""
        ids = ids.long()
        q = self.quotient(torch.div(ids, self.collisions, rounding_mode="floor"))
        r = self.remainder(torch.remainder(ids, self.collisions))
        if self.operation == "mult":
            return q * r
        if self.operation == "add":
            return q + r
        return torch.cat([q, r], dim=2)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """ids: int (B, F) field-local -> float32 (B, F, dim)."""
        parts, group = [], 0
        if self.full is not None:
            parts.append(self.full(self.groups.select(ids, group)))
            group += 1
        if self.quotient is not None:
            parts.append(self.compose(self.groups.select(ids, group)))
        return self.groups.merge(parts)
