"""Evaluation metrics of the paper (and a few more), plus PNG plots.

``y_pred`` is the protocol's final score (max class of the KCS); ``probs`` are the KCS-averaged
class probabilities, used where a score per class is needed (ROC curves, calibration).

Definitions chosen here:

- *Specificity* of class ``i``: TN_i / (TN_i + FP_i), one class against the rest (the paper's).
- *Binary tasks* (the paper's ROC curves): ``0 vs 1+/2+/3+`` scored by 1 - P(0);
  ``0/1+ vs 2+/3+`` by P(2+) + P(3+); ``0/1+/2+ vs 3+`` by P(3+). The positive side is always the
  higher scores, which gives the same AUC as scoring the other side.
- *Adjacent-class accuracy* for a pair (a, b) (0/1+, 1+/2+, 2+/3+): among the cores whose true
  label is a or b, the fraction predicted exactly right (a prediction outside the pair counts as
  wrong). ``within_pair`` is also reported: the same restricted further to cores predicted a or b,
  i.e. how well the model separates the two when it picks one of them.
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
    per_class: dict[str, dict[str, float | int | None]] = {}
    for c, name in enumerate(SCORE_LABELS):
        tp = cm[c, c]
        fp = cm[:, c].sum() - tp
        fn = cm[c, :].sum() - tp
        tn = n - tp - fp - fn
        per_class[name] = {
            "support": int(cm[c].sum()),
            "sensitivity": _nan_to_none(tp / (tp + fn)) if tp + fn else None,
            "specificity": _nan_to_none(tn / (tn + fp)) if tn + fp else None,
            "precision": _nan_to_none(tp / (tp + fp)) if tp + fp else None,
        }
    adjacent: dict[str, dict[str, float | int | None]] = {}
    for a, b in ADJACENT_PAIRS:
        in_pair = np.isin(y_true, (a, b))
        both = in_pair & np.isin(y_pred, (a, b))
        right = y_true == y_pred
        adjacent[f"{SCORE_LABELS[a]}/{SCORE_LABELS[b]}"] = {
            "accuracy": float(right[in_pair].mean()) if in_pair.any() else None,
            "within_pair": float(right[both].mean()) if both.any() else None,
            "cores": int(in_pair.sum()),
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
    for name, adj in metrics["adjacent"].items():
        rows.append({"metric": f"adjacent accuracy {name}", "value": adj["accuracy"]})
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
