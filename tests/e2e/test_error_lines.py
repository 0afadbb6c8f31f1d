"""What an entry point prints for errors a user can fix: one line, naming the path."""

from __future__ import annotations

import errno

from cvr.pipelines.errors import ConfigError, one_line


def test_disk_full_names_the_file():
    error = OSError(errno.ENOSPC, "No space left on device", "/data/out/metrics.json")
    assert one_line(error) == "error: disk full while writing /data/out/metrics.json"


def test_sqlite_disk_full_is_one_line():
    error = RuntimeError("(sqlite3.OperationalError) database or disk is full\n[SQL: INSERT ...]")
    message = one_line(error)
    assert message.startswith("error: disk full while writing the MLflow store")
    assert "\n" not in message


def test_user_errors_are_one_line_and_bugs_are_not():
    assert one_line(ConfigError("embedding.dim: expected an integer")) == (
        "error: embedding.dim: expected an integer"
    )
    assert one_line(ZeroDivisionError("bug")) is None
