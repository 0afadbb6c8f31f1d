"""Loading is never execution: hostile bundles, checkpoints and run configs run no code.

Each attack writes a marker file if the payload ever runs; the tests assert the load is refused
with a message naming the file and that no marker appears.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from cvr.checkpointing import CheckpointError, load_checkpoint
from cvr.models import registry
from cvr.ops.manifest import ManifestError, sha256_file
from cvr.pipelines.run_folder import export_bundle, run_store
from cvr.serving.bundle import MANIFEST, MODEL_SPEC, load_bundle
from cvr.serving.predictor import Predictor
from tests.serving.test_bundle import make_bundle


class _Payload:
    """A pickle that touches `marker` when unpickled (what a hostile .ckpt would carry)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _resign(bundle: Path, name: str) -> None:
    """Update the manifest's checksum of `name`, as an attacker who edits a bundle would."""
    manifest = json.loads((bundle / MANIFEST).read_text())
    manifest["files"][name] = sha256_file(bundle / name)
    (bundle / MANIFEST).write_text(json.dumps(manifest))


def _writes_marker(marker: Path) -> dict:
    """A config node that writes `marker` if instantiated (Hydra does not block shutil)."""
    return {"_target_": "shutil.copyfile", "src": __file__, "dst": str(marker)}


def _hostile_spec(bundle: Path, marker: Path, where: str) -> None:
    spec = json.loads((bundle / MODEL_SPEC).read_text())
    call = _writes_marker(marker)
    if where == "model_target":
        spec["model"] = call
    elif where == "nested_option":
        spec["model"] = {"_target_": "cvr.models.ctr.FFM", "backend": call}
    elif where == "embedding_target":
        spec["embedding"] = {**call, "dim": 4}
    elif where == "embedding_option":
        spec["embedding"] = {**spec["embedding"], "init_std": call}
    (bundle / MODEL_SPEC).write_text(json.dumps(spec))
    _resign(bundle, MODEL_SPEC)


@pytest.mark.parametrize(
    "where", ["model_target", "nested_option", "embedding_target", "embedding_option"]
)
def test_a_bundle_naming_a_callable_is_refused_and_runs_nothing(tmp_path, where):
    bundle, *_ = make_bundle(tmp_path)
    marker = tmp_path / "pwned"
    _hostile_spec(bundle, marker, where)
    with pytest.raises(ManifestError, match=r"model\.json"):
        Predictor.load(bundle)
    assert not marker.exists()


def test_a_pickle_in_place_of_the_weights_is_refused_and_runs_nothing(tmp_path):
    bundle, *_ = make_bundle(tmp_path)
    marker = tmp_path / "pwned"
    (bundle / "model.pt").write_bytes(pickle.dumps(_Payload(marker)))
    _resign(bundle, "model.pt")
    with pytest.raises(ManifestError, match=r"model\.pt: not a plain weights file"):
        load_bundle(bundle)
    assert not marker.exists()


def test_bundle_model_json_holds_only_registry_names_and_numbers(tmp_path):
    bundle, *_ = make_bundle(tmp_path)
    spec = json.loads((bundle / MODEL_SPEC).read_text())
    assert "_target_" not in json.dumps(spec)
    assert spec["model"]["name"] == "ffm"
    assert spec["embedding"]["name"] == "full"
    assert json.loads((bundle / MANIFEST).read_text())["model_class"] == "cvr.models.ctr.FFM"


def test_a_bundle_in_the_earlier_target_format_still_loads_through_the_registry(tmp_path):
    bundle, *_ = make_bundle(tmp_path)
    spec = json.loads((bundle / MODEL_SPEC).read_text())
    embedding = {"_target_": "cvr.models.embeddings.FullEmbedding", **spec["embedding"]}
    del embedding["name"]
    spec["model"] = {"_target_": "cvr.models.ctr.FFM", "backend": "fused"}
    spec["embedding"] = embedding
    (bundle / MODEL_SPEC).write_text(json.dumps(spec))
    _resign(bundle, MODEL_SPEC)
    assert type(load_bundle(bundle).model).__name__ == "FFM"


@pytest.mark.parametrize(
    ("node", "message"),
    [
        ({"name": "ffm", "backend": "gpu-magic"}, r"model\.backend: expected one of"),
        ({"name": "xgboost"}, r"model: unknown model 'xgboost'"),
        ({"name": "ffm", "layers": 3}, r"unknown keys \['layers'\]"),
    ],
)
def test_model_specs_are_validated(node, message):
    with pytest.raises(registry.SpecError, match=message):
        registry.model_spec(node)


@pytest.mark.parametrize(
    ("node", "message"),
    [
        ({"name": "full", "dim": -3}, r"embedding\.dim: expected an integer"),
        ({"name": "full", "dim": 2.5}, r"embedding\.dim: expected an integer, got 2\.5"),
        ({"name": "full", "dim": True}, r"embedding\.dim: expected an integer"),
        ({"name": "qr", "dim": 4, "operation": "xor"}, r"embedding\.operation: expected one of"),
        ({"name": "hashed", "dim": 4, "buckets": 0}, r"embedding\.buckets: expected an integer >="),
        ({"name": "full", "dim": 4, "init_std": float("nan")}, r"init_std: expected a finite"),
        ({"name": "full"}, r"embedding\.dim: missing"),
    ],
)
def test_embedding_specs_are_validated(node, message):
    with pytest.raises(registry.SpecError, match=message):
        registry.embedding_spec(node)


def test_every_shipped_model_and_embedding_config_is_in_the_registry():
    conf = Path(__file__).resolve().parents[2] / "conf"
    for path in sorted((conf / "model").glob("*.yaml")):
        assert registry.model_spec(OmegaConf.load(path)).name == path.stem
    for path in sorted((conf / "embedding").glob("*.yaml")):
        assert registry.embedding_spec(OmegaConf.load(path)).name == path.stem


# --- checkpoints and run folders ----------------------------------------------------------------


def _fake_run(tmp_path: Path, marker: Path, config: dict) -> Path:
    """A run folder whose checkpoint is a hostile pickle and whose config is `config`."""
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / ".hydra").mkdir()
    (run / "checkpoints" / "epoch00-step1.ckpt").write_bytes(pickle.dumps(_Payload(marker)))
    (run / ".hydra" / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(config)))
    return run


def test_a_pickle_checkpoint_is_refused_by_load_checkpoint(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "last.ckpt"
    with open(path, "wb") as f:
        torch.save({"state_dict": {}, "evil": _Payload(marker)}, f)
    with pytest.raises(CheckpointError, match=r"last\.ckpt: not a loadable checkpoint"):
        load_checkpoint(path)
    assert not marker.exists()


def test_export_of_a_run_with_a_pickle_checkpoint_runs_nothing(tmp_path):
    _, store, cfg, _ = make_bundle(tmp_path / "b")
    marker = tmp_path / "pwned"
    run = _fake_run(tmp_path, marker, OmegaConf.to_container(cfg, resolve=True))
    with pytest.raises(CheckpointError, match=r"epoch00-step1\.ckpt"):
        export_bundle(run, tmp_path / "out", store=store)
    assert not marker.exists()
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("where", ["data_target", "nested"])
def test_a_run_config_naming_a_callable_is_refused(tmp_path, where):
    marker = tmp_path / "pwned"
    call = {"_target_": "os.system", "_args_": [f"touch {marker}"]}
    data = (
        call
        if where == "data_target"
        else {
            "_target_": "cvr.data.synthetic.build_synthetic_store",
            "name": call,
        }
    )
    config = {"data": data, "paths": {"cache_dir": str(tmp_path / "cache")}}
    with pytest.raises(ManifestError, match=r"config\.yaml"):
        run_store(config, str(tmp_path / "config.yaml"))
    run = _fake_run(tmp_path, marker, {**config, "model": {}, "embedding": {}})
    with pytest.raises(ManifestError, match=r"config\.yaml"):
        export_bundle(run, tmp_path / "out")
    assert not marker.exists()


def test_retrieve_load_source_refuses_a_hostile_run(tmp_path):
    from cvr.pipelines.retrieve import load_source

    marker = tmp_path / "pwned"
    call = _writes_marker(marker)
    run = _fake_run(tmp_path, marker, {"data": call, "paths": {"cache_dir": str(tmp_path)}})
    with pytest.raises(ManifestError, match="not a known store builder"):
        load_source(None, run)
    assert not marker.exists()
    shutil.rmtree(run)
