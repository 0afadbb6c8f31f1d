"""MixedDimEmbedding: smaller vectors for larger fields (Ginart et al., "Mixed Dimension
Embeddings", 2021), projected back to the common width that FM/FFM interactions need.

Field f with n_f values gets width (the power rule, anchored at the smallest field)

    d_f = clip(floor(dim * (n_f / n_min)^(-alpha) + 1/2), min_dim, dim),   n_min = min_f n_f,

so the field with the fewest values keeps the full `dim`, and a field 10x larger gets about
10^-alpha of it; alpha = 0 gives every field `dim`. Each field's d_f-wide rows are mapped to `dim`
by its own linear projection P_f (d_f x dim, no bias); fields with d_f = dim skip it (identity),
which adds no capacity and would cost bytes. Serialized bytes:

    4 * (sum_f n_f * d_f + sum_{f: d_f < dim} d_f * dim).

Fields of equal width share one stacked FullEmbedding and one (F_g, d, dim) projection tensor,
so forward loops over the distinct widths, never over pairs or rows. There are at most
min(F, dim - min_dim + 1) of them: a handful for FM's k-wide rows, but up to F for FFM, whose
rows are F * k wide (the loop is then one per field, which the architecture tolerates here).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from cvr.models.tables import EmbeddingTable, FieldGroups, FullEmbedding


def power_rule_dims(
    cardinalities: Sequence[int], dim: int, alpha: float, min_dim: int = 1
) -> list[int]:
    """d_f = clip(round(dim * (n_f / n_min)^-alpha), min_dim, dim) for each field (see module)."""
    if alpha < 0:
        raise ValueError(f"embedding.alpha must be >= 0, got {alpha}")
    if not 1 <= min_dim <= dim:
        raise ValueError(f"embedding.min_dim must be in [1, dim={dim}], got {min_dim}")
    n_min = min(cardinalities)
    raw = [dim * (n / n_min) ** (-alpha) for n in cardinalities]
    return [min(dim, max(min_dim, math.floor(d + 0.5))) for d in raw]


class DimGroup(nn.Module):
    """The fields that share one width d: a stacked (sum n_f, d) table and projections to dim."""

    def __init__(
        self, cardinalities: Sequence[int], width: int, dim: int, sparse: bool, init_std: float
    ) -> None:
        super().__init__()
        self.width = width
        self.table = FullEmbedding(cardinalities, width, sparse=sparse, init_std=init_std)
        self.projection = None
        if width < dim:
            # std 1/sqrt(width) keeps projected vectors at the table's scale (init_std).
            weight = torch.randn(len(cardinalities), width, dim) / math.sqrt(width)
            self.projection = nn.Parameter(weight)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """ids (B, F_g) -> (B, F_g, dim)."""
        rows = self.table(ids)
        if self.projection is None:
            return rows
        return torch.einsum("bfd,fde->bfe", rows, self.projection)


class MixedDimEmbedding(EmbeddingTable):
    """Per-field widths by the power rule: (B, F) field-local ids -> float32 (B, F, dim)."""

    def __init__(
        self,
        cardinalities: Sequence[int],
        dim: int,
        sparse: bool = False,
        init_std: float = 0.01,
        alpha: float = 0.3,
        min_dim: int = 1,
    ) -> None:
        super().__init__(cardinalities, dim, sparse)
        self.alpha = float(alpha)
        self.field_dims = power_rule_dims(self.cardinalities, self.dim, alpha, min_dim)
        widths = sorted(set(self.field_dims), reverse=True)
        field_groups = [[f for f, d in enumerate(self.field_dims) if d == w] for w in widths]
        self.groups = FieldGroups(field_groups)
        self.dim_groups = nn.ModuleList(
            DimGroup([self.cardinalities[f] for f in fields], w, self.dim, sparse, init_std)
            for w, fields in zip(widths, field_groups, strict=True)
        )

    @property
    def num_rows(self) -> int:
        return sum(g.table.num_rows for g in self.dim_groups)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """ids: int (B, F) field-local -> float32 (B, F, dim)."""
        parts = [group(self.groups.select(ids, g)) for g, group in enumerate(self.dim_groups)]
        return self.groups.merge(parts)
