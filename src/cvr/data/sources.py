"""A build's input files: `data.path` / `data.paths` resolved to files with their split roles.

`data.path` is a file, a list of files or a glob (`day_*.tsv.gz`, sorted by name); each entry of
`data.paths` likewise. Split method `files` takes the roles from `data.paths`; `by_file` makes
the last of at least three files test and the one before it val; otherwise every file's rows
are split by the rule. libffm files also give the schema's fields (`libffm_schema`).
"""

from __future__ import annotations

import glob
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cvr.data.errors import DataError
from cvr.data.readers.libffm import field_numbers
from cvr.data.schema import Schema, SchemaError, SplitRule
from cvr.data.store import SPLITS


@dataclass
class Source:
    """One input file: its split role (None: split per row), the config key naming it, and its
    index among the files whose rows are split per row (it seeds the random split)."""

    role: str | None
    path: Path
    key: str
    index: int = 0
    sha256: str = ""


def split_rule(schema_cfg: Mapping[str, Any]) -> SplitRule:
    split = schema_cfg.get("split") or {}
    return split if isinstance(split, SplitRule) else SplitRule(**dict(split))


def expand_paths(value: Any, key: str) -> list[Path]:
    """A file, a list of files, or globs (sorted by name) as paths; a glob must match."""
    items = value if isinstance(value, list | tuple) else [value]
    out: list[Path] = []
    for item in items:
        text = str(item)
        if glob.has_magic(text):
            matches = sorted(Path(p) for p in glob.glob(text))
            if not matches:
                raise FileNotFoundError(f"{text}: no file matches (config key {key})")
            out.extend(matches)
        else:
            out.append(Path(text))
    if not out:
        raise SchemaError(f"{key}: expected a file, a list of files or a glob, got {value!r}")
    for p in out:
        if not p.is_file():
            raise FileNotFoundError(f"{p}: data file not found (config key {key})")
    return out


def resolve_sources(rule: SplitRule, path: Any, paths: Any) -> list[Source]:
    """The input files with their split roles (see the module docstring)."""
    if rule.method == "files":
        if not isinstance(paths, Mapping) or not paths.get("train"):
            raise SchemaError("data.paths: split method files needs paths {train, val, test}")
        unknown = sorted(set(paths) - set(SPLITS))
        if unknown:
            raise SchemaError(f"data.paths: unknown splits {unknown}; expected some of {SPLITS}")
        sources = []
        for role in SPLITS:
            if paths.get(role):
                files = expand_paths(paths[role], f"data.paths.{role}")
                sources += [
                    Source(role, p, _key(f"data.paths.{role}", i, len(files)), i)
                    for i, p in enumerate(files)
                ]
        return sources
    if paths is not None and any(paths.values() if isinstance(paths, Mapping) else [paths]):
        raise SchemaError("data.paths: only for split method files; use data.path")
    if path is None:
        raise SchemaError(f"data.path: required for split method {rule.method}")
    files = expand_paths(path, "data.path")
    if rule.method == "by_file":
        if len(files) < 3:
            raise SchemaError(
                f"data.path: split method by_file needs at least 3 files (train.., val, test), "
                f"got {len(files)}"
            )
        roles = ["train"] * (len(files) - 2) + ["val", "test"]
        return [
            Source(role, p, _key("data.path", i, len(files)), i)
            for i, (role, p) in enumerate(zip(roles, files, strict=True))
        ]
    return [Source(None, p, _key("data.path", i, len(files)), i) for i, p in enumerate(files)]


def _key(key: str, i: int, n: int) -> str:
    return key if n == 1 else f"{key}[{i}]"


def libffm_schema(
    schema_cfg: Schema | dict[str, Any], sources: Sequence[Source], max_line_bytes: int | None
) -> Schema | dict[str, Any]:
    """The schema of libffm files: fields `auto` become f0..f{max}; declared fields must match
    the field numbers the files use (a SchemaError names both otherwise)."""
    numbers = np.zeros(0, dtype=np.int64)
    for src in sources:
        numbers = np.union1d(numbers, field_numbers(src.path, max_line_bytes))
    used = sorted(int(n) for n in numbers)
    where = ", ".join(str(s.path) for s in sources)
    if not isinstance(schema_cfg, Schema) and schema_cfg.get("fields") in ("auto", None):
        if not used:
            raise DataError(f"{where}: no field:feature:value token found to infer fields from")
        return {**schema_cfg, "fields": [f"f{n}" for n in range(used[-1] + 1)]}
    schema = schema_cfg if isinstance(schema_cfg, Schema) else Schema.from_dict(schema_cfg)
    declared = []
    for f in schema.fields:
        if f.source.startswith("f") and f.source[1:].isdigit():
            declared.append(int(f.source[1:]))
    extra = sorted(set(used) - set(declared))
    never = sorted(set(declared) - set(used))
    if extra or never:
        raise SchemaError(
            f"data.schema.fields: {len(declared)} fields declared, but {where} uses field "
            f"numbers {_ranges(used)}"
            + (f"; not declared: {_ranges(extra)}" if extra else "")
            + (f"; never used: {_ranges(never)}" if never else "")
            + " (set data.schema.fields=auto to infer them)"
        )
    return schema_cfg


def _ranges(numbers: Sequence[int]) -> str:
    if not numbers:
        return "none"
    parts, start, prev = [], numbers[0], numbers[0]
    for n in [*numbers[1:], None]:
        if n is not None and n == prev + 1:
            prev = n
            continue
        parts.append(str(start) if start == prev else f"{start}..{prev}")
        if n is not None:
            start = prev = n
    return ", ".join(parts)


def plain(obj: Any) -> Any:
    """Mappings and sequences (e.g. OmegaConf containers) as plain dicts and lists."""
    if isinstance(obj, Mapping):
        return {str(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, Sequence) and not isinstance(obj, str | bytes):
        return [plain(v) for v in obj]
    return obj
