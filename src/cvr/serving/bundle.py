"""Serving bundle: one trained model with everything needed to score raw records, verified.

A bundle is a directory written atomically (temporary sibling, then rename):

    manifest.json      format, versions (cvr, torch, numpy, python), store fingerprint, source
                       checkpoint sha256, and the sha256 of every other file
    model.pt           the model's state_dict (torch.save, CPU tensors; loaded weights_only)
    model.json         how to rebuild the model: its config (`_target_`, backend), the embedding
                       config (`_target_`, dim, options) and the field cardinalities
    preprocessor.json  the fitted Preprocessor, copied byte for byte from the store
    schema.json        fields (name, kind, side, column), labels, and the reader (format and
                       options) that reads files of the dataset for `Predictor.predict(path)`
    config.yaml        the run's resolved config
    metrics.json       the run's final metrics

`load_bundle` refuses a bundle whose files differ from its manifest (changed, missing or extra),
naming each file. The model is rebuilt by `cvr.pipelines.train.build_model`, the same wiring
that built it for training.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import logging
import platform
import shutil
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from cvr.data.preprocess import Preprocessor
from cvr.data.schema import Schema
from cvr.data.store import EncodedStore
from cvr.ops.manifest import (
    ManifestError,
    atomic_directory,
    file_checksums,
    read_manifest_file,
    sha256_file,
    verify_checksums,
    write_json_atomic,
)

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
KIND = "serving_bundle"
MANIFEST = "manifest.json"
MODEL_WEIGHTS = "model.pt"
MODEL_SPEC = "model.json"
PREPROCESSOR = "preprocessor.json"
SCHEMA = "schema.json"
CONFIG = "config.yaml"
METRICS = "metrics.json"
#: Stores without source files (synthetic) are read from CSV with a header naming the fields.
DEFAULT_READER = {"format": "csv", "options": {}}


@dataclass
class Bundle:
    """A loaded bundle: the model in eval mode on CPU, the fitted preprocessor and metadata."""

    path: Path
    manifest: dict[str, Any]
    model: nn.Module
    preprocessor: Preprocessor
    schema: Schema
    reader: dict[str, Any]
    metrics: dict[str, float]

    @property
    def cardinalities(self) -> list[int]:
        return self.preprocessor.cardinalities


# --- export --------------------------------------------------------------------------------------


def export_bundle(
    run_dir_or_checkpoint: str | Path,
    out_dir: str | Path,
    store: EncodedStore | None = None,
    overwrite: bool = False,
) -> Path:
    """Bundle a finished run: its best checkpoint (or the given .ckpt), store, config, metrics.

    A run folder holds `checkpoints/` (the best `epoch*.ckpt` and `last.ckpt`), `metrics.json`
    and `.hydra/config.yaml`; a checkpoint path means the run folder two levels up. Without
    `store`, the run's data config is instantiated again, which opens its cached store (or
    rebuilds the same store deterministically). Returns `out_dir`.
    """
    path = Path(run_dir_or_checkpoint)
    checkpoint = path if path.is_file() else find_checkpoint(path)
    run_dir = checkpoint.parent.parent
    cfg = load_run_config(run_dir)
    if store is None:
        from cvr.pipelines.train import build_store

        store = build_store(cfg)
    metrics_path = run_dir / METRICS
    metrics = json.loads(metrics_path.read_text()) if metrics_path.is_file() else {}
    model = _rebuild_model(_model_spec(cfg, store.cardinalities))
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)["state_dict"]
    weights = {k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")}
    _load_weights(model, weights, checkpoint)
    run_info_path = run_dir / "run_info.json"
    run_info = json.loads(run_info_path.read_text()) if run_info_path.is_file() else {}
    return write_bundle(
        model,
        store,
        cfg,
        metrics,
        out_dir,
        checkpoint=checkpoint,
        run_info=run_info,
        overwrite=overwrite,
    )


def export_from_training(
    module: nn.Module,
    store: EncodedStore,
    cfg: DictConfig,
    metrics: Mapping[str, float],
    out_dir: str | Path,
    checkpoint: str | Path | None = None,
    overwrite: bool = False,
) -> Path:
    """Bundle the model a pipeline has just tested (the CTRModule's `model`, or a bare model).

    `checkpoint`: the checkpoint those weights came from (`best_model_path`), recorded with
    its sha256 in the manifest. Returns `out_dir`.
    """
    model = getattr(module, "model", module)
    return write_bundle(
        model, store, cfg, metrics, out_dir, checkpoint=checkpoint, overwrite=overwrite
    )


def write_bundle(
    model: nn.Module,
    store: EncodedStore,
    cfg: DictConfig,
    metrics: Mapping[str, float],
    out_dir: str | Path,
    checkpoint: str | Path | None = None,
    run_info: Mapping[str, Any] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write the bundle directory of `model` (see the module docstring); returns `out_dir`.

    Raises FileExistsError if `out_dir` exists and not `overwrite`, ManifestError if the store
    has no fitted preprocessor or its cardinalities differ from the model's.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise FileExistsError(f"{out_dir}: already exists (pass overwrite=True to replace it)")
    pre_src = store.path / PREPROCESSOR
    if PREPROCESSOR not in store.meta.get("files", {}) or not pre_src.is_file():
        raise ManifestError(
            f"{store.path}: the store has no {PREPROCESSOR}; rebuild it with this version of cvr "
            "(stores built before serving support lack the fitted preprocessor)"
        )
    preprocessor = Preprocessor.load(pre_src)
    spec = _model_spec(cfg, store.cardinalities)
    if preprocessor.cardinalities != spec["cardinalities"]:
        raise ManifestError(
            f"{pre_src}: preprocessor cardinalities {preprocessor.cardinalities} differ from the "
            f"store's {spec['cardinalities']}"
        )
    resolved = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg
    checkpoint = Path(checkpoint) if checkpoint else None
    with atomic_directory(out_dir, overwrite=overwrite) as tmp:
        weights = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        torch.save(weights, tmp / MODEL_WEIGHTS)
        write_json_atomic(tmp / MODEL_SPEC, spec)
        shutil.copyfile(pre_src, tmp / PREPROCESSOR)
        write_json_atomic(tmp / SCHEMA, _schema_record(preprocessor.schema, store))
        (tmp / CONFIG).write_text(OmegaConf.to_yaml(OmegaConf.create(resolved)))
        write_json_atomic(tmp / METRICS, {k: float(v) for k, v in metrics.items()})
        manifest = {
            "format_version": FORMAT_VERSION,
            "kind": KIND,
            "created_unix": time.time(),
            "model_class": spec["model"]["_target_"],
            "versions": _versions(),
            "store": {
                "fingerprint": store.fingerprint,
                "name": store.meta.get("name"),
                "path": str(store.path),
            },
            "source_checkpoint": (
                {"path": str(checkpoint), "sha256": sha256_file(checkpoint)} if checkpoint else None
            ),
            "run": dict(run_info or {}),
            "files": file_checksums(tmp),
        }
        write_json_atomic(tmp / MANIFEST, manifest)
    log.info("wrote serving bundle %s", out_dir)
    return out_dir


def find_checkpoint(run_dir: str | Path) -> Path:
    """The best checkpoint of a run folder (`checkpoints/epoch*.ckpt`), else `last.ckpt`.

    The checkpoint callback keeps only the best epoch file; should there be several, the newest
    is taken.
    """
    ckpt_dir = Path(run_dir) / "checkpoints"
    best = sorted(ckpt_dir.glob("epoch*.ckpt"), key=lambda p: (p.stat().st_mtime, p.name))
    if best:
        if len(best) > 1:
            log.warning("%s: %d epoch checkpoints; bundling the newest", ckpt_dir, len(best))
        return best[-1]
    last = ckpt_dir / "last.ckpt"
    if last.is_file():
        return last
    raise FileNotFoundError(f"{ckpt_dir}: no checkpoint (expected epoch*.ckpt or last.ckpt)")


def load_run_config(run_dir: str | Path) -> DictConfig:
    """The resolved config of a run folder (`.hydra/config.yaml`).

    Hydra saves the config unresolved; `${hydra:...}` values are resolved from the run's own
    `.hydra/hydra.yaml`, so paths come out as they were during the run.
    """
    hydra_dir = Path(run_dir) / ".hydra"
    config_path = hydra_dir / "config.yaml"
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path}: missing; {run_dir} is not a run folder")
    cfg = OmegaConf.load(config_path)
    with _hydra_runtime(hydra_dir / "hydra.yaml"):
        OmegaConf.resolve(cfg)
    return cfg


@contextlib.contextmanager
def _hydra_runtime(hydra_yaml: Path) -> Iterator[None]:
    """Make `${hydra:...}` resolve against a saved hydra.yaml, restoring the previous state."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.core.utils import setup_globals

    from cvr.pipelines.train import register_resolvers

    setup_globals()  # Hydra's own resolvers (`hydra`, `now`), as a Hydra app has them
    register_resolvers()
    instance = HydraConfig.instance()
    previous = instance.cfg
    if hydra_yaml.is_file():
        # What HydraConfig.get() reads (`cfg.hydra`); set_config needs the structured schema.
        instance.cfg = OmegaConf.load(hydra_yaml)
    try:
        yield
    finally:
        instance.cfg = previous


def _model_spec(cfg: DictConfig | Mapping[str, Any], cardinalities: list[int]) -> dict[str, Any]:
    """What model.json records: enough to rebuild the model with `build_model`."""
    model = _plain(cfg["model"])
    embedding = _plain(cfg["embedding"])
    return {
        "model": model,
        "embedding": embedding,
        "cardinalities": [int(c) for c in cardinalities],
        "dim": int(embedding["dim"]),
    }


def _plain(node: Any) -> dict[str, Any]:
    if isinstance(node, DictConfig):
        return OmegaConf.to_container(node, resolve=True)
    return json.loads(json.dumps(node))


def _schema_record(schema: Schema, store: EncodedStore) -> dict[str, Any]:
    reader = (
        {"format": store.meta["format"], "options": store.meta.get("format_options", {})}
        if "format" in store.meta
        else DEFAULT_READER
    )
    return {
        "field_names": schema.field_names,
        "sides": schema.sides,
        "labels": list(schema.labels),
        "schema": json.loads(json.dumps(schema.to_dict())),
        "reader": reader,
    }


def _versions() -> dict[str, str]:
    try:
        cvr_version = importlib.metadata.version("cvr")
    except importlib.metadata.PackageNotFoundError:
        cvr_version = "unknown"
    return {
        "cvr": cvr_version,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }


# --- load ---------------------------------------------------------------------------------------


def read_manifest(path: str | Path) -> dict[str, Any]:
    """The bundle's manifest.json; ManifestError if it is missing, unreadable or not a bundle's."""
    return read_manifest_file(Path(path) / MANIFEST, KIND, FORMAT_VERSION, "serving bundle")


def verify_bundle(path: str | Path) -> dict[str, Any]:
    """Check every file against the manifest; returns the manifest.

    Raises ManifestError naming each changed, missing or extra file.
    """
    manifest = read_manifest(path)
    verify_checksums(path, manifest["files"], exclude=(MANIFEST,))
    return manifest


def load_bundle(path: str | Path, verify: bool = True) -> Bundle:
    """Load a bundle: verify its files (unless `verify` is false), rebuild the model, load it.

    Raises ManifestError for a bundle that does not match its manifest or is inconsistent.
    """
    path = Path(path)
    manifest = verify_bundle(path) if verify else read_manifest(path)
    for name in manifest["files"]:
        if not (path / name).is_file():
            raise ManifestError(f"missing file {path / name}")
    spec = json.loads((path / MODEL_SPEC).read_text())
    preprocessor = Preprocessor.load(path / PREPROCESSOR)
    if preprocessor.cardinalities != spec["cardinalities"]:
        raise ManifestError(
            f"{path / PREPROCESSOR}: cardinalities {preprocessor.cardinalities} differ from "
            f"{MODEL_SPEC}'s {spec['cardinalities']}"
        )
    model = _rebuild_model(spec)
    weights = torch.load(path / MODEL_WEIGHTS, map_location="cpu", weights_only=True)
    _load_weights(model, weights, path / MODEL_WEIGHTS)
    schema_record = json.loads((path / SCHEMA).read_text())
    return Bundle(
        path=path,
        manifest=manifest,
        model=model.eval(),
        preprocessor=preprocessor,
        schema=Schema.from_dict(schema_record["schema"]),
        reader=schema_record["reader"],
        metrics=json.loads((path / METRICS).read_text()),
    )


def _rebuild_model(spec: Mapping[str, Any]) -> nn.Module:
    # The same wiring that built the model for training, so the two cannot drift apart.
    from cvr.pipelines.train import build_model

    cfg = OmegaConf.create({"model": spec["model"], "embedding": spec["embedding"]})
    return build_model(cfg, list(spec["cardinalities"]))


def _load_weights(model: nn.Module, weights: Mapping[str, torch.Tensor], source: Path) -> None:
    try:
        model.load_state_dict(weights, strict=True)
    except RuntimeError as exc:
        raise ManifestError(f"{source}: weights do not fit the model: {exc}") from None
