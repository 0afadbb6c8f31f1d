"""The CTR/CVR models: LR, FM, FFM and FwFM.

Each model maps field-local ids (batch, F) to logits (batch,). Embedding tables come from a
factory `embedding(cardinalities, dim) -> module` (see `embeddings.py`), so every model works
with every embedding variant. Linear terms always use a plain one-float-per-value table.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from cvr.models.embeddings import FullEmbedding
from cvr.models.interactions import (
    ffm_interaction,
    field_pairs,
    fm_interaction,
    fwfm_interaction,
)

EmbeddingFactory = Callable[..., nn.Module]


class CTRModel(nn.Module):
    """Bias + linear term over field-local ids; subclasses add a second-order term."""

    def __init__(
        self,
        cardinalities: Sequence[int],
        dim: int = 4,
        embedding: EmbeddingFactory = FullEmbedding,
    ) -> None:
        super().__init__()
        self.cardinalities = [int(c) for c in cardinalities]
        self.num_fields = len(self.cardinalities)
        self.dim = int(dim)
        self.linear = FullEmbedding(self.cardinalities, 1, init_std=0.0)
        self.bias = nn.Parameter(torch.zeros(1))

    def linear_logit(self, ids: torch.Tensor) -> torch.Tensor:
        return self.bias + self.linear(ids).sum(dim=(1, 2))

    def interaction(self, ids: torch.Tensor) -> torch.Tensor:
        return torch.zeros(ids.shape[0], device=ids.device)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """ids: int (B, F) field-local -> logits float32 (B,)."""
        return self.linear_logit(ids) + self.interaction(ids)


class LR(CTRModel):
    """Logistic regression: bias + one weight per feature value."""


class FM(CTRModel):
    """Factorization machine: one k-dim vector per feature value."""

    def __init__(self, cardinalities, dim=4, embedding=FullEmbedding):
        super().__init__(cardinalities, dim, embedding)
        self.embedding = embedding(cardinalities=self.cardinalities, dim=self.dim)

    def interaction(self, ids: torch.Tensor) -> torch.Tensor:
        return fm_interaction(self.embedding(ids))


class FFM(CTRModel):
    """Field-aware FM: one k-dim vector per (feature value, other field).

    The table is one (num_features, F * k) embedding, viewed as (num_features, F, k).
    """

    def __init__(self, cardinalities, dim=4, embedding=FullEmbedding):
        super().__init__(cardinalities, dim, embedding)
        self.embedding = embedding(cardinalities=self.cardinalities, dim=self.num_fields * self.dim)
        pair_i, pair_j = field_pairs(self.num_fields)
        self.register_buffer("pair_i", pair_i, persistent=False)
        self.register_buffer("pair_j", pair_j, persistent=False)

    def field_aware_embeddings(self, ids: torch.Tensor) -> torch.Tensor:
        """(B, F) ids -> (B, F, F, k) with [b, i, j] = v[x_i, field j]."""
        emb = self.embedding(ids)
        return emb.view(ids.shape[0], self.num_fields, self.num_fields, self.dim)

    def interaction(self, ids: torch.Tensor) -> torch.Tensor:
        return ffm_interaction(self.field_aware_embeddings(ids), self.pair_i, self.pair_j)


class FwFM(CTRModel):
    """Field-weighted FM: FM vectors with one learned weight per field pair."""

    def __init__(self, cardinalities, dim=4, embedding=FullEmbedding):
        super().__init__(cardinalities, dim, embedding)
        self.embedding = embedding(cardinalities=self.cardinalities, dim=self.dim)
        pair_i, pair_j = field_pairs(self.num_fields)
        self.register_buffer("pair_i", pair_i, persistent=False)
        self.register_buffer("pair_j", pair_j, persistent=False)
        self.pair_weight = nn.Parameter(torch.ones(len(pair_i)))

    def interaction(self, ids: torch.Tensor) -> torch.Tensor:
        return fwfm_interaction(self.embedding(ids), self.pair_i, self.pair_j, self.pair_weight)
