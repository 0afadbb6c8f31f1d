"""Serving bundle: one trained model with everything needed to score raw records, verified.

A bundle is a directory written atomically (temporary sibling, then rename):

    manifest.json      format, versions (cvr, torch, numpy, python), store fingerprint, source
                       checkpoint sha256, and the sha256 of every other file
    model.pt           the model's state_dict (torch.save, CPU tensors; loaded weights_only)
    model.json         how to rebuild the model: registry names and plain numbers only (model
                       name and backend; embedding name, dim and options; cardinalities)
    preprocessor.json  the fitted Preprocessor, copied byte for byte from the store
    schema.json        fields (name, kind, side, column), labels, and the reader (format and
                       options) that reads files of the dataset for `Predictor.predict(path)`
    config.yaml        the run's resolved config
    metrics.json       the run's final metrics

`load_bundle` refuses a bundle whose files differ from its manifest (changed, missing or extra),
naming each file. The model is rebuilt through the closed registry (`cvr.models.registry`),
the same one that built it for training; nothing in a bundle names code to run. A run folder is
exported by `cvr.pipelines.run_folder.export_bundle`.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import logging
import platform
import shutil
import time
from collections.abc import Mapping
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
from cvr.models import registry
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
            "model_class": registry.class_path(registry.model_spec(spec["model"])),
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


def _model_spec(cfg: DictConfig | Mapping[str, Any], cardinalities: list[int]) -> dict[str, Any]:
    """What model.json records: registry names and plain numbers (see `cvr.models.registry`)."""
    model, embedding = registry.model_spec(cfg["model"]), registry.embedding_spec(cfg["embedding"])
    registry.check_combination(model, embedding)
    return {
        "model": model.to_dict(),
        "embedding": embedding.to_dict(),
        "cardinalities": registry.check_cardinalities([int(c) for c in cardinalities]),
    }


def _schema_record(schema: Schema, store: EncodedStore) -> dict[str, Any]:
    reader = store.info.reader or DEFAULT_READER
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


def load_bundle(path: str | Path, verify: bool = True, tables: bool = True) -> Bundle:
    """Load a bundle: verify its files (unless `verify` is false), rebuild the model, load it.

    `tables=False` leaves out the per-feature tables (`model.embedding`, `model.linear`) for a
    caller that reads them from a vector store: they are never initialised nor read from
    model.pt (mapped, not copied), so the process never holds them; until replaced they are
    `TablesNotLoaded` modules that raise. Raises ManifestError for a bundle that does not match
    its manifest or is inconsistent.
    """
    path = Path(path)
    manifest = verify_bundle(path) if verify else read_manifest(path)
    for name in manifest["files"]:
        if not (path / name).is_file():
            raise ManifestError(f"missing file {path / name}")
    spec = _read_json(path / MODEL_SPEC)
    with contextlib.nullcontext() if tables else _SkipInit():
        model = _rebuild_model(spec, path / MODEL_SPEC)
    preprocessor = Preprocessor.load(path / PREPROCESSOR)
    if preprocessor.cardinalities != spec["cardinalities"]:
        raise ManifestError(
            f"{path / PREPROCESSOR}: cardinalities {preprocessor.cardinalities} differ from "
            f"{MODEL_SPEC}'s {spec['cardinalities']}"
        )
    try:
        weights = torch.load(
            path / MODEL_WEIGHTS, map_location="cpu", weights_only=True, mmap=not tables
        )
    except Exception as exc:  # a pickle naming any callable is refused here, never run
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise ManifestError(
            f"{path / MODEL_WEIGHTS}: not a plain weights file ({reason})"
        ) from None
    if tables:
        load_weights(model, weights, path / MODEL_WEIGHTS)
    else:
        _load_all_but_tables(model, weights, path / MODEL_WEIGHTS)
    schema_record = _read_json(path / SCHEMA)
    return Bundle(
        path=path,
        manifest=manifest,
        model=model.eval(),
        preprocessor=preprocessor,
        schema=Schema.from_dict(schema_record["schema"]),
        reader=schema_record["reader"],
        metrics=_read_json(path / METRICS),
    )


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ManifestError(f"{path}: not valid JSON ({exc})") from None


def _rebuild_model(spec: Any, source: Path) -> nn.Module:
    """The model of a model.json record, through the closed registry: a bundle can name only a
    registered class and plain numbers, so loading one never runs code it chose."""
    try:
        if not isinstance(spec, dict):
            raise registry.SpecError(f"expected a JSON object, got {type(spec).__name__}")
        model = registry.model_spec(spec.get("model"))
        embedding = spec.get("embedding")
        if isinstance(embedding, dict) and "dim" not in embedding and "dim" in spec:
            embedding = {**embedding, "dim": spec["dim"]}  # early bundles kept dim beside it
        embedding = registry.embedding_spec(embedding)
        cards = registry.check_cardinalities(spec.get("cardinalities"))
        return registry.build(model, embedding, cards)
    except registry.SpecError as exc:
        raise ManifestError(f"{source}: {exc}") from None


#: The per-feature tables of a model, the ones a vector store can hold instead of the bundle.
TABLE_MODULES = ("embedding", "linear")


class TablesNotLoaded(nn.Module):
    """Stands in for a table `load_bundle(tables=False)` left out: using it is an error."""

    def __init__(self, name: str, source: Path) -> None:
        super().__init__()
        self.name, self.source = name, source

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        raise RuntimeError(
            f"{self.source}: table {self.name!r} was not loaded (load_bundle(tables=False)); "
            "attach the vector store's tables first"
        )


class _SkipInit(torch.overrides.TorchFunctionMode):
    """Random initialisers do nothing while a model is built whose weights are then loaded:
    an untouched torch.empty table costs no resident memory (buffers are computed as usual)."""

    SKIPPED = frozenset({"normal_", "uniform_", "trunc_normal_", "kaiming_uniform_"})

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if getattr(func, "__name__", "") in self.SKIPPED:
            kwargs = kwargs or {}
            return args[0] if args else kwargs.get("tensor", kwargs.get("self"))
        return func(*args, **(kwargs or {}))


def _load_all_but_tables(
    model: nn.Module, weights: Mapping[str, torch.Tensor], source: Path
) -> None:
    """Load every weight except the tables', then replace the tables by `TablesNotLoaded`."""
    is_table = {k: k.split(".", 1)[0] in TABLE_MODULES for k in weights}
    rest = {k: v.clone() for k, v in weights.items() if not is_table[k]}  # off the mapped file
    try:
        result = model.load_state_dict(rest, strict=False)
    except RuntimeError as exc:
        raise ManifestError(f"{source}: weights do not fit the model: {exc}") from None
    missing = [k for k in result.missing_keys if k.split(".", 1)[0] not in TABLE_MODULES]
    if missing or result.unexpected_keys:
        raise ManifestError(
            f"{source}: weights do not fit the model: missing {missing}, unexpected "
            f"{result.unexpected_keys}"
        )
    for name in TABLE_MODULES:
        if isinstance(getattr(model, name, None), nn.Module):
            setattr(model, name, TablesNotLoaded(name, source))


def load_weights(model: nn.Module, weights: Mapping[str, torch.Tensor], source: Path) -> None:
    try:
        model.load_state_dict(weights, strict=True)
    except RuntimeError as exc:
        raise ManifestError(f"{source}: weights do not fit the model: {exc}") from None
