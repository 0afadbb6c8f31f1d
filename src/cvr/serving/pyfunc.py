"""The serving bundle as an MLflow pyfunc model, logged into a training run.

    uri = log_pyfunc_model("sqlite:///outputs/mlflow.db", run_id, "outputs/bundles/ffm")
    mlflow.pyfunc.load_model(uri).predict(df)   # float64 probabilities (n,)

The bundle directory is the model's one artifact; `load_context` runs `Predictor.load` on it, so
the logged model verifies the bundle's checksums and scores exactly like the Predictor. The
signature names every field as an optional column (categorical: string, numeric: double);
absent columns are missing values. MLflow enforces those types before the model sees the data
and refuses an int64 column for a double field as unsafe, so cast numbers to float (the
scoring server parses JSON by the signature and needs no cast).

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
from mlflow.models import ModelSignature
from mlflow.tracking import MlflowClient
from mlflow.types import ColSpec
from mlflow.types import Schema as MlflowSchema

from cvr.serving.predictor import Predictor

ARTIFACT_PATH = "model"
BUNDLE_ARTIFACT = "bundle"
# Distributions the predictor imports (directly or through cvr.pipelines.train.build_model).
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
        """Probabilities float64 (n,) for a DataFrame with one column per field name."""
        return self.predictor.predict(model_input)


def signature_of(predictor: Predictor) -> ModelSignature:
    """Optional columns named by the fields (categorical: string, numeric: double) -> double."""
    columns = [
        ColSpec("double" if f.kind == "numeric" else "string", f.name, required=False)
        for f in predictor.bundle.schema.fields
    ]
    return ModelSignature(inputs=MlflowSchema(columns), outputs=MlflowSchema([ColSpec("double")]))


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
                python_model=BundleModel(),
                artifacts={BUNDLE_ARTIFACT: str(Path(bundle_dir).resolve())},
                signature=signature_of(predictor),
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
