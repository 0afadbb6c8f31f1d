"""Embedding tables over field-local ids.

Every variant takes the same arguments and has the same call signature, so any model works with
any variant:

    table = Variant(cardinalities=[n_0, ..., n_{F-1}], dim=D, ...)
    table(ids)  # ids: int (batch, F) field-local ids -> float (batch, F, D)

Field-local id 0 is the field's OOV/missing bucket. Per-field offsets into one global table are a
registered buffer, added once per call.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn


def field_offsets(cardinalities: Sequence[int]) -> torch.Tensor:
    """Start of each field's rows in a table that stacks all fields: int64 (F,)."""
    starts = np.concatenate([[0], np.cumsum(np.asarray(cardinalities, dtype=np.int64))[:-1]])
    return torch.as_tensor(starts, dtype=torch.int64)


class FullEmbedding(nn.Module):
    """One row of `dim` floats for every value of every field: the plain table.

    `weight` has shape (sum(cardinalities), dim). `sparse=True` makes its gradient sparse
    (for SparseAdam / sparse SGD), touching only the rows a batch used.
    """

    def __init__(
        self,
        cardinalities: Sequence[int],
        dim: int,
        sparse: bool = False,
        init_std: float = 0.01,
    ) -> None:
        super().__init__()
        if dim < 1:
            raise ValueError(f"embedding.dim must be >= 1, got {dim}")
        if len(cardinalities) == 0 or min(cardinalities) < 1:
            raise ValueError(f"cardinalities must be positive, got {list(cardinalities)}")
        self.cardinalities = [int(c) for c in cardinalities]
        self.num_fields = len(self.cardinalities)
        self.dim = int(dim)
        self.sparse = sparse
        self.register_buffer("offsets", field_offsets(self.cardinalities), persistent=False)
        self.weight = nn.Parameter(torch.empty(sum(self.cardinalities), self.dim))
        nn.init.normal_(self.weight, std=init_std)

    @property
    def num_features(self) -> int:
        return self.weight.shape[0]

    def global_ids(self, ids: torch.Tensor) -> torch.Tensor:
        """Field-local ids (batch, F) -> rows of the stacked table (batch, F), int64."""
        return ids.long() + self.offsets

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return nn.functional.embedding(self.global_ids(ids), self.weight, sparse=self.sparse)

    def storage_bytes(self) -> int:
        """Bytes of the table as serialized (float32 rows)."""
        return self.weight.numel() * self.weight.element_size()
