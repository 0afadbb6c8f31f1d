"""Reading a finished training run folder back, as data: its config, checkpoint, store and model.

A run folder is what `train.py` leaves: `.hydra/config.yaml` (+ `hydra.yaml`), `checkpoints/`,
`run_info.json`, `metrics.json`. Everything read from it is treated as untrusted data:

- the config is never passed to `hydra.utils.instantiate`: the model is rebuilt through the
  closed registry (`cvr.models.registry`), and the store through `run_store`, which accepts only
  the store builders listed in `_store_builders` and refuses a `_target_` anywhere in its
  arguments;
- checkpoints are loaded with `weights_only=True` (`cvr.checkpointing.load_checkpoint`).

Used by bundle export (`export_bundle`, `scripts/export_bundle.py`) and `retrieve.py run_dir=`.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from torch import nn

from cvr.checkpointing import load_checkpoint
from cvr.data.store import EncodedStore
from cvr.models.registry import SpecError, build_model
from cvr.ops.manifest import ManifestError

log = logging.getLogger(__name__)

RUN_INFO = "run_info.json"
METRICS = "metrics.json"


def _store_builders() -> dict[str, Callable[..., EncodedStore]]:
    from cvr.data.build import build_file_store
    from cvr.data.implicit import build_implicit_store
    from cvr.data.synthetic import build_synthetic_store

    return {
        "cvr.data.build.build_file_store": build_file_store,
        "cvr.data.synthetic.build_synthetic_store": build_synthetic_store,
        "cvr.data.implicit.build_implicit_store": build_implicit_store,
    }


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
    if not isinstance(cfg, DictConfig):
        raise ManifestError(f"{config_path}: expected a mapping")
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


def find_targets(node: Any, path: str = "") -> list[str]:
    """Config paths under `node` that hold a `_target_` (hydra would import and call them)."""
    found = []
    if isinstance(node, Mapping):
        if "_target_" in node:
            found.append(path or "<root>")
        for key, value in node.items():
            if key != "_target_":
                found += find_targets(value, f"{path}.{key}" if path else str(key))
    elif isinstance(node, list | tuple):
        for i, value in enumerate(node):
            found += find_targets(value, f"{path}[{i}]")
    return found


def run_store(cfg: DictConfig | Mapping[str, Any], where: str = "config") -> EncodedStore:
    """Open (or rebuild) the store a saved run config names, through a closed list of builders.

    Raises ManifestError naming `where` if `data._target_` is not a listed builder or any
    argument holds a `_target_` of its own.
    """
    data = cfg["data"]
    data = OmegaConf.to_container(data, resolve=True) if isinstance(data, DictConfig) else data
    if not isinstance(data, dict):
        raise ManifestError(f"{where}: data: expected a mapping")
    data = dict(data)
    target = data.pop("_target_", None)
    builders = _store_builders()
    if target not in builders:
        raise ManifestError(
            f"{where}: data._target_ {target!r} is not a known store builder; "
            f"expected one of {sorted(builders)}"
        )
    nested = find_targets(data, "data")
    if nested:
        raise ManifestError(f"{where}: {', '.join(nested)}: a saved config may not name callables")
    cache_dir = cfg["paths"]["cache_dir"]
    return builders[target](cache_root=cache_dir, **data)


def run_model(
    cfg: DictConfig | Mapping[str, Any], cardinalities: list[int], where: str
) -> nn.Module:
    """The model a saved config describes, built through the closed registry."""
    try:
        return build_model(cfg, cardinalities)
    except SpecError as exc:
        raise ManifestError(f"{where}: {exc}") from None


def checkpoint_weights(checkpoint: Path) -> dict[str, Any]:
    """The model's weights (`model.` prefix removed) of a Lightning checkpoint, loaded as data."""
    state = load_checkpoint(checkpoint).get("state_dict")
    if not isinstance(state, dict):
        raise ManifestError(f"{checkpoint}: no state_dict in the checkpoint")
    return {k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")}


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object file, or {} when absent; ManifestError naming it if it is not one."""
    if not path.is_file():
        return {}
    try:
        value = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ManifestError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(value, dict):
        raise ManifestError(f"{path}: expected a JSON object")
    return value


def find_checkpoint(run_dir: str | Path) -> Path:
    """The best checkpoint of a run folder (`checkpoints/epoch*.ckpt`), else `last.ckpt`.

    The checkpoint callback keeps only the best epoch file; should there be several, the newest
    is taken.
    """
    ckpt_dir = Path(run_dir) / "checkpoints"
    best = sorted(ckpt_dir.glob("epoch*.ckpt"), key=lambda p: (p.stat().st_mtime, p.name))
    if best:
        if len(best) > 1:
            log.warning("%s: %d epoch checkpoints; using the newest", ckpt_dir, len(best))
        return best[-1]
    last = ckpt_dir / "last.ckpt"
    if last.is_file():
        return last
    raise FileNotFoundError(f"{ckpt_dir}: no checkpoint (expected epoch*.ckpt or last.ckpt)")


def export_bundle(
    run_dir_or_checkpoint: str | Path,
    out_dir: str | Path,
    store: EncodedStore | None = None,
    overwrite: bool = False,
) -> Path:
    """Bundle a finished run: its best checkpoint (or the given .ckpt), store, config, metrics.

    A checkpoint path means the run folder two levels up. Without `store`, the run's data
    config is opened again through `run_store` (its cached store, or the same store rebuilt
    deterministically). Returns `out_dir`.
    """
    from cvr.serving.bundle import load_weights, write_bundle

    path = Path(run_dir_or_checkpoint)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such run folder or checkpoint")
    checkpoint = path if path.is_file() else find_checkpoint(path)
    run_dir = checkpoint.parent.parent
    cfg = load_run_config(run_dir)
    where = str(run_dir / ".hydra" / "config.yaml")
    if store is None:
        store = run_store(cfg, where)
    model = run_model(cfg, store.cardinalities, where)
    load_weights(model, checkpoint_weights(checkpoint), checkpoint)
    return write_bundle(
        model,
        store,
        cfg,
        read_json(run_dir / METRICS),
        out_dir,
        checkpoint=checkpoint,
        run_info=read_json(run_dir / RUN_INFO),
        overwrite=overwrite,
    )
