"""Nearest neighbours of one entity (a value of a field, e.g. an advertiser) by its learned vectors.

An entity's vector is everything the model learned about that value:

- FFM: the concatenation of v[value, field j] over every other field j. The slot j = its own
  field is left out: no pair (f, f) exists, so that slot is never trained and holds only its
  random initialisation.
- FM / FwFM: its one embedding vector.

Neighbours are searched with the same index machinery as item retrieval (any faiss factory
string), by cosine similarity or inner product.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from cvr.models.ctr import FFM, FM, FwFM
from cvr.retrieval.index import MipsIndex, build_index
from cvr.retrieval.mips import field_embeddings


@torch.no_grad()
def entity_vectors(model: nn.Module, field: int, values: np.ndarray | None = None) -> np.ndarray:
    """Vectors of `values` (int (n,), field-local; default every value) of `field`.

    Returns float32 (n, (F - 1) * k) for FFM, (n, k) for FM and FwFM.
    """
    if not isinstance(model, FM | FFM | FwFM):
        raise TypeError(f"entity vectors need an FM, FFM or FwFM model, got {type(model).__name__}")
    if not 0 <= field < model.num_fields:
        raise ValueError(f"field must be in [0, {model.num_fields}), got {field}")
    if values is None:
        values = np.arange(model.cardinalities[field])
    device = model.bias.device
    ids = torch.as_tensor(np.asarray(values), dtype=torch.int64, device=device).reshape(-1, 1)
    fields = torch.tensor([field], device=device)
    emb = field_embeddings(model.embedding, ids, fields, model.num_fields)[:, 0]
    if isinstance(model, FFM):
        other = torch.arange(model.num_fields, device=device) != field
        emb = emb.reshape(len(ids), model.num_fields, model.dim)[:, other].reshape(len(ids), -1)
    return emb.float().cpu().numpy()


def entity_index(
    model: nn.Module, field: int, metric: str = "cosine", factory: str = "Flat", **build_kwargs
) -> MipsIndex:
    """An index over the vectors of every value of `field` (row r = field-local id r)."""
    return build_index(entity_vectors(model, field), factory, metric=metric, **build_kwargs)


def nearest_entities(
    model: nn.Module,
    field: int,
    value: int,
    k: int = 10,
    metric: str = "cosine",
    index: MipsIndex | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The k values of `field` most similar to `value`: (ids int64 (k,), scores float32 (k,)).

    Sorted best first; the value itself is among them (first, for cosine). Pass `index` (from
    `entity_index`) to reuse one index across many look-ups; otherwise an exact one is built.
    """
    if index is None:
        index = entity_index(model, field, metric=metric)
    elif index.metric != metric:
        raise ValueError(f"index answers {index.metric}, but metric={metric!r} was asked for")
    query = entity_vectors(model, field, np.array([value]))
    scores, ids = index.search(query, min(k, index.ntotal))
    return ids[0], scores[0]
