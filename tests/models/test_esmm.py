"""ESMM: the stable loss against the naive formula, towers against looped references, sharing."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch.nn import functional

from cvr.models.ctr import FFM
from cvr.models.esmm import ESMM, ctcvr_logit, esmm_loss
from cvr.models.registry import SpecError, build, embedding_spec, model_spec

CARDS = [5, 7, 3, 4]


def naive_esmm_loss(ctr_logit, cvr_logit, click, conversion):
    """The paper's formula, probabilities formed explicitly (float64)."""
    pctr = torch.sigmoid(ctr_logit.double())
    pctcvr = pctr * torch.sigmoid(cvr_logit.double())
    y, y2 = click.double(), (click * conversion).double()
    ctr = -(y * torch.log(pctr) + (1 - y) * torch.log(1 - pctr)).mean()
    ctcvr = -(y2 * torch.log(pctcvr) + (1 - y2) * torch.log(1 - pctcvr)).mean()
    return ctr + ctcvr


def random_ids(cards, rows, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randint(0, c, (rows,), generator=g) for c in cards], dim=1)


def test_stable_loss_equals_naive_on_moderate_logits():
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(500, generator=g) * 3, torch.randn(500, generator=g) * 3
    click = (torch.rand(500, generator=g) < 0.3).float()
    conversion = (torch.rand(500, generator=g) < 0.4).float()
    stable = esmm_loss(a.double(), b.double(), click.double(), conversion.double())
    assert abs(float(stable) - float(naive_esmm_loss(a, b, click, conversion))) < 1e-6
    stable32 = esmm_loss(a, b, click, conversion)
    assert abs(float(stable32) - float(naive_esmm_loss(a, b, click, conversion))) < 1e-5


def test_ctcvr_logit_is_the_logit_of_the_product():
    a = torch.linspace(-8, 8, 41, dtype=torch.float64)
    b = torch.linspace(6, -6, 41, dtype=torch.float64)
    expected = torch.logit(torch.sigmoid(a) * torch.sigmoid(b))
    assert torch.allclose(ctcvr_logit(a, b), expected, atol=1e-9)


@pytest.mark.parametrize("a, b", list(itertools.product([-40.0, 0.0, 40.0], repeat=2)))
def test_loss_and_gradients_finite_at_extreme_logits(a, b):
    for click, conversion in [(0.0, 0.0), (1.0, 0.0), (1.0, 1.0)]:
        ctr = torch.tensor([a], requires_grad=True)
        cvr = torch.tensor([b], requires_grad=True)
        loss = esmm_loss(ctr, cvr, torch.tensor([click]), torch.tensor([conversion]))
        loss.backward()
        assert torch.isfinite(loss)
        assert torch.isfinite(ctr.grad).all() and torch.isfinite(cvr.grad).all()
    # The naive formula really breaks there (so the test can tell them apart).
    if a == 40.0 and b == 40.0:
        pctcvr = torch.sigmoid(torch.tensor(a)) * torch.sigmoid(torch.tensor(b))
        assert not torch.isfinite(torch.log(1 - pctcvr))


@torch.no_grad()
def looped_tower_logits(model: ESMM, ids: torch.Tensor) -> torch.Tensor:
    """Obviously-correct reference: per row, per tower, a Python loop over field pairs."""
    out = torch.zeros(len(ids), 2, dtype=torch.float64)
    f = model.num_fields
    tables = [model.embedding, model.cvr_embedding or model.embedding]
    for row in range(len(ids)):
        x = ids[row : row + 1]
        for task in range(2):
            z = float(model.bias[task]) + float(model.linear(x)[0, :, task].sum())
            # (table, its width k, the pair weights on its dots) this tower reads
            parts = [(tables[task], model.dim, model.pair_weight[task])]
            if model.private_dim:
                weights = model.private_pair_weight[task]
                parts.append((model.private[task], model.private_dim, weights))
            for table, k, weights in parts:
                emb = table(x)[0].double()
                pair = 0
                for i in range(f):
                    for j in range(i + 1, f):
                        if model.tower == "ffm":
                            v = emb.view(f, f, k)
                            dot = float(v[i, j] @ v[j, i])
                        else:
                            dot = float(emb[i] @ emb[j])
                        z += float(weights[pair]) * dot
                        pair += 1
            out[row, task] = z
    return out


@pytest.mark.parametrize("tower", ["ffm", "fm"])
@pytest.mark.parametrize(("share", "private_dim"), [(True, 0), (False, 0), (True, 2)])
def test_tower_logits_match_looped_reference(tower, share, private_dim):
    torch.manual_seed(0)
    model = ESMM(CARDS, dim=3, tower=tower, share_embedding=share, private_dim=private_dim)
    with torch.no_grad():
        model.pair_weight.uniform_(-1, 2)
        if private_dim:
            model.private_pair_weight.uniform_(-1, 2)
            for table in model.private:
                table.weight.normal_()
        model.bias.copy_(torch.tensor([0.3, -0.7]))
        model.linear.weight.normal_()
    ids = random_ids(CARDS, 12)
    got = model.head_logits(ids).double()
    assert torch.allclose(got, looped_tower_logits(model, ids), atol=1e-5)
    out = model(ids)
    assert torch.allclose(out[:, 0], got[:, 0].float())
    assert torch.allclose(out[:, 1], ctcvr_logit(got[:, 0], got[:, 1]).float(), atol=1e-5)


def test_ffm_ctr_tower_equals_plain_ffm_at_unit_pair_weights():
    torch.manual_seed(3)
    esmm = ESMM(CARDS, dim=2, tower="ffm")
    ffm = FFM(CARDS, dim=2)
    with torch.no_grad():
        ffm.embedding.weight.copy_(esmm.embedding.weight)
        esmm.linear.weight.normal_()
        ffm.linear.weight.copy_(esmm.linear.weight[:, :1])
    ids = random_ids(CARDS, 20)
    assert torch.allclose(esmm.head_logits(ids)[:, 0], ffm(ids), atol=1e-5)


def test_sharing_one_table_or_two():
    shared = ESMM(CARDS, dim=2, tower="ffm", share_embedding=True)
    separate = ESMM(CARDS, dim=2, tower="ffm", share_embedding=False)
    assert shared.cvr_embedding is None and separate.cvr_embedding is not None
    table = shared.embedding.weight.numel()
    assert sum(p.numel() for p in separate.parameters()) == (
        sum(p.numel() for p in shared.parameters()) + table
    )
    # With a shared table, the CVR loss moves the table the CTR tower reads.
    ids = random_ids(CARDS, 16)
    heads = shared.head_logits(ids)
    heads[:, 1].sum().backward()
    assert shared.embedding.weight.grad.abs().sum() > 0
    separate.head_logits(ids)[:, 1].sum().backward()
    assert separate.embedding.weight.grad is None or separate.embedding.weight.grad.abs().sum() == 0


@pytest.mark.parametrize("tower", ["ffm", "fm"])
def test_partial_sharing_shapes_parameters_and_gradients(tower):
    torch.manual_seed(1)
    shared = ESMM(CARDS, dim=3, tower=tower)
    partial = ESMM(CARDS, dim=3, tower=tower, private_dim=2)
    fields = len(CARDS) if tower == "ffm" else 1
    assert partial.embedding.weight.shape == shared.embedding.weight.shape
    assert [t.weight.shape for t in partial.private] == [(sum(CARDS), fields * 2)] * 2
    pairs = len(CARDS) * (len(CARDS) - 1) // 2
    extra = 2 * sum(CARDS) * fields * 2 + 2 * pairs  # two private tables, their pair weights
    count = sum(p.numel() for p in partial.parameters())
    assert count == sum(p.numel() for p in shared.parameters()) + extra
    ids = random_ids(CARDS, 16)
    assert partial.head_logits(ids).shape == (16, 2) and partial(ids).shape == (16, 2)
    # The CVR head moves the shared table and its own private table, never the CTR's.
    partial.head_logits(ids)[:, 1].sum().backward()
    ctr_private, cvr_private = partial.private
    assert partial.embedding.weight.grad.abs().sum() > 0
    assert cvr_private.weight.grad.abs().sum() > 0
    assert ctr_private.weight.grad is None or ctr_private.weight.grad.abs().sum() == 0
    assert partial.private_pair_weight.grad[1].abs().sum() > 0
    assert partial.private_pair_weight.grad[0].abs().sum() == 0
    # Private pair weights at 0 give back the fully shared model's logits.
    with torch.no_grad():
        partial.embedding.weight.copy_(shared.embedding.weight)
        partial.private_pair_weight.zero_()
    assert torch.allclose(partial.head_logits(ids), shared.head_logits(ids), atol=1e-6)


def test_private_dim_needs_a_shared_table():
    with pytest.raises(ValueError, match="private_dim"):
        ESMM(CARDS, dim=2, share_embedding=False, private_dim=2)
    with pytest.raises(ValueError, match="private_dim"):
        ESMM(CARDS, dim=2, private_dim=-1)


def test_training_step_lowers_the_esmm_loss():
    torch.manual_seed(0)
    model = ESMM(CARDS, dim=2, tower="fm")
    ids = random_ids(CARDS, 256, seed=5)
    click = (ids[:, 0] % 2 == 0).float()
    conversion = click * (ids[:, 1] % 3 == 0).float()
    opt = torch.optim.Adagrad(model.parameters(), lr=0.1)
    losses = []
    for _ in range(30):
        opt.zero_grad()
        ctr, cvr = model.head_logits(ids).unbind(1)
        loss = esmm_loss(ctr, cvr, click, conversion)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.7 * losses[0]
    # The backend's mean BCE over forward()'s (B, 2) output is half the ESMM loss.
    mean_bce = functional.binary_cross_entropy_with_logits(
        model(ids), torch.stack([click, conversion], dim=1)
    )
    ctr, cvr = model.head_logits(ids).unbind(1)
    assert torch.allclose(2 * mean_bce, esmm_loss(ctr, cvr, click, conversion), atol=1e-5)


def test_registry_builds_esmm_and_refuses_bad_options():
    spec = model_spec({"name": "esmm", "tower": "fm", "share_embedding": False})
    model = build(spec, embedding_spec({"name": "full", "dim": 3}), CARDS)
    assert isinstance(model, ESMM) and model.tower == "fm" and model.cvr_embedding is not None
    assert model_spec(spec.to_dict()) == spec  # what a bundle records rebuilds the same
    with pytest.raises(SpecError, match=r"model\.tower"):
        model_spec({"name": "esmm", "tower": "lr"})
    with pytest.raises(SpecError, match=r"model\.share_embedding"):
        model_spec({"name": "esmm", "share_embedding": "yes"})
    partial = model_spec({"name": "esmm", "tower": "ffm", "private_dim": 2})
    model = build(partial, embedding_spec({"name": "full", "dim": 3}), CARDS)
    assert model.private_dim == 2 and len(model.private) == 2
    assert model_spec(partial.to_dict()) == partial
    assert model_spec({"name": "esmm"}).options["private_dim"] == 0  # older bundles: shared
    for bad in (-1, 2.5, "2"):
        with pytest.raises(SpecError, match=r"model\.private_dim"):
            model_spec({"name": "esmm", "private_dim": bad})
    with pytest.raises(SpecError, match="unknown keys"):
        model_spec({"name": "ffm", "tower": "fm"})
