"""notebooks/tradeoffs.ipynb runs top to bottom on a tiny sweep and draws its figures."""

import os
import sys

import nbformat
import pytest
from nbconvert.preprocessors import ExecutePreprocessor

from tests.helpers import REPO, TINY_DATA, run_script


@pytest.mark.slow
def test_tradeoffs_notebook_executes_on_a_tiny_sweep(tmp_path):
    sweep = run_script(
        [
            "train.py",
            "-m",
            f"paths.output_root={tmp_path}",
            "model=fm,ffm",
            "embedding.dim=2,4",
            *TINY_DATA,
            "trainer.max_epochs=1",
            "trainer.enable_progress_bar=false",
            "print_table=false",
        ]
    )
    assert sweep.returncode == 0, sweep.stderr[-3000:]
    notebook = nbformat.read(REPO / "notebooks" / "tradeoffs.ipynb", as_version=4)
    env_before = dict(os.environ)
    os.environ["CVR_TRACKING_URI"] = f"sqlite:///{tmp_path}/mlflow.db"
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
