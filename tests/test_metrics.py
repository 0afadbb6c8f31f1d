import math

import numpy as np
import pytest
from sklearn.metrics import log_loss, roc_auc_score

from cvr.metrics import base_rate_entropy, binary_metrics


def test_auc_and_logloss_equal_scikit_learn():
    rng = np.random.default_rng(0)
    y = rng.random(5000) < 0.3
    p = np.clip(0.3 + 0.2 * (y - 0.3) + rng.normal(0, 0.15, y.size), 0.01, 0.99)
    m = binary_metrics(y, p)
    assert m["auc"] == pytest.approx(roc_auc_score(y, p), abs=1e-12)
    assert m["logloss"] == pytest.approx(log_loss(y, p), abs=1e-9)


@pytest.mark.parametrize("levels", [3, 20, 1000])
def test_auc_with_many_ties_equals_scikit_learn(levels):
    """Scores on a coarse grid (as a model's float32 output can be): ties count half."""
    rng = np.random.default_rng(levels)
    y = rng.random(20_000) < 0.2
    p = np.round(np.clip(0.2 + 0.3 * y + rng.normal(0, 0.3, y.size), 0, 1) * (levels - 1))
    assert binary_metrics(y, p / (levels - 1))["auc"] == pytest.approx(
        roc_auc_score(y, p), abs=1e-12
    )


def test_auc_hand_computed():
    # pairs (pos, neg): (0.8, 0.1) win, (0.8, 0.8) tie, (0.4, 0.1) win, (0.4, 0.8) loss
    assert binary_metrics(np.array([1, 0, 1, 0]), np.array([0.8, 0.1, 0.4, 0.8]))[
        "auc"
    ] == pytest.approx(2.5 / 4)


def test_normalized_entropy_hand_computed():
    y = np.array([1, 0, 0, 0])
    p = np.full(4, 0.25)  # predicting the base rate exactly: NE = 1
    assert binary_metrics(y, p)["ne"] == pytest.approx(1.0)
    entropy = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))
    assert base_rate_entropy(y) == pytest.approx(entropy)
    p2 = np.array([0.5, 0.5, 0.5, 0.5])
    assert binary_metrics(y, p2)["ne"] == pytest.approx(math.log(2) / entropy)


def test_calibration_hand_computed():
    y = np.array([1, 0, 0, 0])
    assert binary_metrics(y, np.full(4, 0.5))["calibration"] == pytest.approx(2.0)
    assert binary_metrics(y, np.array([0.1, 0.1, 0.1, 0.1]))["calibration"] == pytest.approx(0.4)


def test_single_class_auc_is_nan_and_bad_shapes_raise():
    assert math.isnan(binary_metrics(np.zeros(3), np.full(3, 0.1))["auc"])
    with pytest.raises(ValueError):
        binary_metrics(np.zeros(3), np.zeros(2))
