"""Fixtures shared by the whole test suite."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real-data samples folder `<repo>/../shared/data` (see its NOTICE.md); skip if absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data not found: real-data samples absent")
    return SHARED_DATA


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Test tensors are tiny: extra intra-op threads only contend on a 2-core machine."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
