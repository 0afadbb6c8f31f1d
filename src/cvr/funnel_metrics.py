"""Metrics of the click -> conversion funnel, each named by the rows (space) it is computed on.

    targets: float (n, 4), columns TARGETS = click, ctcvr (click AND conversion), true_pctr,
             true_pcvr (the last two NaN where the data have no ground truth)
    preds:   float (n, 3), columns HEADS = pctr, pcvr, pctcvr (NaN for a head a model lacks)

| name                           | rows            | prediction vs label                          |
|--------------------------------|-----------------|----------------------------------------------|
| ctr_auc / _logloss / _calib.   | all impressions | pctr vs click                                |
| ctcvr_auc / ...                | all impressions | pctcvr vs click AND conversion               |
| cvr_auc_clicked / ...          | clicked only    | pcvr vs conversion (the ESMM paper's CVR AUC)|
| cvr_auc_all, cvr_logloss_all   | all impressions | pcvr vs the true pCVR (synthetic data only)  |

`cvr_*_all` score the conversion that would follow a click on every impression, clicked or not:
its label is unobserved off the clicked rows, so each row counts as a positive with weight
true_pcvr and a negative with weight 1 - true_pcvr (the expected AUC / logloss over conversion
outcomes drawn from the truth). `oracle_<metric>` is the same metric of the true probabilities,
`<metric>_gap` the oracle minus the model (AUC) or the model minus the oracle (logloss).
"""

from __future__ import annotations

import numpy as np

from cvr.metrics import binary_metrics, logloss

TARGETS = ("click", "ctcvr", "true_pctr", "true_pcvr")
HEADS = ("pctr", "pcvr", "pctcvr")
_EPS = 1e-7


def soft_label_metrics(true_probs: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    """AUC and logloss of `probs` against outcomes drawn from `true_probs` (expected values).

    Each row is a positive of weight t and a negative of weight 1 - t; AUC is then the weighted
    probability that a positive outranks a negative (ties count half; a row paired with itself
    is a tie, which moves the AUC by O(1/n)), logloss the cross-entropy.
    """
    # Imported here: scikit-learn (and pandas with it) costs every run ~1 s of start-up.
    from sklearn.metrics import roc_auc_score

    t = np.asarray(true_probs, dtype=np.float64).ravel()
    p = np.asarray(probs, dtype=np.float64).ravel()
    n = len(t)
    labels = np.concatenate([np.ones(n), np.zeros(n)])
    weights = np.concatenate([t, 1.0 - t])
    auc = float(roc_auc_score(labels, np.concatenate([p, p]), sample_weight=weights))
    q = np.clip(p, _EPS, 1 - _EPS)
    cross_entropy = float(-np.mean(t * np.log(q) + (1 - t) * np.log(1 - q)))
    return {"auc": auc, "logloss": cross_entropy}


def _head_block(prefix: str, labels: np.ndarray, probs: np.ndarray, suffix: str = ""):
    m = binary_metrics(labels, probs)
    return {
        f"{prefix}_auc{suffix}": m["auc"],
        f"{prefix}_logloss{suffix}": m["logloss"],
        f"{prefix}_calibration{suffix}": m["calibration"],
    }


def _with_oracle(out: dict, model: dict, oracle: dict) -> None:
    out.update(model)
    for key, value in oracle.items():
        out[f"oracle_{key}"] = value
        if "calibration" in key:
            continue
        gap = value - model[key] if "auc" in key else model[key] - value
        out[f"{key}_gap"] = gap


def funnel_metrics(targets: np.ndarray, preds: np.ndarray) -> dict[str, float]:
    """Every metric of the table above that the heads and targets allow (see module doc)."""
    targets = np.asarray(targets, dtype=np.float64)
    preds = np.asarray(preds, dtype=np.float64)
    if targets.ndim != 2 or targets.shape[1] != len(TARGETS):
        raise ValueError(f"targets: expected (n, {len(TARGETS)}) {TARGETS}, got {targets.shape}")
    if preds.shape != (len(targets), len(HEADS)):
        raise ValueError(
            f"preds: expected ({len(targets)}, {len(HEADS)}) {HEADS}, got {preds.shape}"
        )
    click, ctcvr, true_pctr, true_pcvr = targets.T
    pctr, pcvr, pctcvr = preds.T
    has = {name: bool(np.all(np.isfinite(col))) for name, col in zip(HEADS, preds.T, strict=True)}
    has_clicks = bool(np.all(np.isfinite(click)))
    has_ctcvr = has_clicks and bool(np.all(np.isfinite(ctcvr)))
    truth = bool(np.all(np.isfinite(true_pctr)) and np.all(np.isfinite(true_pcvr)))
    out: dict[str, float] = {}
    if has["pctr"] and has_clicks:
        model = _head_block("ctr", click, pctr)
        _with_oracle(out, model, _head_block("ctr", click, true_pctr) if truth else {})
    if has["pctcvr"] and has_ctcvr:
        model = _head_block("ctcvr", ctcvr, pctcvr)
        oracle = _head_block("ctcvr", ctcvr, true_pctr * true_pcvr) if truth else {}
        _with_oracle(out, model, oracle)
    if has["pcvr"] and has_ctcvr:
        clicked = click > 0.5
        if clicked.any():
            model = _head_block("cvr", ctcvr[clicked], pcvr[clicked], "_clicked")
            oracle = (
                _head_block("cvr", ctcvr[clicked], true_pcvr[clicked], "_clicked") if truth else {}
            )
            _with_oracle(out, model, oracle)
        if truth:
            soft = soft_label_metrics(true_pcvr, pcvr)
            best = soft_label_metrics(true_pcvr, true_pcvr)
            model = {"cvr_auc_all": soft["auc"], "cvr_logloss_all": soft["logloss"]}
            oracle = {"cvr_auc_all": best["auc"], "cvr_logloss_all": best["logloss"]}
            _with_oracle(out, model, oracle)
            out["cvr_calibration_all"] = float(pcvr.mean() / true_pcvr.mean())
    return out


def primary_metrics(
    labels: np.ndarray, probs: np.ndarray, true_probs: np.ndarray | None
) -> dict[str, float]:
    """auc, logloss, ne, calibration (+ oracle_auc, oracle_logloss) of the head a task trains,
    on the rows and label it trains on: what the generic `val/auc` names mean for that task."""
    out = binary_metrics(labels, probs)
    if true_probs is not None and np.all(np.isfinite(true_probs)):
        oracle = binary_metrics(labels, true_probs)
        out["oracle_auc"], out["oracle_logloss"] = oracle["auc"], logloss(labels, true_probs)
    return out
