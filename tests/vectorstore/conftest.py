"""Fixtures of the vector store tests: tiny bundles (random weights) and fresh Lite stores."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cvr.vectorstore import client as store_client
from tests.helpers import TINY_DATA, compose_train


def make_random_bundle(
    tmp_path: Path, model: str = "ffm", overrides=(), tiny: bool = True, weight_seed: int = 0
):
    """(bundle dir, store) for a store of the config and a model with spread random weights."""
    from cvr.pipelines.train import build_model, build_store
    from cvr.serving.bundle import export_from_training

    data = TINY_DATA if tiny else []
    cfg = compose_train(tmp_path, [*data, "logger=none", f"model={model}", *overrides])
    store = build_store(cfg)
    net = build_model(cfg, store.cardinalities)
    gen = torch.Generator().manual_seed(weight_seed)
    with torch.no_grad():
        for param in net.parameters():
            param.copy_(torch.randn(param.shape, generator=gen) * 0.3)
    return export_from_training(net, store, cfg, {"test/auc": 0.5}, tmp_path / "bundle"), store


@pytest.fixture(scope="module")
def ffm_bundle(tmp_path_factory) -> Path:
    return make_random_bundle(tmp_path_factory.mktemp("ffm"), "ffm")[0]


@pytest.fixture
def lite_uri(tmp_path):
    """A new Milvus Lite data directory, closed after the test (releasing its lock)."""
    uri = str(tmp_path / "vectors.db")
    yield uri
    store_client.close(uri)
