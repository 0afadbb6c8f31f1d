"""Fixtures shared by the data tests."""

from __future__ import annotations

import pytest

from cvr.data.readers import lines


@pytest.fixture(params=["isal", "pyarrow"])
def inflate(request, monkeypatch) -> str:
    """Each `.gz` test runs twice: through ISA-L (skipped where the isal package is missing)
    and through pyarrow's gzip stream (isal hidden from the reader)."""
    if request.param == "pyarrow":
        monkeypatch.setattr(lines, "_isal", lambda: None)
    elif lines._isal() is None:
        pytest.skip("the optional isal package is not installed")
    return request.param
