"""The serving bundle as an MLflow pyfunc model, logged into a training run.

    uri = log_pyfunc_model("sqlite:///outputs/mlflow.db", run_id, "outputs/bundles/ffm")
    mlflow.pyfunc.load_model(uri).predict(df)   # float64 probabilities (n,)

The bundle directory is the model's one artifact; `load_context` runs `Predictor.load` on it, so
the logged model verifies the bundle's checksums and scores exactly like the Predictor: one
probability per input row, always (absent fields are missing values, unknown columns are
ignored, a row with no known field scores as all-missing). The model is logged "from code"
(`pyfunc_model.py`), so loading it runs only the project's code and unpickles nothing. The
signature declares the output only (see `signature_of`); the fields and their types are in the
model metadata and the input example. A bad value is a 400 carrying the Predictor's DataError
message (the field and what was wrong), without a stack trace.

Logging never resolves packages over the network: the pip requirements are the installed
versions of the packages the predictor imports, read locally. The `cvr` package itself is not
on PyPI; `include_code=True` copies its source into the model (`code_paths`) so that the model
can be loaded where cvr is not installed.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.tracking import MlflowClient
from mlflow.types import ColSpec
from mlflow.types import Schema as MlflowSchema

from cvr.data.errors import DataError
from cvr.serving.predictor import Predictor

ARTIFACT_PATH = "model"
#: The model-from-code file MLflow runs on load (it builds a BundleModel; nothing is pickled).
MODEL_CODE = Path(__file__).with_name("pyfunc_model.py")
BUNDLE_ARTIFACT = "bundle"
# Distributions the predictor imports (directly or through cvr.models.registry and the backends).
_REQUIREMENTS = (
    "torch",
    "numpy",
    "pandas",
    "pyarrow",
    "numba",
    "hydra-core",
    "omegaconf",
    "lightning",
    "torchmetrics",
    "scikit-learn",
    "tqdm",
)


class BundleModel(mlflow.pyfunc.PythonModel):
    """pyfunc wrapper: a Predictor over the logged bundle artifact."""

    def load_context(self, context: Any) -> None:
        self.predictor = Predictor.load(context.artifacts[BUNDLE_ARTIFACT])

    def predict(self, context: Any, model_input: pd.DataFrame, params: Any = None) -> np.ndarray:
        """Probabilities float64 (n,), one per input row, for a DataFrame (or list of dicts).

        A bad value raises an MlflowException carrying the DataError's message (the field and
        what was wrong), which the scoring server returns as a 400 without a stack trace.
        """
        try:  # columns that are not fields are ignored; a row with none scores as all-missing
            if len(self.predictor.heads) > 1:  # ESMM: a frame with pctr, pcvr, pctcvr columns
                return pd.DataFrame(self.predictor.predict_heads(model_input))
            return self.predictor.predict(model_input)
        except DataError as exc:
            raise MlflowException.invalid_parameter_value(str(exc)) from None


def signature_of(predictor: Predictor) -> ModelSignature:
    """Outputs only: one double per input row.

    An input schema would make MLflow rebuild the frame from the columns it knows, so records
    with no known field came back as zero rows (and zero predictions); the Predictor checks
    values itself and names the field. The fields and their types are in the input example and
    in the model's metadata (`fields`).
    """
    if len(predictor.heads) > 1:  # ESMM: one named double per head
        return ModelSignature(
            inputs=None, outputs=MlflowSchema([ColSpec("double", h) for h in predictor.heads])
        )
    return ModelSignature(inputs=None, outputs=MlflowSchema([ColSpec("double")]))


def fields_metadata(predictor: Predictor) -> list[dict[str, str]]:
    """[{name, type}] of every field (categorical: string, numeric: double), all optional."""
    return [
        {"name": f.name, "type": "double" if f.kind == "numeric" else "string"}
        for f in predictor.bundle.schema.fields
    ]


def input_example_of(predictor: Predictor, rows: int = 3) -> pd.DataFrame:
    """A few raw rows that fit the signature (categories as strings, numbers as floats)."""
    records = predictor.example_records(rows)
    numeric = {f.name for f in predictor.bundle.schema.fields if f.kind == "numeric"}
    frame = pd.DataFrame(records, columns=predictor.field_names)
    for name in predictor.field_names:
        if name in numeric:
            frame[name] = frame[name].astype("float64")
        else:
            frame[name] = frame[name].astype("object")
    return frame


def pip_requirements() -> list[str]:
    """Pinned requirements from the installed distributions (no network resolution)."""
    pins = []
    for name in _REQUIREMENTS:
        try:
            version = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
        pins.append(f"{name}=={version.split('+')[0]}")  # drop local tags such as +cpu
    return pins


def log_pyfunc_model(
    tracking_uri: str,
    run_id: str,
    bundle_dir: str | Path,
    input_example: pd.DataFrame | None = None,
    include_code: bool = True,
    name: str = ARTIFACT_PATH,
) -> str:
    """Log `bundle_dir` as a pyfunc model named `name` (default `model`) of run `run_id`.

    The bundle is verified first (ManifestError if it does not match its manifest). The run
    keeps its status (a RUNNING run stays RUNNING). Returns the URI `runs:/<run_id>/<name>`.
    """
    predictor = Predictor.load(bundle_dir)
    example = input_example if input_example is not None else input_example_of(predictor)
    client = MlflowClient(tracking_uri)
    status = client.get_run(run_id).info.status
    with _tracking_uri(tracking_uri), _cvr_source(include_code) as code_paths:
        with mlflow.start_run(run_id=run_id):
            mlflow.pyfunc.log_model(
                name=name,
                python_model=str(MODEL_CODE),  # model from code: loading unpickles nothing
                artifacts={BUNDLE_ARTIFACT: str(Path(bundle_dir).resolve())},
                signature=signature_of(predictor),
                metadata={"fields": fields_metadata(predictor)},
                input_example=example,
                pip_requirements=pip_requirements(),
                code_paths=code_paths,
            )
    if status != "FINISHED":
        # Leaving `start_run` marks the run FINISHED; give it back the status it had.
        client.update_run(run_id, status=status)
    return f"runs:/{run_id}/{name}"


@contextlib.contextmanager
def _tracking_uri(uri: str) -> Iterator[None]:
    """Point MLflow's fluent API at `uri` for the block only."""
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(previous)


@contextlib.contextmanager
def _cvr_source(include: bool) -> Iterator[list[str] | None]:
    """A clean copy of the cvr package source (no caches) for `code_paths`, or None."""
    if not include:
        yield None
        return
    import cvr

    with tempfile.TemporaryDirectory() as tmp:
        target = Path(tmp) / "cvr"
        ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.nbi", "*.nbc")
        shutil.copytree(Path(cvr.__file__).parent, target, ignore=ignore)
        yield [str(target)]
