"""Embedding tables over field-local ids: the contract, and the home every variant is imported from.

Every variant takes the same arguments and has the same call signature, so any model works with
any variant:

    table = Variant(cardinalities=[n_0, ..., n_{F-1}], dim=D, sparse=False, init_std=0.01,
                    **variant_options)
    table(ids)              # ids: int (batch, F) field-local ids -> float32 (batch, F, D)
    table.storage_bytes()   # bytes its state_dict holds (rows, projections, hash coefficients)
    table.num_rows          # rows stored over all of its tables

Field-local id 0 is the field's OOV/missing bucket. Per-field offsets into one global table are a
non-persistent buffer, added once per call.

| variant             | module                   | idea                                           |
|---------------------|--------------------------|------------------------------------------------|
| `FullEmbedding`     | `tables.py`              | one row per value of every field               |
| `HashedEmbedding`   | `hashed_embedding.py`    | hashing trick, `buckets` rows, field or shared |
| `QREmbedding`       | `qr_embedding.py`        | quotient-remainder compositional rows          |
| `MixedDimEmbedding` | `mixed_dim_embedding.py` | power-rule widths, projected back to `dim`     |

Every variant stores its rows in `FullEmbedding` blocks (each an `nn.Embedding`, so DDP
all-reduces their sparse gradients as sparse), so the sparse-optimiser split
(`cvr.backends.autograd.split_sparse_parameters`) and `quantize.quantize_model` reach every
variant's rows.
"""

from cvr.models.hashed_embedding import HashedEmbedding
from cvr.models.mixed_dim_embedding import MixedDimEmbedding, power_rule_dims
from cvr.models.qr_embedding import QREmbedding
from cvr.models.tables import EmbeddingTable, FullEmbedding, field_offsets, serialized_bytes

__all__ = [
    "EmbeddingTable",
    "FullEmbedding",
    "HashedEmbedding",
    "MixedDimEmbedding",
    "QREmbedding",
    "field_offsets",
    "power_rule_dims",
    "serialized_bytes",
]
