"""Uncertainty flags over stored predictions (pure functions: numpy in, scores and reasons out).

Every flag has a score in [0, 1] (0 = nothing to see) and a reason a pathologist can read. The
raw material is what ``predictions`` already holds for a core: ``set_probs`` (N x 4, every
pyramid sampling set's softmax), ``kcs_indices`` (the k most confident sets), ``kcs_probs`` (their
averaged probabilities) and the final score (the largest class among the KCS).

- :func:`kcs_disagreement`: share of the KCS sets whose class differs from the final score,
  scaled so that "only one of k sets carries the final score" is 1.
- :func:`low_confidence`: 1 - margin of the KCS-averaged probabilities (top-1 minus top-2); a
  final score carried by a single KCS set (k > 1) scores at least 0.5.
- :func:`committee_disagreement`: the generalised Jensen-Shannon divergence of the members'
  probabilities (mean KL divergence of each member to the committee mean) divided by its maximum
  ``log(min(M, 4))``.
- :func:`label_suspect`: the plain "confident and different" rule on an out-of-sample
  prediction: ``p(predicted) - p(label)`` when the predicted class differs from the consensus.
- :func:`cleanlab_suspects`: confident learning (``cleanlab.filter.find_label_issues``) over a
  whole set of out-of-sample probabilities and labels; score ``1 - p(label)`` on the cores it
  flags, 0 elsewhere.

:func:`priority` combines flag scores as a weighted noisy-OR::

    priority = 1 - prod_f (1 - w_f * s_f)        (w_f in [0, 1], s_f in [0, 1])

so any one strong flag raises a core's priority, several weak ones add up, and the result stays
in [0, 1]. The default weights (:data:`DEFAULT_WEIGHTS`) were chosen with
``benchmarks/bench_active_learning.py`` (README, "Active learning").
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

from her2ops.scores import NUM_CLASSES, SCORE_LABELS

FLAG_NAMES: tuple[str, ...] = (
    "kcs_disagreement",
    "low_confidence",
    "committee_disagreement",
    "label_suspect",
)
#: Weights of the noisy-OR priority (see the module docstring).
#: Label suspects dominate: on the benchmark, KCS disagreement and low confidence point *away*
#: from label errors (a wrong consensus sits mostly on clear cores the model is sure about), so
#: they only order the cores no label suspect raised.
DEFAULT_WEIGHTS: dict[str, float] = {
    "label_suspect": 1.0,
    "committee_disagreement": 0.3,
    "kcs_disagreement": 0.2,
    "low_confidence": 0.1,
}


@dataclass(frozen=True)
class Flag:
    """One flag raised on one core."""

    name: str
    score: float
    reason: str

    def to_dict(self) -> dict[str, object]:
        return {"flag": self.name, "score": round(self.score, 4), "reason": self.reason}


def _label(c: int) -> str:
    return SCORE_LABELS[int(c)]


def _probs(p: ArrayLike) -> np.ndarray:
    arr = np.asarray(p, dtype=np.float64)
    if arr.shape[-1] != NUM_CLASSES:
        raise ValueError(f"expected {NUM_CLASSES} class probabilities, got shape {arr.shape}")
    return arr


def kcs_disagreement(
    set_probs: Sequence[Sequence[float]] | np.ndarray,
    kcs_indices: Sequence[int],
    final_score: int,
) -> Flag:
    """Do the k most confident sets agree with the final score?"""
    probs = _probs(set_probs)
    idx = np.asarray(kcs_indices, dtype=np.int64)
    k = idx.size
    if k == 0:
        raise ValueError("no KCS indices")
    classes = probs[idx].argmax(axis=1)
    differ = int((classes != final_score).sum())
    score = differ / (k - 1) if k > 1 else 0.0
    if differ == 0:
        reason = f"all {k} most confident sets say {_label(final_score)}"
    else:
        counts = np.bincount(classes, minlength=NUM_CLASSES)
        said = ", ".join(f"{counts[c]} say {_label(c)}" for c in range(NUM_CLASSES) if counts[c])
        reason = f"the {k} most confident sets disagree ({said}); final {_label(final_score)}"
    return Flag("kcs_disagreement", float(min(score, 1.0)), reason)


def low_confidence(
    kcs_probs: Sequence[float] | np.ndarray,
    final_score: int,
    *,
    set_probs: Sequence[Sequence[float]] | np.ndarray | None = None,
    kcs_indices: Sequence[int] | None = None,
) -> Flag:
    """Small margin of the KCS-averaged probabilities, or a final score carried by one set."""
    p = _probs(kcs_probs)
    top2 = np.sort(p)[-2:]
    margin = float(top2[1] - top2[0])
    score = 1.0 - margin
    order = np.argsort(-p, kind="stable")
    reason = (
        f"margin {margin:.2f} between {_label(order[0])} ({p[order[0]]:.2f}) "
        f"and {_label(order[1])} ({p[order[1]]:.2f})"
    )
    if set_probs is not None and kcs_indices is not None and len(kcs_indices) > 1:
        classes = _probs(set_probs)[np.asarray(kcs_indices, dtype=np.int64)].argmax(axis=1)
        if int((classes == final_score).sum()) == 1:
            score = max(score, 0.5)
            reason += f"; final {_label(final_score)} rests on a single set"
    return Flag("low_confidence", float(np.clip(score, 0.0, 1.0)), reason)


def _entropy(p: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return -np.where(p > 0, p * np.log(p), 0.0).sum(axis=-1)


def committee_disagreement(
    member_probs: Sequence[Sequence[float]] | np.ndarray, members: Sequence[str] | None = None
) -> Flag:
    """Disagreement of M models' probabilities for one core (M >= 2; M = 1 scores 0)."""
    p = _probs(member_probs)
    if p.ndim != 2:
        raise ValueError(f"expected (members, classes) probabilities, got shape {p.shape}")
    m = p.shape[0]
    names = list(members) if members is not None else [f"model {i + 1}" for i in range(m)]
    if m < 2:
        return Flag("committee_disagreement", 0.0, "a single model: no committee")
    # mean KL(member || mean) == H(mean) - mean H(member): the generalised Jensen-Shannon
    js = float(_entropy(p.mean(axis=0)) - _entropy(p).mean())
    score = float(np.clip(js / math.log(min(m, NUM_CLASSES)), 0.0, 1.0))
    said = "; ".join(
        f"{n} says {_label(int(q.argmax()))} ({q.max():.2f})" for n, q in zip(names, p, strict=True)
    )
    return Flag("committee_disagreement", score, said)


def label_suspect(probs: Sequence[float] | np.ndarray, label: int | None) -> Flag:
    """The "confident and different" rule: an out-of-sample prediction contradicts the label."""
    p = _probs(probs)
    if label is None:
        return Flag("label_suspect", 0.0, "no consensus label")
    pred = int(p.argmax())
    if pred == label:
        return Flag("label_suspect", 0.0, f"model agrees with the consensus {_label(label)}")
    score = float(np.clip(p[pred] - p[label], 0.0, 1.0))
    return Flag(
        "label_suspect",
        score,
        f"model says {_label(pred)} ({p[pred]:.2f}); consensus is {_label(label)} ({p[label]:.2f})",
    )


def confident_and_different(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """:func:`label_suspect` scores for many cores at once (``probs`` (n, 4), ``labels`` (n,))."""
    p = _probs(probs)
    y = np.asarray(labels, dtype=np.int64)
    rows = np.arange(len(y))
    pred = p.argmax(axis=1)
    return np.where(pred != y, np.clip(p[rows, pred] - p[rows, y], 0.0, 1.0), 0.0)


def cleanlab_suspects(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Confident learning over out-of-sample ``probs`` (n, 4) and ``labels`` (n,): a score in
    [0, 1] per core, ``1 - p(label)`` where ``cleanlab.filter.find_label_issues`` flags the core
    and 0 elsewhere. Classes absent from ``labels`` are allowed (cleanlab needs each present
    class at least once; fewer than 2 classes flags nothing)."""
    from cleanlab.filter import find_label_issues

    p = _probs(probs)
    y = np.asarray(labels, dtype=np.int64)
    if len(y) == 0 or len(np.unique(y)) < 2:
        return np.zeros(len(y))
    # cleanlab wants rows that sum to 1 and every class column present
    p = np.clip(p, 1e-9, None)
    p = p / p.sum(axis=1, keepdims=True)
    issues = find_label_issues(labels=y, pred_probs=p, filter_by="prune_by_noise_rate")
    return np.where(issues, 1.0 - p[np.arange(len(y)), y], 0.0)


def priority(scores: Mapping[str, float], weights: Mapping[str, float] | None = None) -> float:
    """Noisy-OR of flag scores: ``1 - prod(1 - w_f * s_f)`` (unknown flags weigh 0)."""
    w = DEFAULT_WEIGHTS if weights is None else weights
    keep = 1.0
    for name, s in scores.items():
        keep *= 1.0 - float(np.clip(w.get(name, 0.0), 0.0, 1.0)) * float(np.clip(s, 0.0, 1.0))
    return 1.0 - keep


def priorities(
    scores: Mapping[str, np.ndarray], weights: Mapping[str, float] | None = None
) -> np.ndarray:
    """:func:`priority` over arrays of per-core flag scores (same length each)."""
    w = DEFAULT_WEIGHTS if weights is None else weights
    keep: np.ndarray | None = None
    for name, s in scores.items():
        term = 1.0 - np.clip(w.get(name, 0.0), 0.0, 1.0) * np.clip(np.asarray(s, float), 0.0, 1.0)
        keep = term if keep is None else keep * term
    return np.zeros(0) if keep is None else 1.0 - keep


@dataclass(frozen=True)
class PredictionMaterial:
    """What one stored prediction holds (a ``predictions`` row, without the database)."""

    model: str
    final_score: int
    kcs_probs: Sequence[float]
    set_probs: Sequence[Sequence[float]]
    kcs_indices: Sequence[int]
    out_of_sample: bool = False


def core_flags(
    predictions: Sequence[PredictionMaterial], *, label: int | None = None
) -> list[Flag]:
    """Every flag for one core from its predictions (the first is the primary model's; more
    than one make a committee). ``label_suspect`` is computed only from out-of-sample
    predictions (a model never judges a label it trained on), averaged over them."""
    if not predictions:
        return []
    main = predictions[0]
    flags = [
        kcs_disagreement(main.set_probs, main.kcs_indices, main.final_score),
        low_confidence(
            main.kcs_probs,
            main.final_score,
            set_probs=main.set_probs,
            kcs_indices=main.kcs_indices,
        ),
    ]
    if len(predictions) > 1:
        flags.append(
            committee_disagreement(
                [p.kcs_probs for p in predictions], members=[p.model for p in predictions]
            )
        )
    oos = [p.kcs_probs for p in predictions if p.out_of_sample]
    if oos and label is not None:
        flags.append(label_suspect(np.mean(np.asarray(oos, dtype=float), axis=0), label))
    return flags
