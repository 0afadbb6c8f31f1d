"""The closed registry of models and embedding variants, built from typed, validated specs.

A model is described by two plain records, never by a callable:

    ModelSpec(name="ffm", backend="fused")
    EmbeddingSpec(name="qr", dim=4, options={"threshold": 1000, "collisions": 4, ...})

`model_spec` / `embedding_spec` read them from a config node or a bundle's `model.json`: the
name is looked up in the tables below (a `_target_` string is accepted only as another spelling
of a registered name, and is never imported), every option must be declared for that variant
and of its type and range. So a file on disk can only pick a known class and plain numbers.
Adding a model or a variant is one line here.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from cvr.models.ctr import FFM, FM, LR, CTRModel, FwFM
from cvr.models.esmm import ESMM, TOWERS
from cvr.models.hashed_embedding import HashedEmbedding
from cvr.models.mixed_dim_embedding import MixedDimEmbedding
from cvr.models.qr_embedding import OPERATIONS, QREmbedding
from cvr.models.tables import FullEmbedding


class SpecError(ValueError):
    """A model or embedding spec that names an unknown class or an invalid value (key named)."""


@dataclass(frozen=True)
class Option:
    """One declared argument: its type, range (inclusive) or choices, and default."""

    kind: type
    default: Any
    low: float | None = None
    high: float | None = None
    choices: tuple[Any, ...] | None = None

    def check(self, key: str, value: Any) -> Any:
        """The value converted to `kind`; SpecError naming `key` if it is not acceptable."""
        value = _typed(key, value, self.kind)
        if self.choices is not None and value not in self.choices:
            raise SpecError(f"{key}: expected one of {list(self.choices)}, got {value!r}")
        if self.low is not None and value < self.low:
            raise SpecError(f"{key}: expected {self._range()}, got {value!r}")
        if self.high is not None and value > self.high:
            raise SpecError(f"{key}: expected {self._range()}, got {value!r}")
        return value

    def _range(self) -> str:
        noun = "an integer" if self.kind is int else "a number"
        if self.high is None:
            return f"{noun} >= {self.low:g}"
        return f"{noun} in [{self.low:g}, {self.high:g}]"


def _typed(key: str, value: Any, kind: type) -> Any:
    if kind is bool:
        if isinstance(value, bool):
            return value
        raise SpecError(f"{key}: expected true or false, got {value!r}")
    if kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return int(value)
        raise SpecError(f"{key}: expected an integer, got {value!r}")
    if kind is float:
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
            return float(value)
        raise SpecError(f"{key}: expected a finite number, got {value!r}")
    if kind is str:
        if isinstance(value, str):
            return value
        raise SpecError(f"{key}: expected a string, got {value!r}")
    raise TypeError(f"unsupported option type {kind}")


@dataclass(frozen=True)
class Entry:
    """A registered class, the other spellings of its name, and its declared options."""

    cls: type[nn.Module]
    options: Mapping[str, Option]
    aliases: tuple[str, ...] = ()


_COMMON_TABLE = {
    "sparse": Option(bool, False),
    "init_std": Option(float, 0.01, low=0.0),
}

#: name -> model class. `backend` is the only option a model takes (besides its tables).
MODELS: dict[str, Entry] = {
    "lr": Entry(LR, {}, ("cvr.models.ctr.LR",)),
    "fm": Entry(FM, {}, ("cvr.models.ctr.FM",)),
    "ffm": Entry(FFM, {}, ("cvr.models.ctr.FFM",)),
    "fwfm": Entry(FwFM, {}, ("cvr.models.ctr.FwFM",)),
    # Two towers (task=esmm): `tower` is the model choice, `share_embedding` the ablation,
    # `private_dim` each tower's private factors beside the shared table (0: fully shared).
    "esmm": Entry(
        ESMM,
        {
            "tower": Option(str, "ffm", choices=TOWERS),
            "share_embedding": Option(bool, True),
            "private_dim": Option(int, 0, low=0, high=1 << 16),
        },
        ("cvr.models.esmm.ESMM",),
    ),
}
MODEL_BACKENDS = ("autograd", "fused")

#: name -> embedding variant and its options (besides `dim`).
EMBEDDINGS: dict[str, Entry] = {
    "full": Entry(
        FullEmbedding,
        _COMMON_TABLE,
        ("cvr.models.embeddings.FullEmbedding", "cvr.models.tables.FullEmbedding"),
    ),
    "hashed": Entry(
        HashedEmbedding,
        {
            **_COMMON_TABLE,
            "buckets": Option(int, 10_000, low=1),
            "shared": Option(bool, False),
            "seed": Option(int, 0, low=0),
        },
        ("cvr.models.embeddings.HashedEmbedding", "cvr.models.hashed_embedding.HashedEmbedding"),
    ),
    "qr": Entry(
        QREmbedding,
        {
            **_COMMON_TABLE,
            "threshold": Option(int, 1000, low=1),
            "collisions": Option(int, 4, low=1),
            "operation": Option(str, "mult", choices=tuple(OPERATIONS)),
        },
        ("cvr.models.embeddings.QREmbedding", "cvr.models.qr_embedding.QREmbedding"),
    ),
    "mixed_dim": Entry(
        MixedDimEmbedding,
        {
            **_COMMON_TABLE,
            "alpha": Option(float, 0.3, low=0.0),
            "min_dim": Option(int, 1, low=1),
        },
        (
            "cvr.models.embeddings.MixedDimEmbedding",
            "cvr.models.mixed_dim_embedding.MixedDimEmbedding",
        ),
    ),
}
_DIM = Option(int, 4, low=1, high=1 << 16)
_MAX_CARDINALITY = 1 << 40  # guards a hostile spec from asking for an absurd allocation


@dataclass(frozen=True)
class ModelSpec:
    name: str
    #: Recorded by configs and bundles that chose a backend per model; None where not given.
    backend: str | None = None
    #: The model's declared options (`Entry.options`), checked.
    options: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        backend = {"backend": self.backend} if self.backend else {}
        return {"name": self.name, **backend, **self.options}


@dataclass(frozen=True)
class EmbeddingSpec:
    name: str
    dim: int
    options: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "dim": self.dim, **self.options}


def _lookup(table: dict[str, Entry], node: Mapping[str, Any], where: str) -> tuple[str, Entry]:
    name = node.get("name")
    target = node.get("_target_")
    for key, entry in table.items():
        if name == key or (name is None and target in entry.aliases):
            return key, entry
    given = name if name is not None else target
    raise SpecError(f"{where}: unknown {where} {given!r}; known: {sorted(table)}")


def _plain_mapping(node: Any, where: str) -> dict[str, Any]:
    if hasattr(node, "items") and not isinstance(node, dict):  # DictConfig
        from omegaconf import OmegaConf

        node = OmegaConf.to_container(node, resolve=True)
    if not isinstance(node, dict):
        raise SpecError(f"{where}: expected a mapping, got {type(node).__name__}")
    return node


def _refuse_unknown_keys(node: dict, kind: str, name: str, allowed: list[str]) -> None:
    """SpecError naming the keys of a `kind` record that entry `name` does not take."""
    unknown = sorted(set(node) - {"name", "_target_", *allowed})
    if unknown:
        raise SpecError(f"{kind}: unknown keys {unknown} for {kind} {name!r}; allowed: {allowed}")


def model_spec(node: Any) -> ModelSpec:
    """The ModelSpec of a `model` config node or model.json record; SpecError if invalid."""
    node = _plain_mapping(node, "model")
    name, entry = _lookup(MODELS, node, "model")
    _refuse_unknown_keys(node, "model", name, ["backend", *entry.options])
    backend = node.get("backend")
    if backend is not None:
        backend = Option(str, "autograd", choices=MODEL_BACKENDS).check("model.backend", backend)
    options = {
        key: option.check(f"model.{key}", node.get(key, option.default))
        for key, option in entry.options.items()
    }
    return ModelSpec(name, backend, options)


def embedding_spec(node: Any) -> EmbeddingSpec:
    """The EmbeddingSpec of an `embedding` config node or record; SpecError if invalid."""
    node = _plain_mapping(node, "embedding")
    name, entry = _lookup(EMBEDDINGS, node, "embedding")
    _refuse_unknown_keys(node, "embedding", name, ["dim", *entry.options])
    if "dim" not in node:
        raise SpecError("embedding.dim: missing; expected an integer >= 1")
    dim = _DIM.check("embedding.dim", node["dim"])
    options = {
        key: option.check(f"embedding.{key}", node.get(key, option.default))
        for key, option in entry.options.items()
    }
    return EmbeddingSpec(name, dim, options)


def check_cardinalities(values: Any, where: str = "cardinalities") -> list[int]:
    """A non-empty list of positive integers (each at most 2**40); SpecError otherwise."""
    if not isinstance(values, list | tuple) or not values:
        raise SpecError(f"{where}: expected a non-empty list of positive integers")
    option = Option(int, 1, low=1, high=_MAX_CARDINALITY)
    return [option.check(f"{where}[{i}]", v) for i, v in enumerate(values)]


def check_combination(model: ModelSpec, embedding: EmbeddingSpec) -> None:
    """Refuse combinations that cannot mean what they say (LR has no embedding table)."""
    if model.name == "lr" and embedding.name != "full":
        raise SpecError(
            f"model=lr embedding={embedding.name}: logistic regression has no embedding table, "
            "so the variant would be ignored; use embedding=full with model=lr"
        )


def build(model: ModelSpec, embedding: EmbeddingSpec, cardinalities: list[int]) -> CTRModel:
    """The model of the specs over `cardinalities` (freshly initialised)."""
    check_combination(model, embedding)
    cards = check_cardinalities(cardinalities)
    table_cls = EMBEDDINGS[embedding.name].cls
    options = dict(embedding.options)

    def table(cardinalities: list[int], dim: int) -> nn.Module:
        return table_cls(cardinalities=cardinalities, dim=dim, **options)

    cls = MODELS[model.name].cls
    extra = {}
    if model.backend is not None and "backend" in inspect.signature(cls.__init__).parameters:
        extra["backend"] = model.backend
    return cls(cards, dim=embedding.dim, embedding=table, **extra, **model.options)


def build_model(cfg: Any, cardinalities: list[int]) -> CTRModel:
    """The model of a config with `model` and `embedding` nodes (a DictConfig or a mapping)."""
    return build(model_spec(cfg["model"]), embedding_spec(cfg["embedding"]), cardinalities)


def class_path(spec: ModelSpec) -> str:
    """`module.Class` of a registered model (what bundle manifests show)."""
    cls = MODELS[spec.name].cls
    return f"{cls.__module__}.{cls.__qualname__}"
