"""The errors an entry point reports as one line (no traceback): bad input, not a bug.

Each names the config key, file or run folder at fault and what was expected.
"""

from __future__ import annotations

import errno

from cvr.checkpointing import CheckpointError, DiskFullError
from cvr.data.errors import DataError
from cvr.models.registry import SpecError
from cvr.ops.manifest import ManifestError
from cvr.pipelines.run_lifecycle import RunInUse
from cvr.tracking.store import StoreError
from cvr.tracking.tracker import TrackingProcessError


class ConfigError(ValueError):
    """A config value that cannot work; the message names the key and what was expected."""


#: Caught by train.py / retrieve.py and printed as `error: <message>`, exit code 2.
USER_ERRORS = (
    ConfigError,
    SpecError,
    DataError,
    ManifestError,
    CheckpointError,
    DiskFullError,
    RunInUse,
    StoreError,
    TrackingProcessError,
)


def one_line(error: BaseException) -> str | None:
    """`error: ...` for an error a user can fix (bad input, disk full), else None (a bug)."""
    if isinstance(error, USER_ERRORS):
        return f"error: {error}"
    if isinstance(error, OSError) and error.errno == errno.ENOSPC:
        where = error.filename or "the output folder"
        return f"error: disk full while writing {where}"
    if isinstance(error, PermissionError | NotADirectoryError | FileExistsError):
        return f"error: {error}"
    text = str(error)
    if "database or disk is full" in text:  # SQLite (MLflow's store) through SQLAlchemy
        return f"error: disk full while writing the MLflow store ({text.splitlines()[0][:200]})"
    return None
