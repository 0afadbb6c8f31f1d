"""Fused numba kernels against autograd + torch.optim, and against a looped FFM reference."""

from __future__ import annotations

import copy
import functools
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

from cvr.kernels import (
    FusedFFMTrainer,
    FusedFMTrainer,
    FusedTrainer,
    fused_available,
    fused_logits,
)
from cvr.kernels.fused import ADAGRAD, ADAGRAD_RSQRT
from cvr.models.ctr import FFM, FM, LR, FwFM
from cvr.models.embeddings import HashedEmbedding

CARDS = [5, 3, 8, 2, 6]


def random_model(kind, cards=CARDS, dim=4, seed=0, scale=0.3):
    """A model whose every parameter (bias, linear, vectors) is nonzero and random."""
    torch.manual_seed(seed)
    model = kind(cards, dim=dim)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * scale)
    return model


def random_ids(cards, rows, seed=0):
    rng = np.random.default_rng(seed)
    return np.stack([rng.integers(0, c, rows) for c in cards], axis=1).astype(np.int32)


def looped_ffm(model, ids):
    """The FFM definition, one example and one field pair at a time, in float64."""
    F, k = model.num_fields, model.dim
    V = model.embedding.weight.detach().double().view(-1, F, k)
    w = model.linear.weight.detach().double()[:, 0]
    off = model.embedding.offsets.tolist()
    out = []
    for row in ids.tolist():
        g = [off[f] + x for f, x in enumerate(row)]
        z = float(model.bias.detach()) + sum(float(w[r]) for r in g)
        for i in range(F):
            for j in range(i + 1, F):
                z += float(V[g[i], j] @ V[g[j], i])
        out.append(z)
    return np.array(out)


def reference_steps(model, ids, labels, optimizer, **hp):
    """Autograd + torch.optim, one example per step, in order. Returns (model, optim, losses)."""
    ref = copy.deepcopy(model)
    if optimizer == "adagrad":
        opt = torch.optim.Adagrad(ref.parameters(), **hp)
    else:
        opt = torch.optim.SGD(ref.parameters(), **hp)
    losses = []
    for e in range(len(ids)):
        opt.zero_grad()
        logit = ref(torch.from_numpy(ids[e : e + 1]))
        loss = nn.functional.binary_cross_entropy_with_logits(
            logit, torch.from_numpy(labels[e : e + 1])
        )
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return ref, opt, losses


def touched_rows(model, ids):
    return np.unique(ids.astype(np.int64) + model.embedding.offsets.numpy())


def test_fused_available():
    ok, reason = fused_available()
    assert ok, reason
    assert reason == ""


def test_unavailable_without_numba_reports_why():
    """A process where numba cannot be imported still imports cvr.kernels and says why."""
    code = (
        "import sys; sys.modules['numba'] = None\n"
        "from cvr.kernels import fused_available\n"
        "print(fused_available())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.startswith("(False, 'numba import failed"), out.stdout + out.stderr


@pytest.mark.parametrize("kind", [FM, FFM])
@pytest.mark.parametrize("dim", [3, 4, 6])  # the three copy word widths: int32, complex128, int64
def test_logits_match_autograd(kind, dim):
    model = random_model(kind, dim=dim)
    ids = random_ids(CARDS, 5000)  # enough rows for the threaded path to split the batch
    expected = model(torch.from_numpy(ids)).detach().numpy()
    got = fused_logits(model, ids, threads=1)
    assert got.dtype == np.float32 and got.shape == (5000,)
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)
    # The threaded path computes each example the same way: bitwise equal.
    np.testing.assert_array_equal(fused_logits(model, ids, threads=2), got)
    np.testing.assert_array_equal(fused_logits(model, torch.from_numpy(ids).long()), got)


def test_ffm_logits_match_looped_reference():
    model = random_model(FFM, dim=4)
    ids = random_ids(CARDS, 50, seed=1)
    np.testing.assert_allclose(fused_logits(model, ids), looped_ffm(model, ids), atol=1e-5)


def test_ffm_gather_is_bit_exact_on_zeros_and_denormals():
    """The k-float chunks are copied through wider words: zeros, denormals, -0.0 must survive."""
    model = random_model(FFM, dim=4)
    with torch.no_grad():
        V = model.embedding.weight
        V[::2] = 0.0
        V[1::3, :4] = 1e-41  # float32 denormal; paired with 0.0 it is a denormal double pattern
        V[1::4, 4:8] = -0.0
    ids = random_ids(CARDS, 100, seed=2)
    np.testing.assert_allclose(fused_logits(model, ids), looped_ffm(model, ids), atol=1e-5)


@pytest.mark.parametrize("kind", [FM, FFM])
@pytest.mark.parametrize(
    ("optimizer", "hp"),
    [
        ("adagrad", {"lr": 0.1, "eps": 1e-10, "initial_accumulator_value": 0.0}),
        ("adagrad", {"lr": 0.05, "eps": 1e-6, "initial_accumulator_value": 0.1}),
        # the default recipe's settings: FFM takes the reciprocal-sqrt step
        ("adagrad", {"lr": 0.02, "eps": 1e-10, "initial_accumulator_value": 1.0}),
        ("sgd", {"lr": 0.1}),
    ],
)
def test_one_example_step_matches_torch(kind, optimizer, hp):
    model = random_model(kind)
    before = copy.deepcopy(model)
    ids = random_ids(CARDS, 1, seed=3)
    labels = np.array([1.0], np.float32)
    ref, _, losses = reference_steps(model, ids, labels, optimizer, **hp)

    loss = FusedTrainer(model, optimizer=optimizer, **hp).train_batch(ids, labels)

    assert loss == pytest.approx(losses[0], abs=1e-6)
    for (name, p), q in zip(model.named_parameters(), ref.parameters(), strict=True):
        np.testing.assert_allclose(p.detach(), q.detach(), atol=1e-6, rtol=0, err_msg=name)
    # Rows the example did not use are bitwise unchanged.
    untouched = np.setdiff1d(np.arange(model.embedding.num_rows), touched_rows(model, ids))
    for table in ("embedding", "linear"):
        now = getattr(model, table).weight.detach().numpy()[untouched]
        was = getattr(before, table).weight.detach().numpy()[untouched]
        np.testing.assert_array_equal(now, was)


@pytest.mark.parametrize("kind", [FM, FFM])
@pytest.mark.parametrize(
    ("optimizer", "hp"),
    [
        ("adagrad", {"lr": 0.1}),
        ("adagrad", {"lr": 0.1, "initial_accumulator_value": 1.0}),  # FFM: reciprocal sqrt
        ("sgd", {"lr": 0.1}),
    ],
)
def test_sequential_examples_match_sequential_torch_steps(kind, optimizer, hp):
    model = random_model(kind, seed=4)
    before = copy.deepcopy(model)
    ids = random_ids(CARDS, 12, seed=5)
    ids[:4, 0] = 2  # shared rows: later examples must see earlier updates
    labels = (np.arange(12) % 3 == 0).astype(np.float32)
    ref, opt, losses = reference_steps(model, ids, labels, optimizer, **hp)

    trainer = FusedTrainer(model, optimizer=optimizer, **hp)
    loss = (
        trainer.train_batch(ids[:5], labels[:5]) * 5 + trainer.train_batch(ids[5:], labels[5:]) * 7
    )

    assert loss / 12 == pytest.approx(np.mean(losses), abs=1e-6)
    for (name, p), q in zip(model.named_parameters(), ref.parameters(), strict=True):
        np.testing.assert_allclose(p.detach(), q.detach(), atol=1e-6, rtol=0, err_msg=name)
    if optimizer == "adagrad":
        state = trainer.state_dict()
        for name, p in ref.named_parameters():
            expected = opt.state[p]["sum"].numpy().reshape(-1)
            np.testing.assert_allclose(state[name], expected, atol=1e-6, rtol=0, err_msg=name)
    untouched = np.setdiff1d(np.arange(model.embedding.num_rows), touched_rows(model, ids))
    np.testing.assert_array_equal(
        model.embedding.weight.detach()[untouched], before.embedding.weight.detach()[untouched]
    )


@pytest.mark.parametrize("kind", [FM, FFM])
@pytest.mark.parametrize("optimizer", ["adagrad", "sgd"])
def test_weight_decay_matches_torch_on_touched_rows(kind, optimizer):
    """torch decays every row of a dense parameter; the fused step decays the touched ones (as
    libffm does), so the two agree on the rows, linear weights and bias an example uses."""
    model = random_model(kind, seed=6)
    ids = random_ids(CARDS, 3, seed=7)
    labels = np.array([0.0, 1.0, 0.0], np.float32)
    hp = {"lr": 0.1, "weight_decay": 0.05}
    ref, _, _ = reference_steps(model, ids[:1], labels[:1], optimizer, **hp)
    FusedTrainer(model, optimizer=optimizer, **hp).train_batch(ids[:1], labels[:1])
    rows = touched_rows(model, ids[:1])
    for table in ("embedding", "linear"):
        np.testing.assert_allclose(
            getattr(model, table).weight.detach()[rows],
            getattr(ref, table).weight.detach()[rows],
            atol=1e-6,
        )
    np.testing.assert_allclose(model.bias.detach(), ref.bias.detach(), atol=1e-6)


@pytest.mark.parametrize(
    ("optimizer", "eps", "init", "fast"),
    [
        ("adagrad", 1e-10, 1.0, True),
        ("adagrad", 1e-10, 0.1, True),
        ("adagrad", 1e-10, 0.0, False),  # s can be 0: the estimate would give 0 * inf
        ("adagrad", 1e-6, 0.1, False),  # eps is visible next to sqrt(0.1) in float32
        ("sgd", 1e-10, 1.0, False),
    ],
)
def test_reciprocal_sqrt_step_only_where_eps_cannot_matter(optimizer, eps, init, fast):
    trainer = FusedTrainer(
        random_model(FFM), optimizer=optimizer, eps=eps, initial_accumulator_value=init
    )
    assert (trainer.kernel_opt == ADAGRAD_RSQRT) is fast


def test_reciprocal_sqrt_step_matches_exact_step_over_many_updates():
    """Reciprocal-sqrt estimate + Newton step vs the sqrt-and-divide step (same maths, eps
    negligible): after 2,000 examples of repeated updates on 5 fields the parameters agree."""
    cards, ids, labels = make_learnable_problem(rows=2_000, fields=5, card=20, seed=3)
    models = {}
    for fast in (True, False):
        model = random_model(FFM, cards=cards, seed=9, scale=0.1)
        trainer = FusedTrainer(model, lr=0.05, initial_accumulator_value=1.0)
        if not fast:
            trainer.kernel_opt = ADAGRAD  # force the exact step
        trainer.train_batch(ids, labels)
        models[fast] = model
    for (name, p), q in zip(
        models[True].named_parameters(), models[False].parameters(), strict=True
    ):
        np.testing.assert_allclose(p.detach(), q.detach(), atol=2e-5, rtol=0, err_msg=name)


def make_learnable_problem(rows, fields=8, card=100, seed=0):
    """Ids with mildly uneven per-field frequencies, labels drawn from a seeded random FFM."""
    rng = np.random.default_rng(seed)
    cards = [int(c) for c in rng.integers(card // 2, card * 2, fields)]
    probs = [rng.dirichlet(np.full(c, 5.0)) for c in cards]
    ids = np.stack([rng.choice(c, rows, p=p) for c, p in zip(cards, probs, strict=True)], 1)
    truth = random_model(FFM, cards=cards, dim=4, seed=seed + 1, scale=0.4)
    with torch.no_grad():
        truth.bias.fill_(-1.0)
    z = truth(torch.from_numpy(ids)).detach().numpy()
    labels = (rng.random(rows) < 1 / (1 + np.exp(-z))).astype(np.float32)
    return cards, ids.astype(np.int32), labels


def logloss(model, ids, labels):
    z = fused_logits(model, ids).astype(np.float64)
    return float(np.mean(np.maximum(z, 0) - z * labels + np.log1p(np.exp(-np.abs(z)))))


@pytest.mark.parametrize("kind", [FM, FFM])
def test_hogwild_reaches_single_thread_logloss(kind):
    """Same data, order and init: two lock-free threads end where one thread does.

    Hogwild interleaves the two halves of each batch, which perturbs the result like a reshuffle
    would, plus lost updates on rows both threads touch at once. With ~100 values per field
    (little contention) that stays well inside the tolerance; with ~16 values per field two
    threads collide on most examples and the gap grows to about the tolerance.
    """
    cards, ids, labels = make_learnable_problem(rows=50_000)
    train, val = slice(0, 40_000), slice(40_000, None)
    results = {}
    for threads in (1, 2):
        model = random_model(kind, cards=cards, seed=5, scale=0.1)
        trainer = FusedTrainer(model, optimizer="adagrad", lr=0.05, threads=threads)
        for _epoch in range(2):
            for s in range(0, 40_000, 2048):  # >= 2 Hogwild pieces per batch for FM and FFM
                trainer.train_batch(ids[train][s : s + 2048], labels[train][s : s + 2048])
        results[threads] = logloss(model, ids[val], labels[val])
    rate = labels[val].mean()
    base = -(rate * np.log(rate) + (1 - rate) * np.log(1 - rate))
    assert results[1] < base - 0.02, (results, base)  # it learned something
    assert abs(results[2] - results[1]) < 0.002, results


def test_state_dict_round_trip_resumes_exactly():
    ids = random_ids(CARDS, 40, seed=8)
    labels = (np.arange(40) % 2).astype(np.float32)
    model = random_model(FFM, seed=9)
    trainer = FusedFFMTrainer(model, lr=0.1, initial_accumulator_value=0.01)
    trainer.train_batch(ids[:20], labels[:20])
    params = copy.deepcopy(model.state_dict())
    state = {k: v.clone() for k, v in trainer.state_dict().items()}
    trainer.train_batch(ids[20:], labels[20:])

    resumed = random_model(FFM, seed=10)
    resumed.load_state_dict(params)  # in-place copy, as a checkpoint restore does
    trainer2 = FusedFFMTrainer(resumed, lr=0.1, initial_accumulator_value=0.01)
    trainer2.load_state_dict(state)
    trainer2.train_batch(ids[20:], labels[20:])
    for name, p in model.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[name], p, rtol=0, atol=0, msg=name)
    assert set(state) == {"embedding.weight", "linear.weight", "bias"}
    assert FusedFMTrainer(FM(CARDS), optimizer="sgd").state_dict() == {}


def test_trainer_and_logits_follow_rebound_parameters():
    """Replacing a parameter tensor (or its .data) keeps training and scoring the live model."""
    model = random_model(FFM)
    ids = random_ids(CARDS, 4)
    trainer = FusedTrainer(model, optimizer="sgd", lr=0.1)
    fused_logits(model, ids)  # caches views of the current tensors
    model.embedding.weight = nn.Parameter(model.embedding.weight.detach() * 2)
    model.linear.weight.data = model.linear.weight.detach() + 1
    expected = model(torch.from_numpy(ids)).detach().numpy()
    np.testing.assert_allclose(fused_logits(model, ids), expected, atol=1e-5)
    before = model.embedding.weight.detach().clone()
    trainer.train_batch(ids, np.ones(4, np.float32))
    assert not torch.equal(model.embedding.weight.detach(), before)


@pytest.mark.parametrize("threads", [1, 2])
def test_out_of_range_ids_raise_before_any_update(threads):
    model = random_model(FFM)
    before = copy.deepcopy(model.state_dict())
    ids = random_ids(CARDS, 2000)
    ids[1500, 2] = CARDS[2]
    with pytest.raises(IndexError, match="row 1500, field 2"):
        FusedTrainer(model, threads=threads).train_batch(ids, np.zeros(2000, np.float32))
    for name, p in model.state_dict().items():
        torch.testing.assert_close(p, before[name], rtol=0, atol=0)
    ids[1500, 2] = -1
    with pytest.raises(IndexError, match="row 1500, field 2"):
        fused_logits(model, ids, threads=threads)
    wide = ids.astype(np.int64)
    wide[1500, 2] = 2**32 + 1  # would wrap to a valid 1 if narrowed blindly
    with pytest.raises(IndexError, match="int32 range"):
        fused_logits(model, wide, threads=threads)


@pytest.mark.parametrize(
    "model",
    [
        LR(CARDS),
        FwFM(CARDS),
        FFM(CARDS, embedding=functools.partial(HashedEmbedding, buckets=4)),
    ],
    ids=["LR", "FwFM", "FFM-hashed"],
)
def test_rejects_unsupported_models(model):
    with pytest.raises(TypeError):
        FusedTrainer(model)
    with pytest.raises(TypeError):
        fused_logits(model, random_ids(CARDS, 2))


def test_hogwild_prefetches_rows_for_writing_by_default():
    """Two threads on one table: write-intent prefetches (bench_hogwild: 13.6 vs 16.3 CPU-us an
    example); one thread keeps read prefetches; an explicit setting wins either way."""
    cards = [5, 7, 3]
    one = FusedTrainer(random_model(FFM, cards=cards, seed=0), threads=1)
    two = FusedTrainer(random_model(FFM, cards=cards, seed=0), threads=2)
    assert not one.prefetches_for_writing
    assert two.prefetches_for_writing == (two.threads > 1)  # threads are capped at the cores
    one.prefetch_write, two.prefetch_write = True, False
    assert one.prefetches_for_writing and not two.prefetches_for_writing


@pytest.mark.parametrize(("ahead", "write"), [(0, False), (2, False), (1, True)])
def test_prefetch_settings_are_hints_only(ahead, write):
    """How far ahead, and whether for writing, rows are prefetched changes no bit of training."""
    cards, ids, labels = make_learnable_problem(rows=600, fields=6, card=30, seed=4)
    models = []
    for setting in ((1, False), (ahead, write)):
        model = random_model(FFM, cards=cards, seed=2, scale=0.1)
        trainer = FusedTrainer(model, lr=0.05, initial_accumulator_value=1.0)
        trainer.prefetch_ahead, trainer.prefetch_write = setting
        trainer.train_batch(ids, labels)
        models.append(model)
    for p, q in zip(models[0].parameters(), models[1].parameters(), strict=True):
        assert torch.equal(p.detach(), q.detach())
