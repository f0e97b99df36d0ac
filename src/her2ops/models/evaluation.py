"""Evaluation metrics of the paper (and a few more), plus PNG plots.

``y_pred`` is the protocol's final score (max class of the KCS); ``probs`` are the KCS-averaged
class probabilities, used where a score per class is needed (ROC curves, calibration).

Definitions chosen here:

- *Specificity* of class ``i``: TN_i / (TN_i + FP_i), one class against the rest (the paper's).
- *Binary tasks* (the paper's ROC curves): ``0 vs 1+/2+/3+`` scored by 1 - P(0);
  ``0/1+ vs 2+/3+`` by P(2+) + P(3+); ``0/1+/2+ vs 3+`` by P(3+). The positive side is always the
  higher scores, which gives the same AUC as scoring the other side.
- *Adjacent-class accuracy* for a pair (a, b) (0/1+, 1+/2+, 2+/3+). The paper gives figures
  (89.62 / 84.68 / 87.26 %) but no definition, so three readings are reported, each by name:

  ``exact_given_truth_in_pair`` ("adjacent accuracy"): among the cores whose true label is a or
  b, the fraction predicted exactly right (a prediction outside the pair counts as wrong);
  ``exact_given_both_in_pair`` ("adjacent pairwise accuracy"): the same among the cores whose
  truth *and* prediction are both a or b, i.e. how well the model tells a from b when it picks
  one of them; ``prediction_in_pair`` ("adjacent in-pair rate"): among the cores whose truth is
  a or b, the fraction predicted a or b (right or swapped).

  The first and third have a fixed denominator (the cores whose truth is in the pair: 262, 257
  and 261 on the paper's test set), so at one draw they take values k/262 etc.; 89.62 % of 262
  is 234.8 cores, 84.68 % of 257 is 217.6 and 87.26 % of 261 is 227.7, so neither can give the
  paper's figures at a single draw. The pairwise reading has a variable denominator (e.g.
  233/260 = 89.62 %, 199/235 = 84.68 %, 226/259 = 87.26 %) and can.
- *Quadratic-weighted kappa* between truth and prediction over the 4 ordered classes.
- *Expected calibration error*: 10 equal-width bins of max(probs); per bin |accuracy of
  argmax(probs) - mean confidence|, weighted by the bin's share of cores.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import cohen_kappa_score, roc_auc_score, roc_curve

from her2ops.scores import NUM_CLASSES, SCORE_LABELS

BINARY_TASKS: dict[str, tuple[int, ...]] = {
    # task name -> the classes on the positive side
    "0 vs 1+/2+/3+": (1, 2, 3),
    "0/1+ vs 2+/3+": (2, 3),
    "0/1+/2+ vs 3+": (3,),
}
ADJACENT_PAIRS: tuple[tuple[int, int], ...] = ((0, 1), (1, 2), (2, 3))
#: the three readings of "adjacent accuracy" (module docstring) -> their name in tables
ADJACENT_READINGS: dict[str, str] = {
    "exact_given_truth_in_pair": "adjacent accuracy",
    "exact_given_both_in_pair": "adjacent pairwise accuracy",
    "prediction_in_pair": "adjacent in-pair rate",
}


def _nan_to_none(v: float) -> float | None:
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, k: int = NUM_CLASSES) -> np.ndarray:
    """Counts, rows = true class, columns = predicted class."""
    cm = np.zeros((k, k), dtype=np.int64)
    np.add.at(cm, (np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)), 1)
    return cm


def binary_roc(y_true: np.ndarray, probs: np.ndarray, positive: Sequence[int]) -> dict[str, Any]:
    """ROC curve and AUC of one binary task; AUC ``None`` if only one side is present."""
    target = np.isin(y_true, positive).astype(int)
    score = np.asarray(probs)[:, list(positive)].sum(axis=1)
    if target.min() == target.max():
        return {"auc": None, "fpr": [], "tpr": [], "positives": int(target.sum())}
    fpr, tpr, _ = roc_curve(target, score)
    return {
        "auc": float(roc_auc_score(target, score)),
        "fpr": fpr.tolist(),
        "tpr": tpr.tolist(),
        "positives": int(target.sum()),
    }


def expected_calibration_error(y_true: np.ndarray, probs: np.ndarray, bins: int = 10) -> float:
    """ECE of ``probs`` (see the module docstring)."""
    probs = np.asarray(probs, dtype=np.float64)
    conf = probs.max(axis=1)
    correct = probs.argmax(axis=1) == np.asarray(y_true)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, bins - 1)
    ece = 0.0
    for b in range(bins):
        mask = which == b
        if mask.any():
            ece += mask.mean() * abs(correct[mask].mean() - conf[mask].mean())
    return float(ece)


def matrix_metrics(cm: np.ndarray) -> dict[str, np.ndarray]:
    """Per-class sensitivity/specificity and the three adjacent-accuracy readings of confusion
    matrices ``(..., 4, 4)`` (rows = true), vectorised over leading axes (e.g. draws).

    Returns arrays: ``sensitivity``/``specificity`` ``(..., 4)``; for the adjacent pairs, in the
    order of :data:`ADJACENT_PAIRS`, ``exact_given_truth_in_pair``, ``exact_given_both_in_pair``
    and ``prediction_in_pair`` ``(..., 3)``. Undefined values (0 / 0) are NaN. Works on expected
    (fractional) matrices too.
    """
    cm = np.asarray(cm, dtype=np.float64)
    n = cm.sum(axis=(-2, -1))[..., None]
    tp = np.diagonal(cm, axis1=-2, axis2=-1)
    row, col = cm.sum(axis=-1), cm.sum(axis=-2)
    fp, fn = col - tp, row - tp
    tn = n - tp - fp - fn
    exact, both, truth = [], [], []
    for a, b in ADJACENT_PAIRS:
        exact.append(cm[..., a, a] + cm[..., b, b])
        # truth and prediction both in the pair (= predicted in the pair, given truth in it)
        both.append(cm[..., a, a] + cm[..., a, b] + cm[..., b, a] + cm[..., b, b])
        truth.append(row[..., a] + row[..., b])
    with np.errstate(divide="ignore", invalid="ignore"):
        out = {
            "sensitivity": np.where(tp + fn > 0, tp / (tp + fn), np.nan),
            "specificity": np.where(tn + fp > 0, tn / (tn + fp), np.nan),
        }
        ex, bo, tr = np.stack(exact, -1), np.stack(both, -1), np.stack(truth, -1)
        out["exact_given_truth_in_pair"] = np.where(tr > 0, ex / tr, np.nan)
        out["exact_given_both_in_pair"] = np.where(bo > 0, ex / bo, np.nan)
        out["prediction_in_pair"] = np.where(tr > 0, bo / tr, np.nan)
    return out


def _opt(v: float) -> float | None:
    return None if math.isnan(float(v)) else float(v)


def matrix_summary(cm: np.ndarray) -> dict[str, Any]:
    """JSON-able per-class sensitivity/specificity and adjacent readings of one matrix."""
    return summary_from_arrays(matrix_metrics(cm))


def summary_from_arrays(mm: dict[str, np.ndarray]) -> dict[str, Any]:
    """Name the entries of one :func:`matrix_metrics` result without leading axes (e.g. the
    per-draw values averaged over draws)."""
    return {
        "sensitivity": {n: _opt(mm["sensitivity"][c]) for c, n in enumerate(SCORE_LABELS)},
        "specificity": {n: _opt(mm["specificity"][c]) for c, n in enumerate(SCORE_LABELS)},
        "adjacent": {
            f"{SCORE_LABELS[a]}/{SCORE_LABELS[b]}": {r: _opt(mm[r][i]) for r in ADJACENT_READINGS}
            for i, (a, b) in enumerate(ADJACENT_PAIRS)
        },
    }


def compute_metrics(y_true: np.ndarray, y_pred: np.ndarray, probs: np.ndarray) -> dict[str, Any]:
    """All metrics as a JSON-able dict (``None`` where a metric is undefined)."""
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    if not (y_true.shape == y_pred.shape and probs.shape == (len(y_true), NUM_CLASSES)):
        raise ValueError(
            f"shapes disagree: y_true {y_true.shape}, y_pred {y_pred.shape}, probs {probs.shape}"
        )
    if len(y_true) == 0:
        raise ValueError("no cores to evaluate")
    cm = confusion_matrix(y_true, y_pred)
    n = int(cm.sum())
    mm = matrix_metrics(cm)
    per_class: dict[str, dict[str, float | int | None]] = {}
    for c, name in enumerate(SCORE_LABELS):
        tp = cm[c, c]
        fp = cm[:, c].sum() - tp
        per_class[name] = {
            "support": int(cm[c].sum()),
            "sensitivity": _opt(mm["sensitivity"][c]),
            "specificity": _opt(mm["specificity"][c]),
            "precision": _nan_to_none(tp / (tp + fp)) if tp + fp else None,
        }
    adjacent: dict[str, dict[str, float | int | None]] = {}
    for i, (a, b) in enumerate(ADJACENT_PAIRS):
        pair = (a, b)
        adjacent[f"{SCORE_LABELS[a]}/{SCORE_LABELS[b]}"] = {
            **{r: _opt(mm[r][i]) for r in ADJACENT_READINGS},
            "cores": int(np.isin(y_true, pair).sum()),
            "cores_both_in_pair": int((np.isin(y_true, pair) & np.isin(y_pred, pair)).sum()),
        }
    labels = list(range(NUM_CLASSES))
    kappa = cohen_kappa_score(y_true, y_pred, labels=labels, weights="quadratic")
    return {
        "n": n,
        "accuracy": float(np.trace(cm) / n),
        "confusion_matrix": cm.tolist(),
        "per_class": per_class,
        "roc": {name: binary_roc(y_true, probs, pos) for name, pos in BINARY_TASKS.items()},
        "adjacent": adjacent,
        "quadratic_kappa": _nan_to_none(float(kappa)),
        "ece": expected_calibration_error(y_true, probs),
    }


def metrics_table(metrics: dict[str, Any]) -> list[dict[str, Any]]:
    """The scalar metrics as ``[{"metric": ..., "value": ...}]`` rows (for tables and JSON)."""
    rows: list[dict[str, Any]] = [
        {"metric": "cores", "value": metrics["n"]},
        {"metric": "accuracy", "value": metrics["accuracy"]},
        {"metric": "quadratic kappa", "value": metrics["quadratic_kappa"]},
        {"metric": "ECE", "value": metrics["ece"]},
    ]
    for name, pc in metrics["per_class"].items():
        rows.append({"metric": f"specificity {name}", "value": pc["specificity"]})
        rows.append({"metric": f"sensitivity {name}", "value": pc["sensitivity"]})
    for name, roc in metrics["roc"].items():
        rows.append({"metric": f"AUC {name}", "value": roc["auc"]})
    for reading, label in ADJACENT_READINGS.items():
        for name, adj in metrics["adjacent"].items():
            rows.append({"metric": f"{label} {name}", "value": adj[reading]})
    return rows


def _figure(figsize: tuple[float, float]) -> Any:
    import matplotlib

    matplotlib.use("Agg", force=False)  # no display on workers and CI
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=figsize)


def _save(fig: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=120)
    plt.close(fig)
    return path


def draw_confusion(ax: Any, cm: np.ndarray, title: str = "") -> None:
    """Draw a 4x4 confusion matrix (counts may be expected, i.e. fractional) on ``ax``."""
    cm = np.asarray(cm, dtype=float)
    ax.imshow(cm, cmap="Blues")
    fmt = "{:.0f}" if np.allclose(cm, np.round(cm)) else "{:.1f}"
    top = cm.max() if cm.size else 0.0
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            color = "white" if cm[i, j] > top / 2 else "black"
            ax.text(j, i, fmt.format(cm[i, j]), ha="center", va="center", color=color)
    ax.set_xticks(range(NUM_CLASSES), SCORE_LABELS)
    ax.set_yticks(range(NUM_CLASSES), SCORE_LABELS)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if title:
        ax.set_title(title)


def plot_confusion(cm: np.ndarray, path: Path, title: str = "") -> Path:
    """PNG of a confusion matrix (rows = true)."""
    fig, ax = _figure((4.2, 4.0))
    draw_confusion(ax, cm, title)
    return _save(fig, path)


def plot_roc(y_true: np.ndarray, probs: np.ndarray, path: Path) -> Path:
    """PNG of the three binary ROC curves with their AUCs."""
    fig, ax = _figure((5.0, 4.6))
    for name, pos in BINARY_TASKS.items():
        roc = binary_roc(np.asarray(y_true), np.asarray(probs), pos)
        if roc["auc"] is not None:
            ax.plot(roc["fpr"], roc["tpr"], label=f"{name} (AUC {roc['auc']:.3f})")
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.legend(loc="lower right", fontsize=8)
    return _save(fig, path)


def plot_curves(history: Sequence[dict[str, float]], path: Path) -> Path:
    """PNG of training curves: train/val loss and val accuracy per epoch."""
    fig, ax = _figure((6.0, 4.0))
    epochs = [h.get("epoch", i) + 1 for i, h in enumerate(history)]
    ax.plot(epochs, [h["train_loss"] for h in history], marker="o", label="train loss")
    ax.plot(epochs, [h["val_loss"] for h in history], marker="o", label="val loss")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax2 = ax.twinx()
    ax2.plot(
        epochs, [h["val_acc"] for h in history], color="green", marker="s", label="val accuracy"
    )
    ax2.set_ylabel("accuracy")
    ax2.set_ylim(0, 1)
    handles = ax.get_legend_handles_labels()[0] + ax2.get_legend_handles_labels()[0]
    ax.legend(handles=handles, loc="upper right", fontsize=8)
    return _save(fig, path)
