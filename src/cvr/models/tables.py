"""The plain embedding table and the field bookkeeping every embedding variant builds on.

`FullEmbedding` is both a variant of its own (one row per value) and the storage block the other
variants are made of: a hashed table is a FullEmbedding over bucket ids, a QR table is two, a
mixed-dimension table is one per dimension. Keeping every row store a FullEmbedding means that
code which handles the plain table (sparse optimiser split, post-training quantization) handles
every variant's rows too.
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


def check_table_args(cardinalities: Sequence[int], dim: int) -> list[int]:
    """Validate the arguments every variant shares; returns the cardinalities as ints."""
    if dim < 1:
        raise ValueError(f"embedding.dim must be >= 1, got {dim}")
    if len(cardinalities) == 0 or min(cardinalities) < 1:
        raise ValueError(f"cardinalities must be positive, got {list(cardinalities)}")
    return [int(c) for c in cardinalities]


def serialized_bytes(module: nn.Module) -> int:
    """Bytes of every tensor in `module.state_dict()`: what a saved checkpoint of it holds.

    Non-persistent buffers (field offsets, index tensors rebuilt from the config) are not in a
    state dict and so are not counted.
    """
    return sum(t.numel() * t.element_size() for t in module.state_dict().values())


class FieldGroups(nn.Module):
    """Bookkeeping for variants that embed disjoint groups of fields in different ways.

    Each group g yields a (B, F_g, D) tensor for its fields; `merge` concatenates the groups and
    puts the fields back in their original order with one gather: no loop over fields.
    """

    def __init__(self, groups: Sequence[Sequence[int]]) -> None:
        super().__init__()
        order = [f for group in groups for f in group]
        if sorted(order) != list(range(len(order))):
            raise ValueError(f"field groups must partition 0..F-1, got {list(map(list, groups))}")
        self.sizes = [len(g) for g in groups]
        inverse = torch.empty(len(order), dtype=torch.int64)
        inverse[torch.as_tensor(order, dtype=torch.int64)] = torch.arange(len(order))
        self.register_buffer("inverse_order", inverse, persistent=False)
        for g, group in enumerate(groups):
            self.register_buffer(
                f"fields_{g}", torch.as_tensor(list(group), dtype=torch.int64), persistent=False
            )

    def fields(self, group: int) -> torch.Tensor:
        """The field indices of one group, int64 (F_g,)."""
        return getattr(self, f"fields_{group}")

    def select(self, ids: torch.Tensor, group: int) -> torch.Tensor:
        """Columns of ids (B, F) that belong to one group: (B, F_g)."""
        return ids.index_select(1, self.fields(group))

    def merge(self, parts: Sequence[torch.Tensor]) -> torch.Tensor:
        """Group outputs [(B, F_g, D), ...] in group order -> (B, F, D) in field order."""
        stacked = parts[0] if len(parts) == 1 else torch.cat(list(parts), dim=1)
        return stacked.index_select(1, self.inverse_order)


class EmbeddingTable(nn.Module):
    """What every variant shares: the checked arguments, and storage counted as serialized."""

    def __init__(self, cardinalities: Sequence[int], dim: int, sparse: bool) -> None:
        super().__init__()
        self.cardinalities = check_table_args(cardinalities, dim)
        self.num_fields = len(self.cardinalities)
        self.dim = int(dim)
        self.sparse = sparse

    def storage_bytes(self) -> int:
        """Bytes of every tensor the table's state_dict holds (see `serialized_bytes`)."""
        return serialized_bytes(self)


class FullEmbedding(nn.Embedding):
    """One row of `dim` floats for every value of every field: the plain table.

    `weight` has shape (sum(cardinalities), dim). `sparse=True` makes its gradient sparse
    (for SparseAdam / sparse SGD), touching only the rows a batch used. It *is* an
    `nn.Embedding` (not one wrapped) so that DistributedDataParallel, which recognises sparse
    gradients only on `nn.Embedding`/`nn.EmbeddingBag` modules with `sparse=True`, all-reduces
    them as sparse tensors; the state_dict keeps its one key, `weight`.
    """

    def __init__(
        self,
        cardinalities: Sequence[int],
        dim: int,
        sparse: bool = False,
        init_std: float = 0.01,
    ) -> None:
        cards = check_table_args(cardinalities, dim)
        # `_weight` skips nn.Embedding's own N(0, 1) init, so the RNG stream (and every seeded
        # run's initial weights) is what it was before this class became an nn.Embedding.
        weight = torch.empty(sum(cards), int(dim))
        super().__init__(sum(cards), int(dim), sparse=sparse, _weight=weight)
        self.cardinalities = cards
        self.num_fields = len(cards)
        self.dim = int(dim)
        self.register_buffer("offsets", field_offsets(self.cardinalities), persistent=False)
        nn.init.normal_(self.weight, std=init_std)

    @property
    def num_features(self) -> int:
        return self.weight.shape[0]

    @property
    def num_rows(self) -> int:
        """Rows stored: one per value of every field."""
        return self.weight.shape[0]

    def storage_bytes(self) -> int:
        """Bytes of every tensor the table's state_dict holds (see `serialized_bytes`)."""
        return serialized_bytes(self)

    def global_ids(self, ids: torch.Tensor) -> torch.Tensor:
        """Field-local ids (batch, F) -> rows of the stacked table (batch, F), int64."""
        return ids.long() + self.offsets

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """ids: int (B, F) field-local -> float32 (B, F, dim)."""
        return nn.functional.embedding(self.global_ids(ids), self.weight, sparse=self.sparse)

    def extra_repr(self) -> str:
        return f"fields={self.num_fields}, rows={self.num_rows}, dim={self.dim}, " + (
            f"sparse={self.sparse}"
        )
