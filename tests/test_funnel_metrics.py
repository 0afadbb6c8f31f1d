"""Funnel metrics per space, on hand-computed cases (clicked-only masking included)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cvr.funnel_metrics import funnel_metrics, primary_metrics, soft_label_metrics

NAN = float("nan")


def pairwise_auc(labels, scores):
    """Slow reference: the share of (positive, negative) pairs ranked right, ties half."""
    pos = [s for y, s in zip(labels, scores, strict=True) if y == 1]
    neg = [s for y, s in zip(labels, scores, strict=True) if y == 0]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def test_cvr_auc_clicked_masks_unclicked_rows():
    # Rows 0-3 clicked (conversions on 0 and 2); rows 4-5 not clicked, where a pcvr that would
    # spoil the ranking is ignored.
    click = [1, 1, 1, 1, 0, 0]
    ctcvr = [1, 0, 1, 0, 0, 0]
    pcvr = [0.9, 0.2, 0.4, 0.5, 0.99, 0.01]
    targets = np.array([click, ctcvr, [NAN] * 6, [NAN] * 6], dtype=float).T
    preds = np.array([[NAN] * 6, pcvr, [NAN] * 6]).T
    m = funnel_metrics(targets, preds)
    # Clicked pairs: (0.9 vs 0.2, 0.5), (0.4 vs 0.2, 0.5) -> 3 of 4 right.
    assert m["cvr_auc_clicked"] == pytest.approx(0.75)
    expected_ll = -np.mean([math.log(0.9), math.log(0.8), math.log(0.4), math.log(0.5)])
    assert m["cvr_logloss_clicked"] == pytest.approx(expected_ll)
    assert m["cvr_calibration_clicked"] == pytest.approx(np.mean([0.9, 0.2, 0.4, 0.5]) / 0.5)
    # No truth: no cvr_*_all; no pctr/pctcvr head: no ctr/ctcvr metrics.
    assert "cvr_auc_all" not in m and "ctr_auc" not in m and "ctcvr_auc" not in m


def test_ctr_and_ctcvr_over_all_rows_with_oracle():
    click = np.array([1, 0, 1, 0, 0, 1], dtype=float)
    ctcvr = np.array([1, 0, 0, 0, 0, 0], dtype=float)
    true_pctr = np.array([0.8, 0.1, 0.6, 0.3, 0.2, 0.7])
    true_pcvr = np.array([0.5, 0.5, 0.1, 0.2, 0.9, 0.3])
    pctr = np.array([0.6, 0.2, 0.1, 0.3, 0.4, 0.9])
    pcvr = np.array([0.3, 0.1, 0.2, 0.6, 0.5, 0.4])
    targets = np.stack([click, ctcvr, true_pctr, true_pcvr], axis=1)
    m = funnel_metrics(targets, np.stack([pctr, pcvr, pctr * pcvr], axis=1))
    assert m["ctr_auc"] == pytest.approx(pairwise_auc(click, pctr))
    assert m["oracle_ctr_auc"] == pytest.approx(pairwise_auc(click, true_pctr))
    assert m["ctr_auc_gap"] == pytest.approx(m["oracle_ctr_auc"] - m["ctr_auc"])
    assert m["ctcvr_auc"] == pytest.approx(pairwise_auc(ctcvr, pctr * pcvr))
    assert m["oracle_ctcvr_auc"] == pytest.approx(pairwise_auc(ctcvr, true_pctr * true_pcvr))
    assert m["ctr_calibration"] == pytest.approx(pctr.mean() / click.mean())
    # One conversion among 3 clicks: clicked rows are 0, 2, 5.
    assert m["cvr_auc_clicked"] == pytest.approx(pairwise_auc([1, 0, 0], [0.3, 0.2, 0.4]))
    assert m["cvr_calibration_all"] == pytest.approx(pcvr.mean() / true_pcvr.mean())
    assert m["cvr_logloss_all_gap"] == pytest.approx(
        m["cvr_logloss_all"] - m["oracle_cvr_logloss_all"]
    )


def test_soft_label_auc_is_the_expected_pairwise_auc():
    # Outcomes drawn from the truth: enumerate every labelling, weight by its probability.
    t = np.array([0.9, 0.2, 0.5, 0.7])
    p = np.array([0.8, 0.1, 0.1, 0.6])
    num = den = 0.0
    for i in range(4):
        for j in range(4):
            if i == j:
                continue
            w = t[i] * (1 - t[j])  # i positive, j negative
            num += w * (1.0 if p[i] > p[j] else 0.5 if p[i] == p[j] else 0.0)
            den += w
    # Each row is also its own pair (positive and negative at once, a tie): weight t(1-t).
    num += 0.5 * np.sum(t * (1 - t))
    den += np.sum(t * (1 - t))
    m = soft_label_metrics(t, p)
    assert m["auc"] == pytest.approx(num / den)
    assert m["logloss"] == pytest.approx(-np.mean(t * np.log(p) + (1 - t) * np.log(1 - p)))
    # The truth scores best: its cross-entropy is the entropy, below any other prediction's.
    assert soft_label_metrics(t, t)["logloss"] < m["logloss"]


def test_shapes_are_checked():
    with pytest.raises(ValueError, match="targets"):
        funnel_metrics(np.zeros((3, 2)), np.zeros((3, 3)))
    with pytest.raises(ValueError, match="preds"):
        funnel_metrics(np.zeros((3, 4)), np.zeros((2, 3)))


def test_primary_metrics_with_and_without_truth():
    labels = np.array([1, 0, 1, 0])
    probs = np.array([0.7, 0.4, 0.3, 0.2])
    m = primary_metrics(labels, probs, np.array([0.9, 0.1, 0.8, 0.2]))
    assert m["auc"] == pytest.approx(0.75) and m["oracle_auc"] == pytest.approx(1.0)
    assert "oracle_auc" not in primary_metrics(labels, probs, np.full(4, np.nan))
