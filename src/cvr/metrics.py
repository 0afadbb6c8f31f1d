"""Quality metrics for binary CTR/CVR predictions, computed over a whole split at once.

AUC comes from scikit-learn (a maintained implementation); logloss, normalized entropy and
calibration are defined here because their conventions matter:

- normalized entropy (NE) = logloss / entropy of the split's base rate (He et al., 2014); < 1 means
  better than always predicting the base rate.
- calibration = mean prediction / observed positive rate; 1 is perfectly calibrated on average.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import roc_auc_score

_EPS = 1e-7


def logloss(labels: np.ndarray, probs: np.ndarray) -> float:
    p = np.clip(np.asarray(probs, dtype=np.float64), _EPS, 1 - _EPS)
    y = np.asarray(labels, dtype=np.float64)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def base_rate_entropy(labels: np.ndarray) -> float:
    rate = float(np.clip(np.mean(labels), _EPS, 1 - _EPS))
    return -(rate * np.log(rate) + (1 - rate) * np.log(1 - rate))


def binary_metrics(labels: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    """AUC, logloss, NE and calibration of probabilities against 0/1 labels (1-D arrays).

    AUC is NaN where the split holds only one class (it is undefined there).
    """
    y = np.asarray(labels, dtype=np.float64).ravel()
    p = np.asarray(probs, dtype=np.float64).ravel()
    if y.shape != p.shape or y.size == 0:
        raise ValueError(f"labels {y.shape} and probs {p.shape} must be equal, non-empty 1-D")
    both_classes = 0 < y.sum() < y.size
    loss = logloss(y, p)
    rate = y.mean()
    return {
        "auc": float(roc_auc_score(y, p)) if both_classes else float("nan"),
        "logloss": loss,
        "ne": loss / base_rate_entropy(y),
        "calibration": float(p.mean() / rate) if rate > 0 else float("nan"),
    }
