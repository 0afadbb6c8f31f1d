"""Validate the whole resolved training config before anything is created.

`check_config(cfg)` raises a ConfigError naming the first bad key, what was expected and what
was given: types and ranges of the numbers, the model and embedding through the closed registry
(including combinations that cannot mean what they say, such as `model=lr embedding=qr`), and an
output root that is a file or cannot be written. `ConfigCheck` runs it as a Hydra callback
before Hydra makes the run folder, so a bad value leaves no folder and no MLflow run, and prints
one line without a traceback.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from cvr.models import registry
from cvr.pipelines.errors import ConfigError

_MISSING = object()

#: key -> (kind, lowest value or None, may be null). Keys absent from a config are skipped.
_NUMBERS: dict[str, tuple[type, float | None, bool]] = {
    "seed": (int, 0, False),
    "trainer.max_epochs": (int, 1, False),
    "trainer.log_every_n_steps": (int, 1, True),
    "trainer.num_sanity_val_steps": (int, 0, True),
    "datamodule.batch_size": (int, 1, False),
    "datamodule.eval_batch_size": (int, 1, False),
    "datamodule.steps_per_epoch": (int, 1, True),
    "datamodule.min_batch_size": (int, 1, False),
    "checkpoint_every_n_steps": (int, 1, True),
    "optimizer.lr": (float, None, True),
    "data.rows_train": (int, 1, False),
    "data.rows_val": (int, 1, False),
    "data.rows_test": (int, 1, False),
    "data.num_fields": (int, 1, False),
    "data.user_fields": (int, 0, False),
    "data.item_fields": (int, 0, False),
    "data.total_values": (int, 1, False),
    "data.k": (int, 1, False),
    "data.min_count": (int, 1, False),
}
_FRACTION_OR_COUNT = ("limit_train_batches", "limit_val_batches", "limit_test_batches")
_FLAGS = ("export_bundle", "print_table", "datamodule.shuffle")


def _value(cfg: DictConfig, key: str) -> Any:
    try:
        return OmegaConf.select(cfg, key, default=_MISSING, throw_on_resolution_failure=True)
    except Exception as exc:  # an interpolation that cannot resolve names its own key
        raise ConfigError(f"{key}: cannot be resolved ({exc})") from None


def _check_number(key: str, value: Any, kind: type, low: float | None, nullable: bool) -> None:
    if value is None and nullable:
        return
    noun = "an integer" if kind is int else "a number"
    is_int = isinstance(value, int) and not isinstance(value, bool)
    ok = is_int if kind is int else (is_int or isinstance(value, float))
    if kind is float and ok and not value == value:  # NaN
        ok = False
    if ok and low is not None and value < low:
        ok = False
    if ok and key == "optimizer.lr" and value <= 0:
        ok = False
    if not ok:
        bound = " > 0" if key == "optimizer.lr" else (f" >= {low:g}" if low is not None else "")
        null = " or null" if nullable else ""
        raise ConfigError(f"{key}: expected {noun}{bound}{null}, got {value!r}")


def check_numbers(cfg: DictConfig, keys: tuple[str, ...]) -> None:
    """The checks of `check_config` for these numeric keys alone (those `cfg` has)."""
    for key in keys:
        value = _value(cfg, key)
        if value is not _MISSING:
            _check_number(key, value, *_NUMBERS[key])


def check_output_root(root: Any, key: str = "paths.output_root") -> None:
    """A folder that exists and can be written, or can be created; ConfigError otherwise."""
    path = Path(str(root))
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{key}: {path} is a file, expected a folder")
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"{key}: {existing} is a file, so {path} cannot be created")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"{key}: {existing} is not writable")


def check_config(cfg: DictConfig) -> None:
    """Raise ConfigError for the first value in `cfg` that cannot work (see the module doc)."""
    check_numbers(cfg, tuple(_NUMBERS))
    for name in _FRACTION_OR_COUNT:
        key = f"trainer.{name}"
        value = _value(cfg, key)
        if value is _MISSING or value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            raise ConfigError(f"{key}: expected a count >= 0, a fraction in [0, 1] or null")
        if isinstance(value, float) and value > 1:
            raise ConfigError(f"{key}: a fraction must be in [0, 1], got {value!r}")
    for key in _FLAGS:
        value = _value(cfg, key)
        if value is not _MISSING and not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
    label = _value(cfg, "label")
    if label is not _MISSING and label is not None and not isinstance(label, str):
        raise ConfigError(f"label: expected a label name or null, got {label!r}")
    model, embedding = _value(cfg, "model"), _value(cfg, "embedding")
    if model is not _MISSING and embedding is not _MISSING:
        try:
            registry.check_combination(
                registry.model_spec(model), registry.embedding_spec(embedding)
            )
        except registry.SpecError as exc:
            raise ConfigError(str(exc)) from None
    root = _value(cfg, "paths.output_root")
    if root is not _MISSING and root is not None:
        check_output_root(root)


class ConfigCheck(Callback):
    """Hydra callback: check the config before Hydra creates the run (or sweep) folder."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check(config)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check(config)  # the shared values; each job's own values are checked in train()

    @staticmethod
    def _check(config: DictConfig) -> None:
        from hydra.core.hydra_config import HydraConfig

        if config.get("task_name") != "train":
            return
        HydraConfig.instance().set_config(config)  # so `${hydra:...}` values resolve here
        try:
            check_config(config)
        except ConfigError as exc:
            print(f"error: {exc}", file=sys.stderr)
            sys.exit(2)
