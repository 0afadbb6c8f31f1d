"""ESMM (Ma et al., SIGIR 2018): pCTCVR = pCTR x pCVR, both towers trained on every impression.

    model = ESMM(cardinalities, dim=4, tower="ffm", share_embedding=True, private_dim=4)
    ctr_logit, cvr_logit = model.head_logits(ids).unbind(1)   # (B,) each
    logits = model(ids)                                       # (B, 2): [ctr, ctcvr] logits
    loss = esmm_loss(ctr_logit, cvr_logit, click, conversion)

The CVR tower is never fitted on clicked rows alone: it is only seen through the product, whose
label (click and conversion) is defined on every impression, which is how ESMM avoids the
sample selection bias of a CVR model trained on clicks.

The towers share one embedding table (FFM: (num_features, F * k); FM: (num_features, k)) and
each has its own bias, linear terms and field-pair weights r_ij, so the two interaction sums
sum_{i<j} r_ij <.,.> differ. FM towers therefore compute the pairwise dots explicitly (an FM with
per-task pair weights is a FwFM; `tower="fm"` and `"fwfm"` build the same model).
`share_embedding=False` gives each tower its own table (the ablation).

Partial sharing (`private_dim=p > 0`, with a shared table; the CGC/PLE idea on the embedding):
each tower also has a private table of width p (FFM: F * p), and its interaction sum is the
shared dots weighted by its pair weights plus its private dots weighted by its own private pair
weights. A tower can so lean on what the other task taught the shared table, or ignore it (pair
weights towards 0) and use its own factors, where the two truths are unrelated.

`forward` returns the CTR and CTCVR logits, so a plain BCE-with-logits over the (B, 2) output
against [click, click AND conversion] is the mean of ESMM's two losses (half `esmm_loss`); that
is what the autograd backend trains (the fused kernels do not run ESMM).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn
from torch.nn import functional

from cvr.models.interactions import field_pairs
from cvr.models.tables import FullEmbedding

TOWERS = ("ffm", "fm", "fwfm")


def ctcvr_logit(ctr_logit: torch.Tensor, cvr_logit: torch.Tensor) -> torch.Tensor:
    """logit(sigmoid(a) * sigmoid(b)) = -logsumexp(-a, -b, -a-b), finite for finite a, b.

    1 - s(a)s(b) = (e^-a + e^-b + e^-a-b) / ((1+e^-a)(1+e^-b)) and s(a)s(b) = 1 / (same
    denominator), so their log ratio is the logsumexp above: no probability is ever formed.
    """
    a, b = ctr_logit, cvr_logit
    return -torch.logsumexp(torch.stack([-a, -b, -a - b]), dim=0)


def esmm_loss(
    ctr_logit: torch.Tensor,
    cvr_logit: torch.Tensor,
    click: torch.Tensor,
    conversion: torch.Tensor,
) -> torch.Tensor:
    """BCE(pCTR, click) + BCE(pCTR * pCVR, click AND conversion), batch means, from logits."""
    ctcvr = click * conversion
    return functional.binary_cross_entropy_with_logits(
        ctr_logit, click
    ) + functional.binary_cross_entropy_with_logits(ctcvr_logit(ctr_logit, cvr_logit), ctcvr)


class ESMM(nn.Module):
    """Two towers (CTR, CVR) of one kind over field-local ids (B, F); see the module doc."""

    def __init__(
        self,
        cardinalities: Sequence[int],
        dim: int = 4,
        embedding: Callable[..., nn.Module] = FullEmbedding,
        tower: str = "ffm",
        share_embedding: bool = True,
        private_dim: int = 0,
    ) -> None:
        super().__init__()
        if tower not in TOWERS:
            raise ValueError(f"esmm.tower: expected one of {list(TOWERS)}, got {tower!r}")
        if private_dim < 0 or (private_dim and not share_embedding):
            raise ValueError(
                f"esmm.private_dim: expected 0, or >= 1 with share_embedding=true, got "
                f"{private_dim} (share_embedding={share_embedding})"
            )
        self.cardinalities = [int(c) for c in cardinalities]
        self.num_fields = len(self.cardinalities)
        self.dim = int(dim)
        self.tower = tower
        self.share_embedding = bool(share_embedding)
        self.private_dim = int(private_dim)
        fields = self.num_fields if tower == "ffm" else 1
        self.embedding = embedding(cardinalities=self.cardinalities, dim=fields * self.dim)
        self.cvr_embedding = (
            None
            if share_embedding
            else embedding(cardinalities=self.cardinalities, dim=fields * self.dim)
        )
        # Partial sharing: [CTR's, CVR's] private tables (empty without).
        self.private = nn.ModuleList(
            embedding(cardinalities=self.cardinalities, dim=fields * self.private_dim)
            for _ in range(2 if self.private_dim else 0)
        )
        # Column 0 is the CTR tower's, column 1 the CVR tower's.
        self.linear = FullEmbedding(self.cardinalities, 2, init_std=0.0)
        self.bias = nn.Parameter(torch.zeros(2))
        pair_i, pair_j = field_pairs(self.num_fields)
        self.register_buffer("pair_i", pair_i, persistent=False)
        self.register_buffer("pair_j", pair_j, persistent=False)
        self.pair_weight = nn.Parameter(torch.ones(2, len(pair_i)))
        # Each tower's weights on its private dots (row 0 CTR, row 1 CVR).
        self.private_pair_weight = (
            nn.Parameter(torch.ones(2, len(pair_i))) if self.private_dim else None
        )

    def _pair_dots(self, table: nn.Module, ids: torch.Tensor, dim: int) -> torch.Tensor:
        """(B, P) pairwise dots: FFM <v[x_i, f_j], v[x_j, f_i]>, FM <v[x_i], v[x_j]>."""
        emb = table(ids)
        if self.tower == "ffm":
            emb = emb.view(ids.shape[0], self.num_fields, self.num_fields, dim)
            left = emb[:, self.pair_i, self.pair_j]
            right = emb[:, self.pair_j, self.pair_i]
        else:
            left, right = emb[:, self.pair_i], emb[:, self.pair_j]
        return (left * right).sum(dim=2)

    def head_logits(self, ids: torch.Tensor) -> torch.Tensor:
        """ids int (B, F) -> float32 (B, 2): the CTR and CVR towers' logits."""
        linear = self.bias + self.linear(ids).sum(dim=1)  # (B, 2)
        dots = self._pair_dots(self.embedding, ids, self.dim)
        if self.cvr_embedding is not None:
            ctr = dots @ self.pair_weight[0]
            cvr = self._pair_dots(self.cvr_embedding, ids, self.dim) @ self.pair_weight[1]
            return linear + torch.stack([ctr, cvr], dim=1)
        out = linear + dots @ self.pair_weight.T
        if self.private_pair_weight is not None:
            own = [self._pair_dots(table, ids, self.private_dim) for table in self.private]
            out = out + torch.stack(own, dim=1).mul(self.private_pair_weight).sum(dim=2)
        return out

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """ids int (B, F) -> float32 (B, 2): [CTR logit, CTCVR logit]."""
        heads = self.head_logits(ids)
        return torch.stack([heads[:, 0], ctcvr_logit(heads[:, 0], heads[:, 1])], dim=1)

    def head_probabilities(self, ids: torch.Tensor) -> dict[str, torch.Tensor]:
        """{"pctr", "pcvr", "pctcvr"}: float32 (B,) each, without an autograd graph."""
        with torch.inference_mode():
            heads = self.head_logits(ids)
            ctr, cvr = heads[:, 0], heads[:, 1]
            return {
                "pctr": torch.sigmoid(ctr),
                "pcvr": torch.sigmoid(cvr),
                "pctcvr": torch.sigmoid(ctcvr_logit(ctr, cvr)),
            }
