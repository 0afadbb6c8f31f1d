"""Dataset schema: fields, their kind and side, label columns and the split rule.

One schema object drives the readers, preprocessing, the predictor and the retrieval split.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

KINDS = ("categorical", "numeric")
SIDES = ("user", "context", "item")
SPLIT_METHODS = ("random", "time", "files", "by_file")


class SchemaError(ValueError):
    """A dataset config that cannot describe a dataset; the message names the config key."""


@dataclass(frozen=True)
class FieldSpec:
    """One input field. `column` is the source column name (defaults to `name`)."""

    name: str
    kind: str = "categorical"
    side: str = "context"
    column: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise SchemaError(
                f"data.schema.fields.{self.name}.kind: expected one of {KINDS}, got {self.kind!r}"
            )
        if self.side not in SIDES:
            raise SchemaError(
                f"data.schema.fields.{self.name}.side: expected one of {SIDES}, got {self.side!r}"
            )

    @property
    def source(self) -> str:
        return self.column or self.name


@dataclass(frozen=True)
class SplitRule:
    """How rows are divided into train/val/test.

    random: a seeded permutation with fractions `val` and `test`.
    time: ordered by `time_column` (ties keep file order); the last fractions become val/test.
    files: the reader is given one file per split (data.paths.train/val/test).
    by_file: data.path names files in time order; the last is test, the one before val.
    """

    method: str = "random"
    val: float = 0.1
    test: float = 0.1
    seed: int = 0
    time_column: str | None = None

    def __post_init__(self) -> None:
        if self.method not in SPLIT_METHODS:
            raise SchemaError(
                f"data.split.method: expected one of {SPLIT_METHODS}, got {self.method!r}"
            )
        if not (0 <= self.val < 1 and 0 <= self.test < 1 and self.val + self.test < 1):
            raise SchemaError(
                f"data.split: val and test must be fractions with val + test < 1, "
                f"got val={self.val}, test={self.test}"
            )
        if self.method == "time" and not self.time_column:
            raise SchemaError("data.split.time_column: required when data.split.method=time")


@dataclass(frozen=True)
class Schema:
    """The fields (in model order), the label columns present, and the one to train on."""

    fields: tuple[FieldSpec, ...]
    labels: tuple[str, ...] = ("click",)
    label: str = "click"
    split: SplitRule = field(default_factory=SplitRule)

    def __post_init__(self) -> None:
        if not self.fields:
            raise SchemaError("data.schema.fields: at least one field is required")
        names = [f.name for f in self.fields]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise SchemaError(f"data.schema.fields: duplicate field names {dupes}")
        if self.label not in self.labels:
            raise SchemaError(
                f"data.schema.label: {self.label!r} is not one of the label columns "
                f"{list(self.labels)}"
            )

    @property
    def field_names(self) -> list[str]:
        return [f.name for f in self.fields]

    @property
    def num_fields(self) -> int:
        return len(self.fields)

    @property
    def sides(self) -> list[str]:
        return [f.side for f in self.fields]

    @property
    def label_index(self) -> int:
        return self.labels.index(self.label)

    def fields_on(self, *sides: str) -> list[int]:
        """Indices of the fields whose side is one of `sides`."""
        return [i for i, f in enumerate(self.fields) if f.side in sides]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, cfg: dict[str, Any]) -> Schema:
        """Build from a plain dict (e.g. an OmegaConf container of `data.schema`).

        `fields` is a list of dicts or of names (categorical, side `context`).
        """
        cfg = dict(cfg)
        raw_fields = cfg.pop("fields", None)
        if raw_fields is None:
            raise SchemaError("data.schema.fields: missing")
        fields = tuple(
            FieldSpec(name=f) if isinstance(f, str) else FieldSpec(**dict(f)) for f in raw_fields
        )
        split = cfg.pop("split", None) or {}
        labels = tuple(cfg.pop("labels", ("click",)))
        label = cfg.pop("label", labels[0])
        if cfg:
            raise SchemaError(f"data.schema: unknown keys {sorted(cfg)}")
        return cls(
            fields=fields,
            labels=labels,
            label=label,
            split=split if isinstance(split, SplitRule) else SplitRule(**dict(split)),
        )
