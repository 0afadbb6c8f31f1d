"""StoreMeta: what a store is, typed, as written to and read from its meta.json."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class SourceFile:
    """One input file of a store: its split role (None: rows split by the rule), path, sha256,
    lines read and rows skipped by reason."""

    role: str | None
    path: str
    sha256: str
    lines: int = 0
    skipped: dict[str, int] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return self.role or "data"


@dataclass(frozen=True)
class StoreMeta:
    """What a store is, typed: written by the file builder and the synthetic generator alike.

    `reader` is {"format", "options"} for file stores (None for synthetic ones), `synthetic` the
    generator's spec (None for file stores). `to_dict()` is the body of meta.json (the writer
    adds splits, files and format_version); the flat keys `format`, `format_options`, `lines`,
    `skipped_by_file` and `sources` are derived views kept for readers of older meta.json.
    """

    name: str
    fingerprint: str
    schema: dict[str, Any]
    cardinalities: list[int]
    labels: list[str]
    label: str
    reader: dict[str, Any] | None = None
    preprocess: dict[str, Any] | None = None
    on_error: str = "raise"
    sources: list[SourceFile] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)
    synthetic: dict[str, Any] | None = None

    @property
    def field_names(self) -> list[str]:
        return [f["name"] for f in self.schema["fields"]]

    def fields(self) -> list[dict[str, str]]:
        return [
            {
                "name": f["name"],
                "kind": f.get("kind", "categorical"),
                "side": f.get("side", "context"),
            }
            for f in self.schema["fields"]
        ]

    def to_dict(self) -> dict[str, Any]:
        out = {
            "name": self.name,
            "fingerprint": self.fingerprint,
            "fields": self.fields(),
            "cardinalities": [int(c) for c in self.cardinalities],
            "labels": list(self.labels),
            "label": self.label,
            "schema": self.schema,
            "reader": self.reader,
            "preprocess": self.preprocess,
            "on_error": self.on_error,
            "source_files": [asdict(s) for s in self.sources],
            "skipped": dict(self.skipped),
            "synthetic": self.synthetic,
        }
        if self.reader is not None:
            keys = _source_keys(self.sources)
            out["format"] = self.reader["format"]
            out["format_options"] = self.reader["options"]
            out["sources"] = {k: {"path": s.path, "sha256": s.sha256} for k, s in keys}
            out["lines"] = {k: s.lines for k, s in keys}
            out["skipped_by_file"] = {k: dict(s.skipped) for k, s in keys}
        return out

    @classmethod
    def from_dict(cls, meta: Mapping[str, Any]) -> StoreMeta:
        """Read meta.json's body; stores written before StoreMeta get their fields derived."""
        schema = meta.get("schema") or {"fields": meta["fields"], "labels": meta["labels"]}
        reader = meta.get("reader")
        if reader is None and "format" in meta:
            reader = {"format": meta["format"], "options": meta.get("format_options", {})}
        if "source_files" in meta:
            sources = [SourceFile(**s) for s in meta["source_files"]]
        else:
            sources = [
                SourceFile(
                    None if k == "data" else k,
                    v["path"],
                    v["sha256"],
                    int(meta.get("lines", {}).get(k, 0)),
                    dict(meta.get("skipped_by_file", {}).get(k, {})),
                )
                for k, v in meta.get("sources", {}).items()
            ]
        synthetic = meta.get("synthetic")
        if synthetic is None and isinstance(meta.get("source"), Mapping):
            synthetic = meta["source"].get("synthetic")
        labels = list(meta["labels"])
        return cls(
            name=meta.get("name", ""),
            fingerprint=meta.get("fingerprint", ""),
            schema=schema,
            cardinalities=[int(c) for c in meta["cardinalities"]],
            labels=labels,
            label=meta.get("label") or labels[0],
            reader=reader,
            preprocess=meta.get("preprocess"),
            on_error=meta.get("on_error", "raise"),
            sources=sources,
            skipped=dict(meta.get("skipped", {})),
            synthetic=synthetic,
        )


def _source_keys(sources: Sequence[SourceFile]) -> list[tuple[str, SourceFile]]:
    """(key, file): the role for a role's only file, `role/i` when a role has several."""
    per_role: dict[str, int] = {}
    for s in sources:
        per_role[s.key] = per_role.get(s.key, 0) + 1
    seen: dict[str, int] = {}
    out = []
    for s in sources:
        i = seen.get(s.key, 0)
        seen[s.key] = i + 1
        out.append((s.key if per_role[s.key] == 1 else f"{s.key}/{i}", s))
    return out
