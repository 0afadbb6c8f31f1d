"""The MIPS decomposition is exact: q·a + c(u) is the model's logit, for any weights."""

import numpy as np
import pytest
import torch
from torch import nn

from cvr.data.synthetic import build_synthetic_store
from cvr.models.ctr import FFM, FM, LR, FwFM
from cvr.models.embeddings import FullEmbedding
from cvr.retrieval.mips import (
    catalogue_items,
    field_embeddings,
    generate_catalogue,
    item_vectors,
    mips_dim,
    query_vectors,
    split_fields,
)

CARDS = [5, 9, 4, 7, 6, 3, 8]
# Item fields in the middle and at the end: the layout must not assume any field order.
SIDES = ["user", "item", "context", "user", "item", "context", "item"]
MODELS = {"fm": FM, "ffm": FFM, "fwfm": FwFM}


class ScaledEmbedding(nn.Module):
    """A non-plain variant (forces the generic path): each field's rows times its own scale."""

    def __init__(self, cardinalities, dim):
        super().__init__()
        self.inner = FullEmbedding(cardinalities, dim)
        self.scale = nn.Parameter(torch.linspace(0.5, 1.5, len(cardinalities)))

    def forward(self, ids):
        return self.inner(ids) * self.scale[None, :, None]


def random_model(kind, embedding=FullEmbedding, seed=0):
    model = MODELS[kind](CARDS, dim=3, embedding=embedding)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return model.eval()


def random_ids(n, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randint(0, c, (n,), generator=g) for c in CARDS], dim=1)


@pytest.mark.parametrize("embedding", [FullEmbedding, ScaledEmbedding], ids=["full", "generic"])
@pytest.mark.parametrize("kind", ["fm", "ffm", "fwfm"])
def test_inner_product_plus_constant_is_the_logit(kind, embedding):
    model = random_model(kind, embedding)
    query_fields, item_fields = split_fields(SIDES)
    queries, items = random_ids(40, seed=1), random_ids(50, seed=2)
    q, c = query_vectors(model, queries[:, query_fields], query_fields, item_fields)
    a = item_vectors(model, items[:, item_fields], query_fields, item_fields, chunk_rows=16)
    d = mips_dim(model, query_fields, item_fields)
    assert q.shape == (40, d) and a.shape == (50, d) and c.shape == (40,)
    assert q.dtype == a.dtype == c.dtype == np.float32
    # Every (query, item) pair: full ids take the query's query fields and the item's item fields.
    full = torch.empty(40, 50, len(CARDS), dtype=torch.int64)
    full[:, :, query_fields] = queries[:, None, query_fields]
    full[:, :, item_fields] = items[None, :, item_fields]
    with torch.no_grad():
        logits = model(full.reshape(-1, len(CARDS))).reshape(40, 50).numpy()
    np.testing.assert_allclose(q @ a.T + c[:, None], logits, atol=1e-4, rtol=0)


@pytest.mark.parametrize("kind", ["fm", "ffm", "fwfm"])
def test_top_k_by_inner_product_is_the_model_top_k(kind):
    model = random_model(kind, seed=3)
    query_fields, item_fields = split_fields(SIDES)
    items = np.unique(random_ids(300, seed=4)[:, item_fields].numpy(), axis=0)
    query = random_ids(1, seed=5)
    q, _ = query_vectors(model, query[:, query_fields], query_fields, item_fields)
    a = item_vectors(model, items, query_fields, item_fields)
    full = query.repeat(len(items), 1)
    full[:, item_fields] = torch.as_tensor(items, dtype=torch.int64)
    with torch.no_grad():
        scores = model(full).numpy()
    k = 10
    assert list(np.argsort(-(a @ q[0]))[:k]) == list(np.argsort(-scores)[:k])


def test_vector_sizes_follow_the_layouts():
    query_fields, item_fields = split_fields(SIDES)  # 4 query, 3 item fields, k = 3
    assert mips_dim(random_model("ffm"), query_fields, item_fields) == 4 * 3 * 3 + 1
    assert mips_dim(random_model("fwfm"), query_fields, item_fields) == 3 * 3 + 1
    assert mips_dim(random_model("fm"), query_fields, item_fields) == 3 + 1


def test_generic_path_matches_the_plain_table_gather():
    table = FullEmbedding(CARDS, 4, init_std=1.0)
    fields = torch.tensor([6, 1, 3])
    ids = random_ids(30, seed=6)[:, fields]
    from cvr.retrieval.mips import _generic_field_embeddings

    fast = field_embeddings(table, ids, fields, len(CARDS))
    generic = _generic_field_embeddings(table, ids, fields, len(CARDS))
    assert fast.shape == (30, 3, 4)
    torch.testing.assert_close(fast, generic)


def test_fields_must_partition_the_model_and_lr_is_refused():
    model = random_model("ffm")
    with pytest.raises(ValueError, match="partition"):
        query_vectors(model, np.zeros((1, 2)), [0, 2], [1, 4, 6])
    with pytest.raises(ValueError, match=r"expected int \(n, 4\)"):
        query_vectors(model, np.zeros((1, 3)), [0, 2, 3, 5], [1, 4, 6])
    with pytest.raises(TypeError, match="LR"):
        query_vectors(LR(CARDS), np.zeros((1, 4)), [0, 2, 3, 5], [1, 4, 6])
    with pytest.raises(ValueError, match="item field"):
        split_fields(["user", "context"])


SMALL = dict(
    rows_train=3000,
    rows_val=100,
    rows_test=100,
    num_fields=6,
    user_fields=2,
    item_fields=2,
    total_values=3000,
)


def test_catalogues_are_distinct_and_follow_the_split(tmp_path):
    store = build_synthetic_store(tmp_path, progress=False, **SMALL)
    _, item_fields = split_fields(store.sides)
    seen = catalogue_items(store, item_fields)
    rows = np.asarray(store.ids("train")[:, item_fields])
    assert len(np.unique(seen, axis=0)) == len(seen) == len(np.unique(rows, axis=0))
    first_count = (rows == seen[0]).all(axis=1).sum()
    assert first_count == max((rows == s).all(axis=1).sum() for s in seen[:50])

    drawn = generate_catalogue(store, item_fields, num_items=5000, seed=1)
    assert drawn.shape == (5000, 2) and drawn.dtype == np.int32
    assert len(np.unique(drawn, axis=0)) == 5000
    for column, field in enumerate(item_fields):
        # Only values seen in train are drawn, and the most frequent one is drawn most.
        train_counts = np.bincount(rows[:, column], minlength=store.cardinalities[field])
        drawn_counts = np.bincount(drawn[:, column], minlength=store.cardinalities[field])
        assert (drawn_counts[train_counts == 0] == 0).all()
        assert drawn_counts.argmax() == train_counts.argmax()
    assert not np.array_equal(drawn, generate_catalogue(store, item_fields, 5000, seed=2))
    possible = np.prod([len(np.unique(rows[:, c])) for c in range(2)])
    with pytest.raises(ValueError, match=f"only {possible} distinct items"):
        generate_catalogue(store, item_fields, num_items=possible + 1)


def _project_variants():
    """The embedding variants in cvr.models.embeddings besides the plain table, small settings."""
    import functools
    import inspect

    from cvr.models import embeddings

    small = {"buckets": 4, "threshold": 3, "collisions": 2, "alpha": 0.5, "init_std": 0.5}
    found = []
    for name in ("HashedEmbedding", "QREmbedding", "MixedDimEmbedding"):
        cls = getattr(embeddings, name, None)
        if cls is not None:
            accepted = inspect.signature(cls).parameters
            found.append(
                functools.partial(cls, **{k: v for k, v in small.items() if k in accepted})
            )
    return found


@pytest.mark.parametrize("kind", ["fm", "ffm", "fwfm"])
def test_decomposition_holds_for_every_project_embedding_variant(kind):
    variants = _project_variants()
    if not variants:
        pytest.skip("no embedding variants besides FullEmbedding yet")
    query_fields, item_fields = split_fields(SIDES)
    queries, items = random_ids(10, seed=8), random_ids(12, seed=9)
    for variant in variants:
        model = random_model(kind, variant, seed=10)
        q, c = query_vectors(model, queries[:, query_fields], query_fields, item_fields)
        a = item_vectors(model, items[:, item_fields], query_fields, item_fields)
        full = torch.empty(10, 12, len(CARDS), dtype=torch.int64)
        full[:, :, query_fields] = queries[:, None, query_fields]
        full[:, :, item_fields] = items[None, :, item_fields]
        with torch.no_grad():
            logits = model(full.reshape(-1, len(CARDS))).reshape(10, 12).numpy()
        np.testing.assert_allclose(q @ a.T + c[:, None], logits, atol=1e-4, rtol=0)


# --- entity search -------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["fm", "ffm", "fwfm"])
def test_an_entity_is_its_own_nearest_neighbour_by_cosine(kind):
    from cvr.retrieval.entity import nearest_entities

    model = random_model(kind, seed=11)
    for value in range(CARDS[4]):
        ids, scores = nearest_entities(model, field=4, value=value, k=4)
        assert ids[0] == value and scores[0] == pytest.approx(1.0, abs=1e-5)
        assert (np.diff(scores) <= 1e-6).all() and len(set(ids.tolist())) == 4


def test_entity_vectors_leave_out_the_untrained_own_field_slot():
    from cvr.retrieval.entity import entity_vectors

    model = random_model("ffm", seed=12)
    vectors = entity_vectors(model, field=1)
    assert vectors.shape == (CARDS[1], (len(CARDS) - 1) * 3)
    table = model.embedding.weight.detach().view(-1, len(CARDS), 3)
    row = table[model.embedding.offsets[1] + 2]  # value 2 of field 1
    expected = torch.cat([row[:1], row[2:]]).reshape(-1).numpy()
    np.testing.assert_allclose(vectors[2], expected)
    assert entity_vectors(random_model("fm"), field=1).shape == (CARDS[1], 3)


def test_inner_product_neighbours_are_sorted_and_an_index_can_be_reused():
    from cvr.retrieval.entity import entity_index, entity_vectors, nearest_entities

    model = random_model("ffm", seed=13)
    ids, scores = nearest_entities(model, field=6, value=3, k=5, metric="inner_product")
    vectors = entity_vectors(model, field=6)
    expected = vectors @ vectors[3]
    np.testing.assert_array_equal(ids, np.argsort(-expected)[:5])
    np.testing.assert_allclose(scores, np.sort(expected)[::-1][:5], rtol=1e-5)
    hnsw = entity_index(model, field=6, factory="HNSW32")
    assert nearest_entities(model, 6, 3, k=3, index=hnsw)[0][0] == 3
    with pytest.raises(ValueError, match="answers cosine"):
        nearest_entities(model, 6, 3, metric="inner_product", index=hnsw)
