"""The vector database: learned tables published to Milvus, served, backed up and restored.

client.py      open a store by URI (a local path is Milvus Lite, http://host:port a server)
rows.py        a bundle's tables as rows (one per global feature id) and their checksum
collection.py  the collection layout, its `cvr.table` metadata, index/alias/read helpers
versions.py    publish to a new versioned collection, verify, move the alias; list,
               rollback, prune
table.py       the tables a Predictor reads from a collection: batched fetch by primary key
               through a hot-row cache bounded in bytes
cache.py       those caches: LRU (set-associative, vectorised) or the hottest rows, fixed
lite_server.py Milvus Lite in its own process (a managed server on 127.0.0.1 for a .db path)
export.py      logical export of a collection to Parquet for snapshots, and its restore
search.py      item vectors in a collection with an IVF_FLAT/HNSW index, for the retrieval bench
"""
