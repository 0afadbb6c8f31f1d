"""Serving bundles: what export writes, that load rebuilds the same model, and what it refuses.

`make_bundle` and `make_file_bundle` are shared with the predictor, pyfunc, fuzz and snapshot
tests: a tiny synthetic (categorical ranks) or CSV-built (categorical, hashed, criteo_log and
quantile fields) store, a model with random weights, exported by `export_from_training`.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from cvr.data.build import build_file_store
from cvr.data.store import EncodedStore
from cvr.models.registry import build_model
from cvr.ops.manifest import ManifestError, sha256_file
from cvr.pipelines.run_folder import export_bundle, find_checkpoint, load_run_config
from cvr.pipelines.train import build_store, train
from cvr.serving.bundle import export_from_training, load_bundle
from tests.helpers import TINY_DATA, compose_train

FILE_SCHEMA = {
    "fields": [
        {"name": "site", "kind": "categorical", "side": "context"},
        {"name": "user", "kind": "categorical", "side": "user"},
        {"name": "ad", "kind": "categorical", "side": "item"},
        {"name": "price", "kind": "numeric", "side": "item"},
        {"name": "age", "kind": "numeric", "side": "user"},
    ],
    "labels": ["click"],
    "label": "click",
    "split": {"method": "random", "val": 0.1, "test": 0.1, "seed": 0},
}
FILE_PREPROCESS = {"hash_buckets": {"user": 50}, "numeric_rule": {"age": "quantile"}, "buckets": 4}


def randomize(model: torch.nn.Module, seed: int = 0) -> None:
    """Spread the weights so that predictions differ clearly between records."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(torch.randn(param.shape, generator=gen) * 0.3)


def make_bundle(tmp_path: Path, model: str = "ffm", overrides: tuple[str, ...] = ()):
    """(bundle dir, store, cfg, module) for a tiny synthetic store and random weights."""
    cfg = compose_train(tmp_path, [*TINY_DATA, "logger=none", f"model={model}", *overrides])
    store = build_store(cfg)
    # The bundle needs only the model; training wiring (backend, optimiser) is not involved.
    module = SimpleNamespace(model=build_model(cfg, store.cardinalities))
    randomize(module.model)
    metrics = {"test/auc": 0.5}
    bundle = export_from_training(module, store, cfg, metrics, tmp_path / "bundle")
    return bundle, store, cfg, module


def write_csv(path: Path, rows: int = 300, seed: int = 0) -> Path:
    """A CSV of the FILE_SCHEMA dataset: header, mixed missing values, 0/1 labels."""
    rng = np.random.default_rng(seed)
    lines = ["site,user,ad,price,age,click"]
    for _ in range(rows):
        site = f"s{rng.zipf(1.5) % 20}"
        user = f"u{rng.integers(200)}" if rng.random() > 0.1 else ""
        ad = str(rng.integers(30))
        price = f"{rng.lognormal(2, 1.5):.2f}" if rng.random() > 0.1 else ""
        age = str(int(rng.integers(18, 80)))
        lines.append(f"{site},{user},{ad},{price},{age},{int(rng.random() < 0.3)}")
    path.write_text("\n".join(lines) + "\n")
    return path


def make_file_bundle(tmp_path: Path, model: str = "ffm"):
    """(bundle dir, store, csv path) for a CSV-built store with every encoding rule."""
    csv = write_csv(tmp_path / "data.csv")
    store = build_file_store(
        "tiny_csv",
        "csv",
        path=csv,
        schema=FILE_SCHEMA,
        preprocess=FILE_PREPROCESS,
        cache_root=tmp_path / "cache",
    )
    cfg = compose_train(tmp_path, ["logger=none", f"model={model}"])
    module = SimpleNamespace(model=build_model(cfg, store.cardinalities))
    randomize(module.model, seed=1)
    bundle = export_from_training(module, store, cfg, {}, tmp_path / "bundle")
    return bundle, store, csv


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_bundle(tmp_path_factory.mktemp("bundle"))


def test_export_writes_every_file_with_its_checksum(tiny):
    bundle, store, _, _ = tiny
    names = sorted(p.name for p in bundle.iterdir())
    assert names == sorted(
        [
            "manifest.json",
            "model.pt",
            "model.json",
            "preprocessor.json",
            "schema.json",
            "config.yaml",
            "metrics.json",
        ]
    )
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["kind"] == "serving_bundle"
    assert manifest["store"]["fingerprint"] == store.fingerprint
    assert set(manifest["versions"]) >= {"cvr", "torch", "numpy"}
    assert manifest["files"] == {
        name: sha256_file(bundle / name) for name in names if name != "manifest.json"
    }
    # The preprocessor is the store's, byte for byte; the schema keeps fields, sides, labels.
    assert sha256_file(bundle / "preprocessor.json") == sha256_file(
        store.path / "preprocessor.json"
    )
    schema = json.loads((bundle / "schema.json").read_text())
    assert schema["field_names"] == store.field_names
    assert schema["sides"] == store.sides
    assert schema["labels"] == store.label_names
    assert OmegaConf.load(bundle / "config.yaml").model._target_ == "cvr.models.ctr.FFM"


def test_load_rebuilds_the_same_model(tiny):
    bundle, store, _, module = tiny
    loaded = load_bundle(bundle)
    ids = torch.from_numpy(np.array(store.ids("test")[:200]))
    with torch.no_grad():
        np.testing.assert_array_equal(loaded.model(ids).numpy(), module.model(ids).numpy())
    assert loaded.cardinalities == store.cardinalities
    assert loaded.schema.field_names == store.field_names
    assert not loaded.model.training


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("flip", r"changed file .*model\.pt"),
        ("delete", r"missing file .*preprocessor\.json"),
        ("extra", r"extra file .*notes\.txt"),
        ("manifest", r"manifest\.json: missing"),
    ],
)
def test_load_refuses_a_bundle_that_differs_from_its_manifest(tiny, tmp_path, damage, message):
    bundle = shutil.copytree(tiny[0], tmp_path / "copy")
    if damage == "flip":
        data = bytearray((bundle / "model.pt").read_bytes())
        data[len(data) // 2] ^= 0x01
        (bundle / "model.pt").write_bytes(bytes(data))
    elif damage == "delete":
        (bundle / "preprocessor.json").unlink()
    elif damage == "extra":
        (bundle / "notes.txt").write_text("hello")
    else:
        (bundle / "manifest.json").unlink()
    with pytest.raises(ManifestError, match=message):
        load_bundle(bundle)


def test_export_refuses_an_existing_folder_and_a_store_without_preprocessor(tiny, tmp_path):
    bundle, store, cfg, module = tiny
    with pytest.raises(FileExistsError, match="already exists"):
        export_from_training(module, store, cfg, {}, bundle)
    files = {k: v for k, v in store.meta["files"].items() if k != "preprocessor.json"}
    old_store = EncodedStore(store.path, {**store.meta, "files": files})
    with pytest.raises(ManifestError, match=r"no preprocessor\.json"):
        export_from_training(module, old_store, cfg, {}, tmp_path / "b")
    assert not (tmp_path / "b").exists()


def test_export_bundle_from_a_finished_run(tmp_path):
    cfg = compose_train(
        tmp_path,
        [
            *TINY_DATA,
            "logger=none",
            "trainer.max_epochs=1",
            "trainer.enable_progress_bar=false",
            "callbacks.efficiency_profile.enabled=false",
            "print_table=false",
        ],
    )
    train(cfg)
    run_dir = Path(cfg.paths.output_dir)
    # Hydra saves the composed config into .hydra/; compose() does not, so do it here.
    (run_dir / ".hydra").mkdir()
    OmegaConf.save(cfg, run_dir / ".hydra" / "config.yaml", resolve=True)
    checkpoint = find_checkpoint(run_dir)
    assert checkpoint.name.startswith("epoch")

    bundle = export_bundle(run_dir, tmp_path / "bundle")
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["source_checkpoint"]["sha256"] == sha256_file(checkpoint)
    assert json.loads((bundle / "metrics.json").read_text()) == json.loads(
        (run_dir / "metrics.json").read_text()
    )
    # The bundle's weights are the checkpoint's.
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"]
    loaded = load_bundle(bundle)
    for name, tensor in loaded.model.state_dict().items():
        torch.testing.assert_close(tensor, state[f"model.{name}"], rtol=0, atol=0)

    last = export_bundle(run_dir / "checkpoints" / "last.ckpt", tmp_path / "last")
    assert json.loads((last / "manifest.json").read_text())["source_checkpoint"]["path"].endswith(
        "last.ckpt"
    )


def test_run_config_resolves_hydra_values_from_the_saved_hydra_yaml(tmp_path):
    hydra_dir = tmp_path / ".hydra"
    hydra_dir.mkdir()
    (hydra_dir / "config.yaml").write_text("name: ${hydra:runtime.choices.model}-x\n")
    (hydra_dir / "hydra.yaml").write_text("hydra:\n  runtime:\n    choices:\n      model: fm\n")
    assert load_run_config(tmp_path).name == "fm-x"
    with pytest.raises(FileNotFoundError, match="not a run folder"):
        load_run_config(tmp_path / "nowhere")
