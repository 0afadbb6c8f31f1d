"""What a run is called and tagged in MLflow, derived from its resolved config.

A name says what ran: `<model>-<dataset>-k<dim>[-<knob><value>...]-seed<seed>`, e.g.
`ffm-criteo_small-k4-lr0.1-seed0`. The dataset is the data config's `name`, or the training
file's stem where the name is only the file format (`data=libffm` on your own files). Knobs are
the command-line overrides that are not already in the name (in a sweep: the swept keys only);
paths, logging and output switches are never knobs.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

#: Keys already spelled out in the name.
_IN_NAME = ("model", "data", "embedding.dim", "seed")
#: Override prefixes that do not change what a run computes, or that name a file.
_NOT_KNOBS = (
    "paths",
    "logger",
    "hydra",
    "run_name",
    "resume",
    "print_table",
    "export_bundle",
    "checkpoint_every_n_steps",
    "data.path",
    "data.paths",
    "data.cache_root",
    "trainer.enable_progress_bar",
    "trainer.enable_model_summary",
    "trainer.default_root_dir",
    "callbacks.model_checkpoint.dirpath",
)
#: Short spellings of common knob names (the last key component otherwise).
_SHORT = {
    "max_epochs": "ep",
    "batch_size": "bs",
    "eval_batch_size": "evalbs",
    "patience": "pat",
    "initial_accumulator_value": "acc0",
    "weight_decay": "wd",
    "rows_train": "train",
    "rows_val": "val",
    "rows_test": "test",
    "num_fields": "fields",
    "user_fields": "ufields",
    "item_fields": "ifields",
    "total_values": "values",
}
#: Stems that say which split a file is, not which dataset.
_SPLIT_WORDS = ("train", "training", "tr")
MAX_NAME_CHARS = 120


def file_stem(path: str | Path) -> str:
    """'/d/criteo_small_train.ffm' -> 'criteo_small'; '/d/avazu/train.csv.gz' -> 'avazu'."""
    path = Path(str(path))
    stem = path.name.split(".")[0]
    for word in _SPLIT_WORDS:
        for sep in ("_", "-", "."):
            if stem.lower().endswith(sep + word):
                return stem[: -len(sep + word)]
        if stem.lower() == word:
            return path.parent.name or stem
    return stem


def dataset_name(data: Mapping[str, Any]) -> str:
    """The dataset config's name, or the training file's stem where the name is the format."""
    name = str(data.get("name") or "")
    fmt = str(data.get("format") or "")
    paths = data.get("paths") or {}
    source = (paths.get("train") if isinstance(paths, Mapping) else None) or data.get("path")
    if source and (not name or name == fmt):
        return file_stem(source)
    return name or fmt or "data"


def _choice(cfg: DictConfig, group: str) -> str | None:
    """The Hydra group option that built `group` (`ffm`, `hashed`), None outside Hydra."""
    from hydra.core.hydra_config import HydraConfig

    try:
        return HydraConfig.get().runtime.choices.get(group)
    except ValueError:
        return None


def _short_target(target: Any) -> str:
    """'cvr.models.ctr.FFM' -> 'ffm'; 'cvr.models.embeddings.HashedEmbedding' -> 'hashed'."""
    name = str(target).rsplit(".", 1)[-1]
    return (name.removesuffix("Embedding") or name).lower()


def model_name(cfg: DictConfig) -> str:
    return _choice(cfg, "model") or _short_target(cfg.model.get("_target_", "model"))


def embedding_name(cfg: DictConfig) -> str:
    return _choice(cfg, "embedding") or _short_target(cfg.embedding.get("_target_", "full"))


def task_name(label: str) -> str:
    """The prediction task a label stands for: click -> ctr, conversion -> cvr."""
    return {"click": "ctr", "conversion": "cvr"}.get(label, label)


def _format_value(value: str) -> str:
    value = value.strip().strip("'\"")
    try:
        number = float(value)
    except ValueError:
        return value.replace("/", "_").replace(" ", "")[:24]
    for unit, size in (("M", 1_000_000), ("k", 1000)):
        if number >= size and number % size == 0:
            return f"{number / size:g}{unit}"
    return f"{number:g}"


def knobs(overrides: Iterable[str], only_keys: Iterable[str] | None = None) -> list[str]:
    """'optimizer.fused.lr=0.1' -> 'lr0.1', 'embedding=hashed' -> 'hashed', in the given order.

    `only_keys`: keep only these keys (a sweep's swept keys); None keeps every knob.
    """
    wanted = set(only_keys) if only_keys is not None else None
    out = []
    for override in overrides:
        if "=" not in override:
            continue
        key, value = override.split("=", 1)
        key = key.lstrip("+~")
        if key in _IN_NAME or any(key == p or key.startswith(p + ".") for p in _NOT_KNOBS):
            continue
        if wanted is not None and key not in wanted:
            continue
        if "." not in key:  # a group choice: its option says it all
            out.append(_format_value(value))
            continue
        last = key.rsplit(".", 1)[-1]
        out.append(f"{_SHORT.get(last, last)}{_format_value(value)}")
    return out


def task_overrides() -> list[str]:
    """This job's command-line overrides (Hydra), [] outside Hydra."""
    from hydra.core.hydra_config import HydraConfig

    try:
        return list(HydraConfig.get().overrides.task)
    except ValueError:
        return []


def default_run_name(
    cfg: DictConfig, overrides: Iterable[str] = (), swept_keys: Iterable[str] | None = None
) -> str:
    """`<model>-<dataset>-k<dim>[-knobs]-seed<seed>`, at most MAX_NAME_CHARS characters."""
    data = OmegaConf.to_container(cfg.data, resolve=True)
    parts = [model_name(cfg), dataset_name(data), f"k{cfg.embedding.dim}"]
    if embedding_name(cfg) not in ("full", "fullembedding"):
        parts.append(embedding_name(cfg))
    extra = knobs(overrides, swept_keys)
    parts += [k for k in extra if k not in parts]
    name = "-".join(parts)[: MAX_NAME_CHARS - 12]
    return f"{name}-seed{cfg.seed}"


def run_tags(cfg: DictConfig, label: str | None = None) -> dict[str, str]:
    """Tags the runs table can filter on: model, dataset, embedding, k, backend (+ task)."""
    data = OmegaConf.to_container(cfg.data, resolve=True)
    tags = {
        "model": model_name(cfg),
        "dataset": dataset_name(data),
        "embedding": embedding_name(cfg),
        "k": str(cfg.embedding.dim),
        # What was asked for (`auto`); the pipeline tags what trained once it is chosen.
        "backend": str((cfg.get("backend") or {}).get("name") or cfg.model.get("backend", "auto")),
    }
    label = label or cfg.get("label")
    if label:
        tags["task"] = task_name(str(label))
    return tags


def run_display_name(cfg: DictConfig, sweep: Mapping[str, Any] | None = None) -> str:
    """`cfg.run_name` when set, else default_run_name from this job's overrides.

    In a sweep (`sweep` = its parent file, see tracking.sweep) only the swept keys are knobs:
    what the whole sweep shares is in the parent's `sweep_overrides` tag.
    """
    if cfg.get("run_name"):
        return str(cfg.run_name)
    swept = (sweep or {}).get("swept_keys")
    return default_run_name(cfg, task_overrides(), swept)
