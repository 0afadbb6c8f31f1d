"""Fast vectorized models against slow, obviously-correct looped references."""

import itertools

import pytest
import torch

from cvr.models.ctr import FFM, FM, LR, FwFM
from cvr.models.embeddings import FullEmbedding

CARDS = [3, 7, 2, 11, 5]


def random_ids(cards, batch, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randint(0, c, (batch,), generator=g) for c in cards], dim=1)


def randomize(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return model


def looped_linear(model, ids):
    out = []
    for row in ids.tolist():
        z = model.bias.item()
        for f, x in enumerate(row):
            z += model.linear.weight[model.linear.offsets[f] + x, 0].item()
        out.append(z)
    return torch.tensor(out, dtype=torch.float64)


def looped_ffm(model, ids):
    """z = linear + sum_{i<j} <v[x_i, field j], v[x_j, field i]>, one pair at a time."""
    F, k = model.num_fields, model.dim
    table = model.embedding.weight.detach().view(-1, F, k)
    offsets = model.embedding.offsets
    z = looped_linear(model, ids)
    for b, row in enumerate(ids.tolist()):
        for i, j in itertools.combinations(range(F), 2):
            vi = table[offsets[i] + row[i], j]
            vj = table[offsets[j] + row[j], i]
            z[b] += float((vi * vj).sum())
    return z


def looped_fm(model, ids, pair_weight=None):
    offsets = model.embedding.offsets
    z = looped_linear(model, ids)
    for b, row in enumerate(ids.tolist()):
        for p, (i, j) in enumerate(itertools.combinations(range(model.num_fields), 2)):
            vi = model.embedding.weight.detach()[offsets[i] + row[i]]
            vj = model.embedding.weight.detach()[offsets[j] + row[j]]
            r = 1.0 if pair_weight is None else float(pair_weight[p])
            z[b] += r * float((vi * vj).sum())
    return z


@pytest.mark.parametrize("dim", [1, 4])
def test_ffm_matches_looped_reference(dim):
    model = randomize(FFM(CARDS, dim=dim))
    ids = random_ids(CARDS, 32)
    torch.testing.assert_close(model(ids).double(), looped_ffm(model, ids), atol=1e-5, rtol=1e-5)


def test_fm_matches_looped_reference():
    model = randomize(FM(CARDS, dim=3))
    ids = random_ids(CARDS, 32, seed=1)
    torch.testing.assert_close(model(ids).double(), looped_fm(model, ids), atol=1e-5, rtol=1e-5)


def test_fwfm_matches_looped_reference():
    model = randomize(FwFM(CARDS, dim=3))
    ids = random_ids(CARDS, 32, seed=2)
    expected = looped_fm(model, ids, pair_weight=model.pair_weight.detach())
    torch.testing.assert_close(model(ids).double(), expected, atol=1e-5, rtol=1e-5)


def test_lr_is_bias_plus_linear_weights():
    model = randomize(LR(CARDS))
    ids = random_ids(CARDS, 16, seed=3)
    torch.testing.assert_close(model(ids).double(), looped_linear(model, ids), atol=1e-6, rtol=0)


def test_ffm_is_field_aware():
    """Changing v[x_0, field 2] moves only the (0, 2) pair: the (0, 1) pair is unaffected."""
    model = randomize(FFM([2, 2, 2], dim=2))
    ids = torch.tensor([[1, 1, 1]])
    base = model(ids)
    table = model.embedding.weight.data.view(-1, 3, 2)
    # Zeroing x_2's vector for field 0 kills the (0, 2) pair term alone.
    v02 = table[model.embedding.offsets[0] + 1, 2].clone()
    v20 = table[model.embedding.offsets[2] + 1, 0].clone()
    table[model.embedding.offsets[2] + 1, 0] = 0
    assert torch.allclose(base - model(ids), (v02 * v20).sum(), atol=1e-6)


def test_embedding_offsets_keep_fields_apart():
    table = FullEmbedding([3, 4], dim=2)
    assert table.offsets.tolist() == [0, 3]
    assert table.weight.shape == (7, 2)
    ids = torch.tensor([[0, 0], [2, 3]])
    out = table(ids)
    assert torch.equal(out[0, 1], table.weight[3]) and torch.equal(out[1, 0], table.weight[2])
    assert table.storage_bytes() == 7 * 2 * 4


def test_ffm_table_is_one_tensor_of_features_by_fields_by_k():
    model = FFM(CARDS, dim=4)
    assert model.embedding.weight.shape == (sum(CARDS), len(CARDS) * 4)
    assert model.field_aware_embeddings(random_ids(CARDS, 2)).shape == (2, 5, 5, 4)


@pytest.mark.parametrize("bad", [{"dim": 0}, {"cardinalities": []}, {"cardinalities": [3, 0]}])
def test_invalid_model_arguments_are_refused(bad):
    kwargs = {"cardinalities": CARDS, "dim": 4, **bad}
    with pytest.raises(ValueError):
        FFM(**kwargs)


def test_sparse_embedding_gives_sparse_gradient_only_on_touched_rows():
    model = FFM(CARDS, dim=2, embedding=lambda **kw: FullEmbedding(**kw, sparse=True))
    ids = torch.tensor([[0, 1, 0, 2, 4]])
    model(ids).sum().backward()
    grad = model.embedding.weight.grad
    assert grad.is_sparse
    touched = set(grad.coalesce().indices()[0].tolist())
    assert touched <= {int(model.embedding.offsets[f] + x) for f, x in enumerate(ids[0].tolist())}
