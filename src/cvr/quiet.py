"""Silence third-party messages that tell a user of this project nothing they can act on.

Each filter matches one known message, so anything new or unexpected still shows:

- Lightning's "Tip: ... try installing litlogger" advert (printed by every Trainer);
- torch's deprecation of `LeafSpec`, triggered inside Lightning's own `_pytree` helper;
- Lightning's "number of training batches is smaller than the logging interval" on small data
  (epoch-level metrics are logged regardless);
- Lightning's "resuming from a checkpoint that ended before the epoch ended and your dataloader
  is not resumable": the module resumes mid-epoch itself (CTRModule.on_train_start skips the
  batches its checkpoint already trained; tests/e2e/test_resume.py: a run SIGKILLed mid-epoch
  and resumed ends on the uninterrupted run's figures);
- MLflow's "Downloading artifacts" progress bar when it validates a logged model's input
  example (`MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR`, unless the user set it).
"""

from __future__ import annotations

import logging
import os
import warnings

_WARNINGS = (
    r".*LeafSpec.*(deprecated|is_leaf)",
    r"The number of training batches \(\d+\) is smaller than the logging interval",
    r"You're resuming from a checkpoint that ended before the epoch ended",
    # Our epoch values are already the same on every process (CTRModule.on_train_epoch_end).
    r".*when logging on epoch level in distributed setting",
)
_DONE = False


class _DropTip(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "litlogger" not in str(record.msg)


def quiet_third_party() -> None:
    """Install the filters (idempotent; call before building the Trainer)."""
    global _DONE
    if _DONE:
        return
    _DONE = True
    for pattern in _WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_DropTip())
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
