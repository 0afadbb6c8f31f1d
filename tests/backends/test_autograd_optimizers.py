"""The autograd backend's torch optimisers: the fused implementation where torch has one."""

from __future__ import annotations

import functools

import pytest
import torch

from cvr.backends.autograd import AutogradBackend, make_optimizer
from cvr.backends.base import Optimization
from cvr.models.ctr import FFM
from cvr.models.tables import FullEmbedding


def _train(model: torch.nn.Module, optimizer: torch.optim.Optimizer, steps: int = 30) -> None:
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        ids = torch.randint(0, 50, (64, 3), generator=g)
        labels = (torch.rand(64, generator=g) < 0.3).float()
        optimizer.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(ids), labels)
        loss.backward()
        optimizer.step()


@pytest.mark.parametrize("factory", [torch.optim.Adagrad, torch.optim.Adam, torch.optim.SGD])
def test_dense_gradients_train_in_the_fused_implementation_and_agree_with_the_loop(factory):
    trained = {}
    for case in ("loop", "fused"):  # loop: torch's default build on the CPU, the reference
        torch.manual_seed(0)
        model = FFM([50, 50, 50], dim=4)
        initial = torch.cat([p.detach().flatten() for p in model.parameters()])
        params = list(model.parameters())
        if case == "loop":
            optimizer = factory(params, lr=0.05)
        else:
            optimizer = make_optimizer(factory, params, 0.05, sparse_grads=False)
        assert bool(optimizer.defaults.get("fused")) is (case == "fused")
        _train(model, optimizer)
        trained[case] = torch.cat([p.detach().flatten() for p in model.parameters()])
    loop, fused = trained["loop"], trained["fused"]
    assert not torch.equal(loop, initial)  # it trained
    torch.testing.assert_close(fused, loop, rtol=1e-4, atol=1e-5)


def test_the_configs_own_choice_and_optimisers_without_fused_are_left_as_they_are():
    params = [torch.nn.Parameter(torch.zeros(3))]
    chosen = functools.partial(torch.optim.Adagrad, foreach=True)
    assert not make_optimizer(chosen, params, 0.1, False).defaults["fused"]
    sparse_adam = make_optimizer(torch.optim.SparseAdam, params, 0.1, False)
    assert "fused" not in sparse_adam.defaults


def test_sparse_gradients_keep_the_loop_and_train():
    torch.manual_seed(0)
    model = FFM([50, 50, 50], dim=4, embedding=functools.partial(FullEmbedding, sparse=True))
    optimization = Optimization(lr=0.05, dense=torch.optim.Adagrad, sparse=None)
    (optimizer,) = AutogradBackend(model, optimization).optimizers()
    assert not optimizer.defaults["fused"]
    before = [p.detach().clone() for p in model.parameters()]
    _train(model, optimizer, steps=2)  # torch's fused AdaGrad refuses sparse gradients
    assert any(not torch.equal(b, p) for b, p in zip(before, model.parameters(), strict=True))


def test_the_backend_builds_dense_tables_fused():
    model = FFM([50, 50, 50], dim=4)
    optimization = Optimization(lr=0.05, dense=functools.partial(torch.optim.Adagrad))
    (optimizer,) = AutogradBackend(model, optimization).optimizers()
    assert optimizer.defaults["fused"] is True
