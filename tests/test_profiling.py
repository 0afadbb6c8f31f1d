"""Efficiency profile and its callback: every key, sane orderings; no wall-time thresholds."""

from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import Logger

from cvr.callbacks import EfficiencyProfile
from cvr.data.datamodule import StoreDataModule
from cvr.data.synthetic import build_synthetic_store
from cvr.models.ctr import FFM, FM, FwFM
from cvr.models.embeddings import QREmbedding
from cvr.models.module import CTRModule
from cvr.profiling import checkpoint_bytes, embedding_bytes, profile_model
from tests.models.test_embeddings import CARDS, random_ids

BATCHES = (1, 16, 64)
FAST = {"batch_sizes": BATCHES, "throughput_batch": 256, "repeats": 5}


def profile_keys(prefix="eff/"):
    keys = {"params", "embedding_bytes", "checkpoint_bytes", "threads", "inference_peak_rss_mb"}
    keys |= {"throughput_b256_per_s", "embedding_bytes/embedding", "embedding_bytes/linear"}
    keys |= {f"latency_b{b}_p{p}_us" for b in BATCHES for p in (50, 95, 99)}
    return {prefix + k for k in keys}


def check_profile(profile, prefix="eff/"):
    assert profile_keys(prefix) <= set(profile)
    figures = {k: v for k, v in profile.items() if k.startswith(prefix)}
    assert all(isinstance(v, float) and v > 0 for v in figures.values())
    for b in BATCHES:
        p50, p95, p99 = (profile[f"{prefix}latency_b{b}_p{p}_us"] for p in (50, 95, 99))
        assert p50 <= p95 <= p99
    total = profile[f"{prefix}embedding_bytes"]
    parts = (
        profile[f"{prefix}embedding_bytes/embedding"] + profile[f"{prefix}embedding_bytes/linear"]
    )
    assert total == parts


def test_profile_model_reports_every_figure():
    model = FFM(CARDS, dim=4, embedding=lambda **kw: QREmbedding(**kw, threshold=50))
    threads_before = torch.get_num_threads()
    profile = profile_model(model, random_ids(CARDS, 100).numpy(), threads=1, **FAST)
    check_profile(profile)
    assert profile["eff/params"] == sum(p.numel() for p in model.parameters())
    assert profile["eff/embedding_bytes/embedding"] == model.embedding.storage_bytes()
    assert profile["eff/embedding_bytes/linear"] == sum(CARDS) * 4
    assert profile["eff/threads"] == 1
    assert torch.get_num_threads() == threads_before and model.training


def test_profile_times_the_backend_it_is_given():
    module = CTRModule(FM(CARDS, dim=2))
    backend = module.scoring_backend()
    calls = []
    original = backend.logits
    backend.logits = lambda ids: calls.append(len(ids)) or original(ids)
    profile_model(module, random_ids(CARDS, 10).numpy(), backend=backend, **FAST)
    # warm-up + timed calls at each batch size, then the throughput batch
    assert set(calls) == {*BATCHES, 256} and len(calls) >= 3 * 5


def test_profile_times_the_path_the_predictor_serves(monkeypatch):
    """Without a backend, the profile asks select_backend for the serving choice, as the
    Predictor does: the fused kernels for an FM with plain tables, autograd otherwise."""
    import cvr.profiling as profiling
    from cvr.backends import fused_unsupported

    chosen = []
    real = profiling.select_backend

    def spy(*args, **kwargs):
        backend, reason = real(*args, **kwargs)
        chosen.append(backend.name)
        return backend, reason

    monkeypatch.setattr(profiling, "select_backend", spy)
    profile_model(FM(CARDS, dim=2), random_ids(CARDS, 10).numpy(), **FAST)
    profile_model(FwFM(CARDS, dim=2), random_ids(CARDS, 10).numpy(), **FAST)
    expected = "fused" if fused_unsupported(FM(CARDS, dim=2)) is None else "autograd"
    assert chosen == [expected, "autograd"]


def test_checkpoint_bytes_is_the_file_size_when_there_is_a_file(tmp_path: Path):
    model = FM(CARDS, dim=2)
    serialized = checkpoint_bytes(model)
    assert serialized > model.embedding.storage_bytes()
    path = tmp_path / "model.ckpt"
    path.write_bytes(b"x" * 123)
    assert checkpoint_bytes(model, path) == 123
    assert checkpoint_bytes(model, tmp_path / "missing.ckpt") == serialized
    assert set(embedding_bytes(model)) == {"embedding", "linear"}


class CaptureLogger(Logger):
    """Keeps the last value logged under each name."""

    def __init__(self):
        super().__init__()
        self.logged: dict[str, float] = {}

    @property
    def name(self):
        return "capture"

    @property
    def version(self):
        return 0

    def log_metrics(self, metrics, step=None):
        self.logged.update(metrics)

    def log_hyperparams(self, params, *args, **kwargs):
        pass


@pytest.fixture
def tiny_datamodule(tmp_path):
    store = build_synthetic_store(
        tmp_path / "cache",
        rows_train=1500,
        rows_val=300,
        rows_test=400,
        num_fields=5,
        user_fields=2,
        item_fields=1,
        total_values=600,
        seed=0,
        progress=False,
    )
    return StoreDataModule(store, batch_size=256, eval_batch_size=512)


def test_callback_logs_the_profile_after_fit_and_quantized_metrics_after_test(
    tmp_path, tiny_datamodule
):
    torch.manual_seed(0)
    module = CTRModule(FFM(tiny_datamodule.store.cardinalities, dim=2))
    profile = EfficiencyProfile(quantize=["int8"], **FAST)
    logger = CaptureLogger()
    checkpoints = ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor="val/auc", mode="max")
    trainer = L.Trainer(
        max_epochs=3,
        accelerator="cpu",
        logger=logger,
        callbacks=[profile, checkpoints],
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(module, datamodule=tiny_datamodule)

    check_profile(logger.logged)
    check_profile(logger.logged, prefix="eff/int8/")
    assert logger.logged["eff/train_samples_per_s"] > 0 and logger.logged["eff/epoch_seconds"] > 0
    assert len(profile.epochs) == 3 and all(n == 1500 for n, _ in profile.epochs)
    best = Path(checkpoints.best_model_path)
    assert logger.logged["eff/checkpoint_bytes"] == best.stat().st_size
    assert logger.logged["eff/int8/embedding_bytes"] < logger.logged["eff/embedding_bytes"]
    assert "eff/params" in module.last_metrics

    trainer.test(module, datamodule=tiny_datamodule, ckpt_path="best", verbose=False)
    quantized_auc, float_auc = logger.logged["test/int8/auc"], module.last_metrics["test/auc"]
    assert abs(quantized_auc - float_auc) < 0.01
    assert module.last_metrics["test/int8/logloss"] > 0


def test_disabled_callback_logs_nothing(tiny_datamodule):
    logger = CaptureLogger()
    trainer = L.Trainer(
        max_epochs=1,
        limit_train_batches=2,
        limit_val_batches=1,
        logger=logger,
        callbacks=[EfficiencyProfile(enabled=False, quantize=["fp16"])],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    module = CTRModule(FM(tiny_datamodule.store.cardinalities, dim=2))
    trainer.fit(module, datamodule=tiny_datamodule)
    trainer.test(module, datamodule=tiny_datamodule, verbose=False)
    assert not any(k.startswith(("eff/", "test/fp16/")) for k in logger.logged)


def test_unknown_precision_is_refused():
    with pytest.raises(ValueError, match="int4"):
        EfficiencyProfile(quantize=["int4"])


def test_random_sample_when_there_is_no_store():
    profile = EfficiencyProfile(sample_rows=300)
    sample = profile._sample_ids(L.Trainer(logger=False), FM(CARDS, dim=2))
    assert sample.shape == (300, len(CARDS)) and sample.dtype == np.int32
    assert np.all(sample < np.asarray(CARDS)) and np.all(sample >= 0)
