"""Fixtures shared by the whole test suite."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real-data samples folder `<repo>/../shared/data` (see its NOTICE.md); skip if absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data not found: real-data samples absent")
    return SHARED_DATA
