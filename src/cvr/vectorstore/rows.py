"""A bundle's learned tables as database rows: one row per global feature id.

Global id g of field f, local id l is `offset[f] + l` (the stacked-table row the model uses).
Each row holds the second-order vector the model reads for that value (FFM: the F*k floats of
its row, one k-vector per partner field; FM/FwFM: its k-vector), its linear weight, the field and
local id, the raw value where the preprocessor knows it (vocabulary fields; "" for OOV, hashed
and quantile ids) and the bundle's fingerprint. The bias and FwFM's pair weights are not per
feature and stay in the bundle.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from cvr.ops.manifest import fingerprint
from cvr.serving.bundle import Bundle

#: Model classes whose tables can be published, by the kind name a collection records.
MODEL_KINDS = {"FFM": "ffm", "FM": "fm", "FwFM": "fwfm"}
_ROWS_PER_CHUNK = 1 << 16


@dataclass
class TableRows:
    """The rows of one bundle's tables, in global-id order (ids == arange(N))."""

    kind: str
    num_fields: int
    dim: int  # k
    cardinalities: list[int]
    bundle: str  # fingerprint of the bundle's files
    vectors: np.ndarray  # float32 (N, vector_dim)
    linear: np.ndarray  # float32 (N,)
    field: np.ndarray  # int32 (N,)
    local_id: np.ndarray  # int64 (N,)
    raw: list[str]  # (N,)

    @property
    def ids(self) -> np.ndarray:
        return np.arange(len(self.linear), dtype=np.int64)

    @property
    def vector_dim(self) -> int:
        return int(self.vectors.shape[1])

    def checksum(self) -> str:
        return rows_checksum(
            self.ids, self.vectors, self.linear, self.field, self.local_id, self.raw
        )


def bundle_fingerprint(bundle: Bundle) -> str:
    """sha256 over the bundle's file checksums: equal iff every bundle file is equal."""
    return fingerprint(bundle.manifest["files"])


def model_kind(model: torch.nn.Module) -> str:
    """'ffm', 'fm' or 'fwfm'; ValueError for a model without per-feature vectors (LR, ...)."""
    kind = MODEL_KINDS.get(type(model).__name__)
    if kind is None:
        raise ValueError(
            f"cannot publish a {type(model).__name__} model: only {sorted(MODEL_KINDS)} have "
            "per-feature vectors"
        )
    return kind


def vector_dim(kind: str, num_fields: int, dim: int) -> int:
    """Floats per row: F*k for FFM (a k-vector per partner field), k for FM/FwFM."""
    return num_fields * dim if kind == "ffm" else dim


def table_rows(bundle: Bundle) -> TableRows:
    """Every row of the bundle's tables (see the module docstring)."""
    model = bundle.model
    kind = model_kind(model)
    cards = [int(c) for c in model.cardinalities]
    field = np.repeat(np.arange(len(cards), dtype=np.int32), cards)
    starts = np.concatenate([[0], np.cumsum(cards)[:-1]]).astype(np.int64)
    local = np.arange(sum(cards), dtype=np.int64) - starts[field]
    return TableRows(
        kind=kind,
        num_fields=len(cards),
        dim=int(model.dim),
        cardinalities=cards,
        bundle=bundle_fingerprint(bundle),
        vectors=_per_feature(model.embedding, cards),
        linear=_per_feature(model.linear, cards)[:, 0].copy(),
        field=field,
        local_id=local,
        raw=raw_values(bundle, cards),
    )


def _per_feature(table: torch.nn.Module, cards: Sequence[int]) -> np.ndarray:
    """float32 (N, D): what `table` returns for every (field, local id), in global-id order.

    A plain table is its weight; other variants (hashed, QR, mixed dimension) are evaluated,
    field by field in chunks, so the rows are exactly what the model computes.
    """
    weight = getattr(table, "weight", None)
    if type(table).__name__ == "FullEmbedding" and weight is not None:
        return weight.detach().cpu().numpy().astype(np.float32, copy=True)
    parts = []
    with torch.inference_mode():
        for f, card in enumerate(cards):
            for lo in range(0, card, _ROWS_PER_CHUNK):
                local = torch.arange(lo, min(card, lo + _ROWS_PER_CHUNK), dtype=torch.int64)
                ids = torch.zeros(len(local), len(cards), dtype=torch.int64)
                ids[:, f] = local
                parts.append(table(ids)[:, f].float().numpy())
    return np.ascontiguousarray(np.concatenate(parts), dtype=np.float32)


def raw_values(bundle: Bundle, cards: Sequence[int]) -> list[str]:
    """The raw value of every global id: the vocabulary entry, or "" where none is known."""
    out: list[str] = []
    encoders = bundle.preprocessor.encoders or []
    for f, card in enumerate(cards):
        enc = encoders[f] if f < len(encoders) else None
        vocab = list(enc.vocab) if enc is not None and enc.rule == "vocab" else []
        values = ["", *map(str, vocab)][:card]
        out.extend(values + [""] * (card - len(values)))
    return out


def rows_checksum(
    ids: np.ndarray,
    vectors: np.ndarray,
    linear: np.ndarray,
    field: np.ndarray,
    local_id: np.ndarray,
    raw: Iterable[str],
) -> str:
    """sha256 of rows in id order (any input order): ids, vectors, weights, fields, raw values."""
    order = np.argsort(np.asarray(ids, dtype=np.int64), kind="stable")
    digest = hashlib.sha256()
    raw = list(raw)
    for array, dtype in (
        (ids, np.int64),
        (vectors, np.float32),
        (linear, np.float32),
        (field, np.int32),
        (local_id, np.int64),
    ):
        digest.update(np.ascontiguousarray(np.asarray(array, dtype=dtype)[order]).tobytes())
    digest.update("\x00".join(raw[i] for i in order).encode("utf-8"))
    return digest.hexdigest()
