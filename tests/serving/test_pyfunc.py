"""The bundle as an MLflow pyfunc model: logged into a run, loaded by URI, scoring like the
Predictor."""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from cvr.serving.predictor import Predictor
from cvr.serving.pyfunc import input_example_of, log_pyfunc_model, pip_requirements
from cvr.tracking import mlflow_runs
from tests.serving.test_bundle import make_file_bundle


@pytest.fixture(scope="module")
def logged(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pyfunc")
    bundle, _, csv = make_file_bundle(tmp)
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    run_id = mlflow_runs.start_run(uri, "serving", "tiny", artifact_root=str(tmp / "artifacts"))
    model_uri = log_pyfunc_model(uri, run_id, bundle)
    return uri, run_id, model_uri, bundle, csv


def test_pyfunc_model_scores_like_the_predictor(logged):
    uri, run_id, model_uri, bundle, csv = logged
    assert model_uri == f"runs:/{run_id}/model"
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        model = mlflow.pyfunc.load_model(model_uri)
    finally:
        mlflow.set_tracking_uri(previous)
    predictor = Predictor.load(bundle)
    # The signature's types: strings for categories, floats for numbers (MLflow refuses int64
    # for a double column as an unsafe conversion).
    frame = pd.read_csv(csv, dtype={"site": str, "user": str, "ad": str, "age": float})
    frame = frame.drop(columns="click")
    got = np.asarray(model.predict(frame))
    assert got.shape == (len(frame),)
    np.testing.assert_allclose(got, predictor.predict(frame), rtol=0, atol=1e-6)
    # Columns are optional: an absent field is a missing value.
    partial = frame[["site", "price"]].head(5)
    np.testing.assert_allclose(model.predict(partial), predictor.predict(partial), atol=1e-6)
    # A bad value fails with the Predictor's DataError message, naming the field.
    with pytest.raises(mlflow.exceptions.MlflowException, match="field 'price'"):
        model.predict(pd.DataFrame({"price": ["cheap"]}))


def test_pyfunc_model_returns_one_prediction_per_row_even_with_no_known_field(logged):
    uri, _, model_uri, bundle, _ = logged
    model = _load(uri, model_uri)
    unknown = pd.DataFrame({"colour": ["red", "blue"]})
    got = np.asarray(model.predict(unknown))
    assert got.shape == (2,)
    missing = Predictor.load(bundle).predict([{}, {}])
    np.testing.assert_allclose(got, missing, atol=1e-6)
    mixed = pd.DataFrame({"colour": ["red", "blue", "x"], "site": [None, "s1", None]})
    assert np.asarray(model.predict(mixed)).shape == (3,)


def test_pyfunc_model_is_logged_from_code_not_pickled(logged):
    uri, _, model_uri, _, _ = logged
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        local = Path(mlflow.artifacts.download_artifacts(model_uri))
    finally:
        mlflow.set_tracking_uri(previous)
    assert not list(local.rglob("*.pkl")), "a pickled python_model was logged"
    mlmodel = (local / "MLmodel").read_text()
    assert "pyfunc_model.py" in mlmodel


def _load(uri: str, model_uri: str):
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        return mlflow.pyfunc.load_model(model_uri)
    finally:
        mlflow.set_tracking_uri(previous)


def test_logged_model_has_signature_example_and_pinned_requirements(logged):
    uri, run_id, model_uri, bundle, _ = logged
    assert MlflowClient(uri).get_run(run_id).info.status == "RUNNING"  # the run is not ended
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        model_info = mlflow.models.get_model_info(model_uri)
        requirements = Path(mlflow.pyfunc.get_model_dependencies(model_uri)).read_text()
    finally:
        mlflow.set_tracking_uri(previous)
    # Output-only signature (an input schema drops rows with no known field); the fields and
    # their types are the model's metadata.
    assert model_info.signature.inputs is None
    fields = model_info.metadata["fields"]
    assert [f["name"] for f in fields] == ["site", "user", "ad", "price", "age"]
    assert [f["type"] for f in fields] == ["string"] * 3 + ["double"] * 2
    example = input_example_of(Predictor.load(bundle))
    assert list(example.columns) == [f["name"] for f in fields] and len(example) == 3
    pins = pip_requirements()
    assert any(pin.startswith("torch==") for pin in pins)
    assert all(pin in requirements for pin in pins)
