"""Quality metrics for binary CTR/CVR predictions, computed over a whole split at once.

AUC is the Mann-Whitney statistic with ties counted half (what scikit-learn's roc_auc_score
computes; tests check the two agree), done in numpy because importing scikit-learn (and pandas
with it) cost a tiny run about a second of start-up. Logloss, normalized entropy and calibration
are defined here because their conventions matter:

- normalized entropy (NE) = logloss / entropy of the split's base rate (He et al., 2014); < 1 means
  better than always predicting the base rate.
- calibration = mean prediction / observed positive rate; 1 is perfectly calibrated on average.
"""

from __future__ import annotations

import numpy as np

_EPS = 1e-7


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """P(a random positive scores above a random negative), a tie counting half: the area under
    the ROC curve. labels 0/1, both classes present; any real scores (ranks are what count)."""
    pos = np.asarray(labels).ravel() > 0.5
    _, group, counts = np.unique(
        np.asarray(scores).ravel(), return_inverse=True, return_counts=True
    )
    # 1-based rank of each distinct score, averaged over its ties
    ranks = (np.cumsum(counts) - counts) + (counts + 1) / 2.0
    n_pos = int(pos.sum())
    n_neg = pos.size - n_pos
    u = float(ranks[group.ravel()][pos].sum()) - n_pos * (n_pos + 1) / 2.0
    return u / (n_pos * n_neg)


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
        "auc": roc_auc(y, p) if both_classes else float("nan"),
        "logloss": loss,
        "ne": loss / base_rate_entropy(y),
        "calibration": float(p.mean() / rate) if rate > 0 else float("nan"),
    }
