"""Second-order interaction terms, vectorized over the batch and over field pairs.

Pairs are gathered with precomputed index tensors `(pair_i, pair_j)` (i < j): no Python loop
over fields or pairs.
"""

from __future__ import annotations

import torch


def field_pairs(num_fields: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Index tensors (i, j) of every unordered field pair i < j, int64 (F*(F-1)/2,) each."""
    pair_i, pair_j = torch.triu_indices(num_fields, num_fields, offset=1)
    return pair_i, pair_j


def fm_interaction(emb: torch.Tensor) -> torch.Tensor:
    """sum_{i<j} <e_i, e_j> via the square-of-sum identity. emb (B, F, k) -> (B,)."""
    square_of_sum = emb.sum(dim=1).pow(2)
    sum_of_squares = emb.pow(2).sum(dim=1)
    return 0.5 * (square_of_sum - sum_of_squares).sum(dim=1)


def ffm_interaction(emb: torch.Tensor, pair_i: torch.Tensor, pair_j: torch.Tensor) -> torch.Tensor:
    """sum_{i<j} <v[x_i, field j], v[x_j, field i]>.

    emb (B, F, F, k) holds emb[b, i, j] = v[x_i, field j]; returns (B,).
    """
    left = emb[:, pair_i, pair_j]  # (B, P, k): v[x_i, f_j]
    right = emb[:, pair_j, pair_i]  # (B, P, k): v[x_j, f_i]
    return (left * right).sum(dim=(1, 2))


def fwfm_interaction(
    emb: torch.Tensor, pair_i: torch.Tensor, pair_j: torch.Tensor, pair_weight: torch.Tensor
) -> torch.Tensor:
    """sum_{i<j} r_{ij} <e_i, e_j>. emb (B, F, k), pair_weight (P,) -> (B,)."""
    dots = (emb[:, pair_i] * emb[:, pair_j]).sum(dim=2)  # (B, P)
    return dots @ pair_weight
