"""PNG of an N/k study: the two accuracy curves and the confusion matrices (Figs. 4 and 5)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from her2ops.models.evaluation import draw_confusion

if TYPE_CHECKING:
    from her2ops.models.study import StudyPoint, StudyResult


def _curve(ax: Any, points: list[StudyPoint], x_of: str, title: str) -> None:
    x = [getattr(p, x_of) for p in points]
    ax.fill_between(
        x, [p.min for p in points], [p.max for p in points], alpha=0.25, label="min-max"
    )
    ax.plot(x, [p.median for p in points], marker=".", label="median")
    ax.set_xlabel(x_of.upper() if x_of == "n" else x_of)
    ax.set_ylabel("accuracy")
    ax.set_title(title)
    ax.legend(fontsize=8)


def plot_study(result: StudyResult, path: Path) -> Path:
    """Write the study figure to ``path``."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    rows = 1 + len(result.confusion)
    fig, axes = plt.subplots(rows, 3, figsize=(12, 3.8 * rows), squeeze=False)
    _curve(axes[0][0], result.vs_n, "n", f"accuracy vs N (k = {result.k_at})")
    _curve(axes[0][1], result.vs_k, "k", f"accuracy vs k (N = {result.n_at})")
    if result.confusion:
        first = result.confusion[0]
        draw_confusion(
            axes[0][2], np.asarray(first.expected), f"expected, N={first.n}, k={first.k}"
        )
    else:
        axes[0][2].axis("off")
    for row, point in enumerate(result.confusion, start=1):
        for col, name in enumerate(("min", "median", "max")):
            d = point.draws[name]
            draw_confusion(
                axes[row][col],
                np.asarray(d["matrix"]),
                f"{name} {d['accuracy']:.2%} (N={point.n}, k={point.k})",
            )
    fig.suptitle(
        f"{result.cores} cores x {result.outputs_per_core} outputs, {result.draws} draws, "
        f"sampling {result.sampling}, confidence {result.confidence}",
        fontsize=9,
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=100)
    plt.close(fig)
    return path
