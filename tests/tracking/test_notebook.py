"""notebooks/tradeoffs.ipynb runs top to bottom on a tiny sweep and draws its figures."""

import os
import sys

import nbformat
import pytest
from nbconvert.preprocessors import ExecutePreprocessor

from tests.helpers import REPO


@pytest.mark.slow
def test_tradeoffs_notebook_executes_on_a_tiny_sweep(tiny_sweeps):
    returncode, _, stderr, root = tiny_sweeps("two_by_two")  # fm, ffm x dim 2, 4 (conftest)
    assert returncode == 0, stderr[-3000:]
    notebook = nbformat.read(REPO / "notebooks" / "tradeoffs.ipynb", as_version=4)
    env_before = dict(os.environ)
    os.environ["CVR_TRACKING_URI"] = f"sqlite:///{root}/mlflow.db"
    os.environ["CVR_SWEEP"] = "latest"
    try:
        ExecutePreprocessor(timeout=300, kernel_name="python3").preprocess(
            notebook, {"metadata": {"path": str(REPO / "notebooks")}}
        )
    finally:
        os.environ.clear()
        os.environ.update(env_before)
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 1
    text = "".join(o.get("text", "") for o in outputs)
    assert "4 finished runs" in text
    assert sys.executable  # the kernel is this interpreter's (ipykernel in the venv)
