"""Checkpoints are data: loaded with `weights_only=True`, written atomically, verified on resume.

- `load_checkpoint(path)`: `torch.load(weights_only=True)` with the few non-tensor types
  Lightning's checkpoints may hold allow-listed; a pickle that names any other callable is
  refused, never run.
- `AtomicCheckpointIO`: Lightning's writer goes through an fsspec transaction whose temporary
  file lives in `$TMPDIR`; across filesystems the final "move" is a copy, so a full disk left a
  truncated checkpoint under its final name. This one writes `<name>.tmp-<pid>` in the
  destination folder, fsyncs it and renames it into place; a failed write leaves the old file.
  With `sync_each=False` (the training pipeline) a checkpoint is renamed into place unsynced
  and every one still there is fsynced when the stage ends (`teardown`): a killed process loses
  nothing (the page cache holds the renamed file), only an operating-system crash mid-run can,
  and resume then falls back to an intact checkpoint (`resume_checkpoint`). A tiny run's 11
  improving epochs spent ~0.34 s of its ~0.75 s of checkpoint writes in those fsyncs. Records
  keep torch's CRC32: turning it off is a process-wide switch (`set_crc32_options`), and a
  start-up bench run with it toggled around each save failed once in `torch.save`'s zip writer
  (`unexpected pos`), so the ~40% of a save's CPU it costs stays.
- `ResumableModelCheckpoint`: Lightning's ModelCheckpoint, but a resume into a new run folder
  keeps the best checkpoint and its score (Lightning keeps only the path when the folder
  changes, so the first epoch after a resume always became the new best: a finished tiny run with
  best epoch 11 of 14, resumed, tested epoch 13).
- `intact_checkpoint(path)`: does it load, and does it hold a state dict?
- `newest_intact(paths)`: the newest candidate that is intact, saying which ones were skipped;
  `resume_checkpoint(path)`: `path`, or the newest intact checkpoint beside it, saying so.
"""

from __future__ import annotations

import errno
import logging
import os
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, BinaryIO

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import ModelCheckpoint

log = logging.getLogger(__name__)

TMP_MARK = ".tmp-"


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be loaded (truncated, not a checkpoint, or not plain data)."""


class DiskFullError(OSError):
    """The disk filled while writing `path`; one clear line naming it."""


def _allowed_globals() -> list[Any]:
    # Types Lightning/numpy may put in a checkpoint besides tensors and containers.
    import numpy as np

    try:
        from numpy._core.multiarray import scalar
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import scalar
    dtypes = [type(np.dtype(t)) for t in ("float32", "float64", "int64", "int32", "bool")]
    return [scalar, np.dtype, *dtypes]


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict[str, Any]:
    """The checkpoint dict at `path`, loaded as data only (`weights_only=True`).

    Raises CheckpointError naming the file if it is truncated, not a torch file, or names a
    callable that is not allow-listed.
    """
    path = Path(path)
    try:
        with torch.serialization.safe_globals(_allowed_globals()):
            state = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path}: not a loadable checkpoint ({reason[:300]})") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: not a checkpoint (holds {type(state).__name__})")
    return state


class ResumableModelCheckpoint(ModelCheckpoint):
    """ModelCheckpoint whose best checkpoints and scores survive a resume into another folder.

    Every resume here writes into a new run folder; Lightning then restores only
    `best_model_path`, so the resumed run compared its next epoch against nothing. This keeps
    the recorded best (those of its files that still exist) as the one to beat. Lightning never
    deletes a file outside this callback's own folder, so the earlier run's stays."""

    @property
    def state_key(self) -> str:
        # ModelCheckpoint's key, so checkpoints written before this class resume into it
        return super().state_key.replace(type(self).__qualname__, ModelCheckpoint.__qualname__, 1)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        kept = {
            path: score
            for path, score in (state_dict.get("best_k_models") or {}).items()
            if Path(path).is_file()
        }
        if state_dict.get("dirpath", self.dirpath) == self.dirpath or not kept:
            super().load_state_dict(state_dict)
            return
        self.best_k_models = kept
        best, worst = (max, min) if self.mode == "max" else (min, max)
        self.best_model_path = best(kept, key=kept.get)
        self.best_model_score = kept[self.best_model_path]
        if len(kept) == self.save_top_k:  # as Lightning keeps them once top-k is full
            self.kth_best_model_path = worst(kept, key=kept.get)
            self.kth_value = kept[self.kth_best_model_path]


def intact_checkpoint(path: str | os.PathLike) -> bool:
    """True if `path` loads as data and holds a `state_dict`."""
    try:
        return "state_dict" in load_checkpoint(path)
    except (CheckpointError, OSError):
        return False


def newest_intact(paths: Iterable[Path]) -> Path | None:
    """The newest (by mtime) of `paths` that is intact; each skipped one is logged as a warning."""
    ordered = sorted((p for p in paths if p.is_file()), key=lambda p: p.stat().st_mtime)
    for path in reversed(ordered):
        if intact_checkpoint(path):
            return path
        log.warning("checkpoint %s does not load (truncated or corrupt); skipping it", path)
    return None


def resume_checkpoint(preferred: Path) -> Path:
    """`preferred` if it loads, else the newest intact checkpoint beside it, saying so.

    Raises CheckpointError naming the folder when no checkpoint there loads.
    """
    if intact_checkpoint(preferred):
        return preferred
    others = [p for p in preferred.parent.glob("*.ckpt") if p != preferred]
    fallback = newest_intact(others)
    why = "does not load (truncated or corrupt)" if preferred.exists() else "is missing"
    if fallback is None:
        raise CheckpointError(
            f"{preferred}: {why} and no other checkpoint in {preferred.parent} loads; "
            "start fresh with resume=false"
        )
    log.warning("%s %s; resuming from %s instead", preferred, why, fallback)
    return fallback


def write_bytes_atomic(data: bytes, path: str | os.PathLike) -> None:
    """Write `data` to `path` via a temporary sibling + fsync + rename; DiskFullError if full."""
    write_atomic(path, lambda f: f.write(data))


def write_atomic(
    path: str | os.PathLike, write: Callable[[BinaryIO], object], sync: bool = True
) -> None:
    """`write(f)` into a temporary sibling of `path`, fsync (unless `sync` is false), rename;
    DiskFullError if full."""
    path = Path(path)
    # The writer's pid in the name: gc (cvr.ops.temporaries) reclaims it once that process is gone.
    tmp = path.with_name(f"{path.name}{TMP_MARK}{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            if sync:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        if exc.errno == errno.ENOSPC:
            raise DiskFullError(
                errno.ENOSPC, f"disk full while writing {path} (nothing was replaced)"
            ) from None
        raise
    except BaseException:  # `write` failed (an object torch cannot save, a signal): no leftover
        tmp.unlink(missing_ok=True)
        raise


def sync_file(path: str | os.PathLike) -> None:
    """fsync the file at `path`; DiskFullError naming it if the disk is full."""
    try:
        with open(path, "rb") as f:
            os.fsync(f.fileno())
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise DiskFullError(errno.ENOSPC, f"disk full while writing {path}") from None
        raise


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning CheckpointIO: temporary name in the destination folder, then rename; fsynced
    at once, or (`sync_each=False`) when the stage ends."""

    def __init__(self, sync_each: bool = True) -> None:
        super().__init__()
        self.sync_each = sync_each
        self._unsynced: dict[Path, None] = {}

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None
    ) -> None:
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO takes no storage_options")
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        # Straight into the temporary file: through a BytesIO first cost ~1.6x (its growth
        # copies, then the write), measured on a tiny run's 37 MB checkpoints.
        write_atomic(path, lambda f: torch.save(checkpoint, f), sync=self.sync_each)
        if not self.sync_each:
            self._unsynced[Path(path)] = None

    def teardown(self) -> None:
        """fsync the checkpoints written unsynced that are still there (the kept ones)."""
        pending, self._unsynced = list(self._unsynced), {}
        for path in pending:
            if path.is_file() and not path.is_symlink():
                sync_file(path)
        super().teardown()

    def load_checkpoint(
        self, path: Any, map_location: Any = None, weights_only: bool | None = None
    ) -> dict[str, Any]:
        return load_checkpoint(path, map_location=map_location)
