"""select_backend: one decision for every caller, refusals that say why, one lr key."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from cvr.backends import BackendError, Optimization, fused_unsupported, select_backend
from cvr.backends.autograd import AutogradBackend
from cvr.backends.fused import FusedBackend
from cvr.models.ctr import FFM, FM, LR, FwFM
from cvr.models.embeddings import HashedEmbedding
from tests.models.test_embeddings import CARDS, random_ids

FUSED_OK = fused_unsupported(FFM(CARDS, dim=2)) is None
needs_fused = pytest.mark.skipif(not FUSED_OK, reason="fused kernels unavailable here")


def hashed_ffm():
    return FFM(CARDS, dim=2, embedding=lambda **kw: HashedEmbedding(buckets=7, **kw))


@needs_fused
@pytest.mark.parametrize("kind", [FFM, FM])
def test_auto_picks_the_kernels_for_fm_and_ffm_with_plain_tables_on_one_cpu_process(kind):
    backend, reason = select_backend(kind(CARDS, dim=2), "auto", "cpu", None)
    assert isinstance(backend, FusedBackend) and "fused" in reason


@pytest.mark.parametrize(
    ("model", "why"),
    [
        (lambda: FwFM(CARDS, dim=2), "not FwFM"),
        (lambda: LR(CARDS), "not LR"),
        (hashed_ffm, "HashedEmbedding"),
    ],
)
def test_auto_falls_back_to_autograd_and_says_why(model, why):
    backend, reason = select_backend(model(), "auto", "cpu", None)
    assert isinstance(backend, AutogradBackend)
    assert why in reason


@pytest.mark.parametrize(
    ("device", "strategy", "optimization", "why"),
    [
        ("cpu", "ddp", None, "under strategy ddp every process would update its own copy"),
        ("cuda", None, None, "CPU code and this run is on cuda"),
        ("cpu", None, Optimization(name="sparse_adam", fused=None), "no fused equivalent"),
    ],
)
def test_auto_uses_autograd_where_the_kernels_would_be_wrong(device, strategy, optimization, why):
    backend, reason = select_backend(
        FFM(CARDS, dim=2), "auto", device, strategy, optimization=optimization
    )
    assert backend.name == "autograd" and why in reason


@pytest.mark.parametrize(
    ("device", "strategy", "optimization"),
    [("cpu", "ddp", None), ("cuda", None, None), ("cpu", None, Optimization(fused=None))],
)
def test_an_explicit_fused_request_that_cannot_be_honoured_is_refused(
    device, strategy, optimization
):
    with pytest.raises(
        BackendError, match=r"backend=fused cannot train FFM here.*backend=autograd"
    ):
        select_backend(FFM(CARDS, dim=2), "fused", device, strategy, optimization=optimization)


def test_unknown_request_is_refused_with_the_choices():
    with pytest.raises(BackendError, match=r"\['auto', 'fused', 'autograd'\]"):
        select_backend(FFM(CARDS, dim=2), "torchscript")


@needs_fused
def test_a_bug_in_the_kernel_constructor_surfaces_instead_of_falling_back(monkeypatch):
    import cvr.kernels

    def broken(*args, **kwargs):
        raise TypeError("a real bug")

    monkeypatch.setattr(cvr.kernels, "FusedTrainer", broken)
    backend, _ = select_backend(FFM(CARDS, dim=2), "auto", optimization=Optimization())
    ids = torch.from_numpy(random_ids(CARDS, 8).numpy())
    with pytest.raises(TypeError, match="a real bug"):
        backend.train_batch(ids, torch.ones(8))


@pytest.mark.parametrize("requested", ["fused", "autograd"])
def test_one_learning_rate_key_reaches_whichever_backend_trains(requested):
    if requested == "fused" and not FUSED_OK:
        pytest.skip("fused kernels unavailable here")
    model = FFM(CARDS, dim=2)
    backend, _ = select_backend(model, requested, optimization=Optimization(lr=0.2))
    backend.optimizers()
    if requested == "fused":
        assert backend.trainer.lr == 0.2
    else:
        assert backend.optimizers()[0].param_groups[0]["lr"] == 0.2
    default = Optimization(lr=None, default_lr={"fused": 0.03, "autograd": 0.07})
    backend, _ = select_backend(FFM(CARDS, dim=2), requested, optimization=default)
    assert backend.lr == {"fused": 0.03, "autograd": 0.07}[requested]


def test_a_scoring_backend_refuses_to_train():
    backend, _ = select_backend(FwFM(CARDS, dim=2), "auto")
    with pytest.raises(BackendError, match="for scoring"):
        backend.train_batch(torch.zeros(2, len(CARDS), dtype=torch.int32), torch.ones(2))


def test_autograd_step_equals_a_hand_written_torch_step():
    torch.manual_seed(0)
    model = FwFM(CARDS, dim=3)
    reference = FwFM(CARDS, dim=3)
    reference.load_state_dict(model.state_dict())
    ids = torch.from_numpy(random_ids(CARDS, 16).numpy())
    labels = (torch.arange(16) % 3 == 0).float()
    backend, _ = select_backend(model, "autograd", optimization=Optimization(lr=0.1))
    loss = backend.train_batch(ids, labels)
    opt = torch.optim.Adagrad(reference.parameters(), lr=0.1)
    expected = nn.functional.binary_cross_entropy_with_logits(reference(ids), labels)
    expected.backward()
    opt.step()
    assert float(loss) == pytest.approx(float(expected.detach()))
    for p, q in zip(model.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(p, q)


@needs_fused
def test_fused_and_autograd_logits_agree():
    model = FFM(CARDS, dim=4)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.3)
    ids = torch.from_numpy(random_ids(CARDS, 64).numpy())
    fused, _ = select_backend(model, "fused")
    autograd, _ = select_backend(model, "autograd")
    np.testing.assert_allclose(fused.logits(ids), autograd.logits(ids), atol=1e-5)
