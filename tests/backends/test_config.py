"""The backend and optimizer config groups as a user types them."""

from __future__ import annotations

import hydra
import pytest
from hydra.errors import ConfigCompositionException

from cvr.backends import BackendError, fused_unsupported
from cvr.models.ctr import FFM
from cvr.models.registry import build_model
from cvr.pipelines.train import build_module
from tests.helpers import TINY_DATA, compose_train

CARDS = [5, 3, 8]


def module_for(tmp_path, overrides):
    """build_module with the config's own (never started) trainer."""
    cfg = compose_train(tmp_path, ["logger=none", *TINY_DATA, *overrides])
    trainer = hydra.utils.instantiate(cfg.trainer)(logger=False, enable_checkpointing=False)
    return build_module(cfg, build_model(cfg, CARDS), trainer)


@pytest.mark.parametrize("backend", ["auto", "autograd"])
def test_optimizer_lr_sets_the_rate_of_whichever_backend_trains(tmp_path, backend):
    module = module_for(tmp_path, [f"backend={backend}", "optimizer.lr=0.2"])
    if backend == "auto" and fused_unsupported(FFM(CARDS)) is not None:
        pytest.skip("fused kernels unavailable here")
    assert module.backend.name == ("fused" if backend == "auto" else "autograd")
    assert module.backend.lr == 0.2


def test_the_old_per_backend_lr_keys_are_refused(tmp_path):
    for key in ("optimizer.dense.lr=0.2", "optimizer.fused.lr=0.2", "model.backend=fused"):
        with pytest.raises(ConfigCompositionException):
            compose_train(tmp_path, ["logger=none", key])


def test_ddp_with_the_default_backend_trains_with_autograd_and_says_why(tmp_path):
    module = module_for(
        tmp_path,
        ["trainer=ddp"],
    )
    assert module.backend.name == "autograd"
    assert "under strategy ddp" in module.backend_reason


def test_an_explicit_fused_request_under_ddp_is_refused(tmp_path):
    with pytest.raises(BackendError, match=r"backend=fused .*strategy ddp.*backend=autograd"):
        module_for(
            tmp_path,
            ["trainer=ddp", "backend=fused"],
        )
