"""Embedding variants: drop-in with every model, trainable, and sized as their formulas say."""

import math

import pytest
import torch
from omegaconf import OmegaConf

from cvr.backends.autograd import split_sparse_parameters
from cvr.models.ctr import FFM, FM, FwFM
from cvr.models.embeddings import (
    FullEmbedding,
    HashedEmbedding,
    MixedDimEmbedding,
    QREmbedding,
    power_rule_dims,
)
from cvr.pipelines.train import build_model
from tests.helpers import CONF

CARDS = [3, 20, 80, 150, 300, 500]
ROWS = 2000

VARIANTS = {
    "full": (FullEmbedding, {}),
    "hashed": (HashedEmbedding, {"buckets": 64}),
    "hashed_shared": (HashedEmbedding, {"buckets": 256, "shared": True}),
    "qr_mult": (QREmbedding, {"threshold": 50, "collisions": 8, "operation": "mult"}),
    "qr_add": (QREmbedding, {"threshold": 50, "collisions": 8, "operation": "add"}),
    "qr_concat": (QREmbedding, {"threshold": 50, "collisions": 8, "operation": "concat"}),
    "mixed_dim": (MixedDimEmbedding, {"alpha": 0.5, "min_dim": 2}),
}
MODELS = {"fm": FM, "ffm": FFM, "fwfm": FwFM}


def factory(variant, **extra):
    cls, options = VARIANTS[variant]
    return lambda **kw: cls(**kw, **options, **extra)


def random_ids(cards, rows, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randint(0, c, (rows,), generator=g) for c in cards], dim=1).int()


def tiny_dataset(seed=0):
    """ids int32 (ROWS, F) and labels from a random logistic model over the values."""
    g = torch.Generator().manual_seed(seed)
    ids = random_ids(CARDS, ROWS, seed)
    effects = [torch.randn(c, generator=g) for c in CARDS]
    logit = sum(effects[f][ids[:, f].long()] for f in range(len(CARDS))) - 0.5
    labels = torch.bernoulli(torch.sigmoid(logit), generator=g)
    return ids, labels


@pytest.mark.parametrize("model_name", MODELS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_every_variant_trains_with_every_model(variant, model_name):
    torch.manual_seed(0)
    ids, labels = tiny_dataset()
    model = MODELS[model_name](CARDS, dim=4, embedding=factory(variant))
    width = len(CARDS) * 4 if model_name == "ffm" else 4
    assert model.embedding(ids[:7]).shape == (7, len(CARDS), width)
    assert model(ids[:7]).shape == (7,)

    optimizer = torch.optim.Adagrad(model.parameters(), lr=0.1)
    losses = []
    for _ in range(25):
        optimizer.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(ids), labels)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses)
    assert sum(losses[-5:]) / 5 < losses[0] - 0.02
    # The interaction table learns too, not only the linear term.
    grads = [p.grad for p in model.embedding.parameters()]
    assert all(g is not None and g.abs().sum() > 0 for g in grads)


def hashed_bytes(cards, dim, buckets, shared):
    rows = buckets if shared else sum(min(n, buckets) for n in cards)
    return rows * dim * 4 + len(cards) * 2 * 8  # float32 rows + int64 (a, b) per field


def qr_bytes(cards, dim, threshold, collisions, operation):
    dim_q, dim_r = (dim - dim // 2, dim // 2) if operation == "concat" else (dim, dim)
    total = 0
    for n in cards:
        if n > threshold and collisions > 1:
            total += math.ceil(n / collisions) * dim_q + collisions * dim_r
        else:
            total += n * dim
    return total * 4


def mixed_bytes(cards, dim, alpha, min_dim):
    n_min = min(cards)
    total = 0
    for n in cards:
        d = min(dim, max(min_dim, math.floor(dim * (n / n_min) ** -alpha + 0.5)))
        total += n * d + (d * dim if d < dim else 0)
    return total * 4


@pytest.mark.parametrize("dim", [5, 24])
@pytest.mark.parametrize("variant", VARIANTS)
def test_storage_bytes_match_the_formula(variant, dim):
    cls, options = VARIANTS[variant]
    table = cls(CARDS, dim, **options)
    expected = {
        "full": lambda: sum(CARDS) * dim * 4,
        "hashed": lambda: hashed_bytes(CARDS, dim, 64, False),
        "hashed_shared": lambda: hashed_bytes(CARDS, dim, 256, True),
        "mixed_dim": lambda: mixed_bytes(CARDS, dim, 0.5, 2),
    }.get(variant, lambda: qr_bytes(CARDS, dim, 50, 8, options.get("operation")))()
    assert table.storage_bytes() == expected
    state = table.state_dict()
    assert sum(t.numel() * t.element_size() for t in state.values()) == expected
    assert not any("offsets" in k or "inverse_order" in k for k in state)


def test_hashing_is_deterministic_and_spreads_ids():
    table = HashedEmbedding([3, 5000], dim=2, buckets=64, seed=7)
    ids = torch.stack([torch.arange(5000) % 3, torch.arange(5000)], dim=1)
    buckets = table.bucket_ids(ids)
    again = HashedEmbedding([3, 5000], dim=2, buckets=64, seed=7).bucket_ids(ids)
    assert torch.equal(buckets, again)
    # The small field keeps its own rows; the large one uses every bucket about equally.
    assert torch.equal(buckets[:, 0], ids[:, 0])
    counts = torch.bincount(buckets[:, 1], minlength=64)
    assert counts.shape == (64,) and counts.min() > 0
    assert counts.max() < 2 * 5000 / 64
    other_seed = HashedEmbedding([3, 5000], dim=2, buckets=64, seed=8).bucket_ids(ids)
    assert not torch.equal(buckets[:, 1], other_seed[:, 1])


def test_hashed_coefficients_survive_a_state_dict_round_trip():
    source = HashedEmbedding(CARDS, dim=3, buckets=16, shared=True, seed=1)
    target = HashedEmbedding(CARDS, dim=3, buckets=16, shared=True, seed=2)
    target.load_state_dict(source.state_dict())
    ids = random_ids(CARDS, 50)
    assert torch.equal(source(ids), target(ids))


def test_shared_hashing_separates_fields():
    table = HashedEmbedding([1000, 1000], dim=2, buckets=997, shared=True)
    ids = torch.arange(1000).repeat(2, 1).T  # the same local id in both fields
    buckets = table.bucket_ids(ids)
    assert (buckets[:, 0] != buckets[:, 1]).float().mean() > 0.9
    assert buckets.max() < 997


@pytest.mark.parametrize("options", [{"threshold": 10_000}, {"threshold": 0, "collisions": 1}])
def test_qr_degenerates_to_the_full_table(options):
    torch.manual_seed(3)
    qr = QREmbedding(CARDS, dim=3, **options)
    full = FullEmbedding(CARDS, dim=3)
    assert qr.quotient is None and qr.storage_bytes() == full.storage_bytes()
    full.weight.data.copy_(qr.full.weight.data)
    ids = random_ids(CARDS, 64)
    assert torch.equal(qr(ids), full(ids))


@pytest.mark.parametrize("operation", ["mult", "add", "concat"])
def test_qr_composes_quotient_and_remainder_rows(operation):
    qr = QREmbedding([5, 100], dim=5, threshold=10, collisions=8, operation=operation)
    ids = torch.stack([torch.arange(100) % 5, torch.arange(100)], dim=1)
    out = qr(ids)
    q = qr.quotient.weight[ids[:, 1] // 8]
    r = qr.remainder.weight[ids[:, 1] % 8]
    expected = {"mult": lambda: q * r, "add": lambda: q + r, "concat": lambda: torch.cat([q, r], 1)}
    torch.testing.assert_close(out[:, 1], expected[operation]())
    torch.testing.assert_close(out[:, 0], qr.full.weight[ids[:, 0]])
    assert qr.quotient.weight.shape[0] == math.ceil(100 / 8) and qr.remainder.num_rows == 8
    # No two values share both their quotient and their remainder row.
    assert torch.unique(out[:, 1], dim=0).shape[0] == 100


def test_power_rule_dims():
    # n / n_min = 1, 10, 100 with alpha 0.5 -> 16, 16 / sqrt(10) = 5.06, 1.6 (clipped to 2).
    assert power_rule_dims([10, 100, 1000], dim=16, alpha=0.5, min_dim=2) == [16, 5, 2]
    assert power_rule_dims([10, 100, 1000], dim=16, alpha=0.0) == [16, 16, 16]
    with pytest.raises(ValueError, match="min_dim"):
        power_rule_dims([10], dim=4, alpha=0.5, min_dim=5)


def test_mixed_dim_with_alpha_zero_is_a_full_table():
    mixed = MixedDimEmbedding(CARDS, dim=4, alpha=0.0)
    full = FullEmbedding(CARDS, dim=4)
    assert mixed.storage_bytes() == full.storage_bytes()
    assert all(g.projection is None for g in mixed.dim_groups)
    full.weight.data.copy_(mixed.dim_groups[0].table.weight.data)
    ids = random_ids(CARDS, 32)
    assert torch.equal(mixed(ids), full(ids))


def test_mixed_dim_projects_each_field_with_its_own_matrix():
    mixed = MixedDimEmbedding([2, 50, 60], dim=6, alpha=1.0, min_dim=1)
    assert mixed.field_dims == [6, 1, 1]  # 6 * 25^-1 = 0.24 and 6 * 30^-1 = 0.2, clipped to 1
    ids = torch.tensor([[1, 7, 9]])
    group = mixed.dim_groups[1]  # width 1: fields 1 and 2, stacked
    rows = group.table.weight[group.table.offsets + torch.tensor([7, 9])]  # (2, 1)
    expected = torch.einsum("fd,fde->fe", rows, group.projection)
    torch.testing.assert_close(mixed(ids)[0, 1:], expected)


@pytest.mark.parametrize("variant", VARIANTS)
def test_sparse_gradients_reach_every_variant_table(variant):
    model = FFM(CARDS, dim=2, embedding=factory(variant, sparse=True))
    sparse, dense = split_sparse_parameters(model)
    tables = [m for m in model.embedding.modules() if isinstance(m, FullEmbedding)]
    assert {id(p) for p in sparse} == {id(t.weight) for t in tables}
    optimizers = [torch.optim.SparseAdam(sparse, lr=0.01), torch.optim.Adam(dense, lr=0.01)]
    ids, labels = tiny_dataset()
    loss = torch.nn.functional.binary_cross_entropy_with_logits(model(ids[:64]), labels[:64])
    loss.backward()
    assert all(t.weight.grad.is_sparse for t in tables)
    for opt in optimizers:
        opt.step()


@pytest.mark.parametrize(
    ("cls", "options", "message"),
    [
        (HashedEmbedding, {"buckets": 0}, "buckets"),
        (QREmbedding, {"operation": "xor"}, "operation"),
        (QREmbedding, {"collisions": 0}, "collisions"),
        (QREmbedding, {"operation": "concat", "threshold": 2}, "concat needs dim >= 2"),
        (MixedDimEmbedding, {"alpha": -1.0}, "alpha"),
    ],
)
def test_impossible_options_are_refused(cls, options, message):
    with pytest.raises(ValueError, match=message):
        cls(CARDS, dim=1, **options)


@pytest.mark.parametrize("name", ["full", "hashed", "qr", "mixed_dim"])
def test_embedding_configs_build_models_the_pipeline_way(name):
    cfg = OmegaConf.create(
        {
            "embedding": OmegaConf.load(CONF / "embedding" / f"{name}.yaml"),
            "model": {"_target_": "cvr.models.ctr.FFM", "backend": "autograd"},
        }
    )
    assert cfg.embedding.dim == 4
    model = build_model(cfg, CARDS)
    assert model.embedding.storage_bytes() > 0
    assert model(random_ids(CARDS, 5)).shape == (5,)
