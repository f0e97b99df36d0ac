"""Evaluation metrics against hand-computed values and sklearn; plots are real PNGs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from her2ops.models.evaluation import (
    compute_metrics,
    confusion_matrix,
    expected_calibration_error,
    matrix_metrics,
    matrix_summary,
    metrics_table,
    plot_confusion,
    plot_curves,
    plot_roc,
)

Y_TRUE = np.array([0, 0, 1, 1, 1, 2, 2, 3, 3, 3])
Y_PRED = np.array([0, 1, 1, 1, 2, 2, 3, 3, 3, 0])


def _probs(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    p = rng.random((len(Y_TRUE), 4)) + 2.0 * np.eye(4)[Y_PRED]
    return p / p.sum(axis=1, keepdims=True)


def test_accuracy_confusion_and_specificity() -> None:
    m = compute_metrics(Y_TRUE, Y_PRED, _probs())
    assert m["accuracy"] == pytest.approx(6 / 10)
    cm = np.array(m["confusion_matrix"])
    assert cm.sum() == 10 and cm[0, 0] == 1 and cm[0, 1] == 1 and cm[3, 0] == 1
    # class 0: predicted 0 for cores 0 and 9 -> FP 1 (core 9 is 3); negatives = 8 -> TN 7
    assert m["per_class"]["0"]["specificity"] == pytest.approx(7 / 8)
    assert m["per_class"]["0"]["sensitivity"] == pytest.approx(1 / 2)
    # class 3: predicted 3 for cores 6, 7, 8 -> FP 1; negatives 7 -> TN 6
    assert m["per_class"]["3+"]["specificity"] == pytest.approx(6 / 7)


def test_adjacent_accuracy_readings() -> None:
    m = compute_metrics(Y_TRUE, Y_PRED, _probs())
    adj = m["adjacent"]["0/1+"]
    # true in {0,1}: cores 0-4; right: 0, 2, 3 -> 3/5; predicted in the pair too: 0-3 -> 3/4;
    # predicted in the pair at all (right or swapped): 0-3 -> 4/5
    assert adj["exact_given_truth_in_pair"] == pytest.approx(3 / 5)
    assert adj["exact_given_both_in_pair"] == pytest.approx(3 / 4)
    assert adj["prediction_in_pair"] == pytest.approx(4 / 5)
    assert adj["cores"] == 5 and adj["cores_both_in_pair"] == 4
    # 1+/2+: true in {1,2}: cores 2-6; right 2, 3, 5; both in pair: 2, 3, 4, 5 -> 3/4; 4/5
    adj = m["adjacent"]["1+/2+"]
    assert adj["exact_given_truth_in_pair"] == pytest.approx(3 / 5)
    assert adj["exact_given_both_in_pair"] == pytest.approx(3 / 4)
    assert adj["prediction_in_pair"] == pytest.approx(4 / 5)
    # 2+/3+: true in {2,3}: cores 5-9, right 5, 7, 8 -> 3/5; both: 5-8 -> 3/4
    adj = m["adjacent"]["2+/3+"]
    assert adj["exact_given_truth_in_pair"] == pytest.approx(3 / 5)
    assert adj["exact_given_both_in_pair"] == pytest.approx(3 / 4)


def test_matrix_metrics_vectorised_and_on_expected_matrices() -> None:
    cm = confusion_matrix(Y_TRUE, Y_PRED)
    one = matrix_metrics(cm)
    stacked = matrix_metrics(np.stack([cm, cm, np.eye(4, dtype=int)]))
    for key, v in one.items():
        np.testing.assert_allclose(stacked[key][0], v)
        np.testing.assert_allclose(stacked[key][2], 1.0)  # a perfect matrix
    # an expected (fractional) matrix: half of class 0 predicted 1+
    exp = np.diag([2.0, 2.0, 2.0, 2.0])
    exp[0] = [1.0, 1.0, 0.0, 0.0]
    mm = matrix_metrics(exp)
    assert mm["sensitivity"][0] == pytest.approx(0.5)
    assert mm["specificity"][1] == pytest.approx(5 / 6)
    assert mm["exact_given_truth_in_pair"][0] == pytest.approx(3 / 4)
    assert mm["prediction_in_pair"][0] == pytest.approx(1.0)
    # no cores of a class: NaN, reported as None
    assert np.isnan(matrix_metrics(np.diag([0, 1, 1, 1]))["sensitivity"][0])
    assert matrix_summary(np.diag([0, 1, 1, 1]))["sensitivity"]["0"] is None


def test_binary_aucs_match_sklearn_and_kappa_is_quadratic() -> None:
    probs = _probs(1)
    m = compute_metrics(Y_TRUE, Y_PRED, probs)
    exp = roc_auc_score(Y_TRUE >= 2, probs[:, 2] + probs[:, 3])
    assert m["roc"]["0/1+ vs 2+/3+"]["auc"] == pytest.approx(exp)
    assert m["roc"]["0 vs 1+/2+/3+"]["auc"] == pytest.approx(
        roc_auc_score(Y_TRUE == 0, probs[:, 0])
    )
    # kappa by hand: 1 - sum(w O) / sum(w E) with w_ij = (i-j)^2
    o = np.array(m["confusion_matrix"], dtype=float)
    e = np.outer(o.sum(1), o.sum(0)) / o.sum()
    w = (np.arange(4)[:, None] - np.arange(4)[None, :]) ** 2
    assert m["quadratic_kappa"] == pytest.approx(1 - (w * o).sum() / (w * e).sum())


def test_perfect_and_one_sided_cases() -> None:
    y = np.array([0, 1, 2, 3])
    m = compute_metrics(y, y, np.eye(4))
    assert m["accuracy"] == 1.0 and m["quadratic_kappa"] == pytest.approx(1.0)
    assert all(r["auc"] == pytest.approx(1.0) for r in m["roc"].values())
    assert m["ece"] == pytest.approx(0.0)
    one = compute_metrics(np.array([3, 3]), np.array([3, 2]), np.eye(4)[[3, 2]])
    assert one["roc"]["0 vs 1+/2+/3+"]["auc"] is None  # no core with label 0
    json.dumps(one)


def test_ece_by_hand() -> None:
    probs = np.array([[0.9, 0.1, 0, 0], [0.6, 0.4, 0, 0], [0.3, 0.7, 0, 0]])
    y = np.array([0, 1, 1])
    # bins: .9 -> correct, conf .9 -> |1-.9|; .6 -> wrong |0-.6|; .7 -> correct |1-.7|
    assert expected_calibration_error(y, probs) == pytest.approx((0.1 + 0.6 + 0.3) / 3)


def test_table_and_json() -> None:
    m = compute_metrics(Y_TRUE, Y_PRED, _probs())
    rows = metrics_table(m)
    names = {r["metric"] for r in rows}
    assert {"accuracy", "specificity 2+", "AUC 0/1+/2+ vs 3+", "adjacent accuracy 1+/2+"} <= names
    assert {"adjacent pairwise accuracy 0/1+", "adjacent in-pair rate 2+/3+"} <= names
    json.dumps(m)
    json.dumps(rows)


def test_shape_mismatch() -> None:
    with pytest.raises(ValueError, match="shapes disagree"):
        compute_metrics(Y_TRUE, Y_PRED[:-1], _probs())


def test_plots_are_pngs(tmp_path: Path) -> None:
    m = compute_metrics(Y_TRUE, Y_PRED, _probs())
    paths = [
        plot_confusion(np.array(m["confusion_matrix"]), tmp_path / "cm.png"),
        plot_roc(Y_TRUE, _probs(), tmp_path / "roc.png"),
        plot_curves(
            [
                {"epoch": 0, "train_loss": 1.2, "val_loss": 1.3, "val_acc": 0.4},
                {"epoch": 1, "train_loss": 0.9, "val_loss": 1.0, "val_acc": 0.6},
            ],
            tmp_path / "curves.png",
        ),
    ]
    for p in paths:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 2000
