"""The uncertainty flags and the priority (pure functions over prediction material)."""

from __future__ import annotations

import numpy as np
import pytest

from her2ops.models.flags import (
    PredictionMaterial,
    cleanlab_suspects,
    committee_disagreement,
    confident_and_different,
    core_flags,
    kcs_disagreement,
    label_suspect,
    low_confidence,
    priorities,
    priority,
)
from her2ops.models.inference import kcs_decision


def _onehot(classes: list[int], p: float = 0.9) -> np.ndarray:
    out = np.full((len(classes), 4), (1 - p) / 3)
    out[np.arange(len(classes)), classes] = p
    return out


def test_kcs_disagreement_counts_sets_against_the_final_score() -> None:
    probs = _onehot([2, 2, 2, 2, 2, 1])
    d = kcs_decision(probs, 5)
    agree = kcs_disagreement(probs, d.kcs_indices, d.final)
    assert agree.score == 0.0 and "all 5" in agree.reason
    mixed = _onehot([1, 1, 1, 1, 3, 0], p=0.95)
    d = kcs_decision(mixed, 5)
    flag = kcs_disagreement(mixed, d.kcs_indices, d.final)
    assert d.final == 3
    assert flag.score == pytest.approx(1.0)  # only one of five sets carries 3+
    assert "4 say 1+" in flag.reason and "final 3+" in flag.reason


def test_low_confidence_is_one_minus_the_margin_and_notes_a_single_set() -> None:
    sure = low_confidence([0.05, 0.9, 0.03, 0.02], 1)
    unsure = low_confidence([0.05, 0.48, 0.45, 0.02], 2)
    assert sure.score == pytest.approx(0.15)
    assert unsure.score == pytest.approx(0.97)
    probs = _onehot([1, 1, 1, 1, 3, 0], p=0.95)
    d = kcs_decision(probs, 5)
    single = low_confidence(d.kcs_mean_probs, d.final, set_probs=probs, kcs_indices=d.kcs_indices)
    assert single.score >= 0.5 and "single set" in single.reason


def test_committee_disagreement_is_zero_for_agreement_and_one_for_opposites() -> None:
    same = committee_disagreement([[0.1, 0.7, 0.1, 0.1]] * 3)
    opposite = committee_disagreement([[1.0, 0, 0, 0], [0, 0, 0, 1.0]], members=["v1", "v2"])
    assert same.score == pytest.approx(0.0, abs=1e-12)
    assert opposite.score == pytest.approx(1.0)
    assert "v1 says 0" in opposite.reason and "v2 says 3+" in opposite.reason
    assert committee_disagreement([[0.2, 0.3, 0.3, 0.2]]).score == 0.0


def test_label_suspect_only_when_the_model_contradicts_the_label() -> None:
    assert label_suspect([0.05, 0.05, 0.1, 0.8], 3).score == 0.0
    flag = label_suspect([0.05, 0.05, 0.1, 0.8], 2)
    assert flag.score == pytest.approx(0.7) and "consensus is 2+" in flag.reason
    assert label_suspect([0.25] * 4, None).score == 0.0
    many = confident_and_different(np.array([[0.05, 0.05, 0.1, 0.8]] * 2), np.array([3, 2]))
    assert many.tolist() == pytest.approx([0.0, 0.7])


def test_cleanlab_finds_flipped_labels() -> None:
    rng = np.random.default_rng(0)
    n = 400
    y_true = rng.integers(0, 4, n)
    probs = np.full((n, 4), 0.04)
    probs[np.arange(n), y_true] = 0.88
    probs += rng.uniform(0, 0.05, probs.shape)
    probs /= probs.sum(axis=1, keepdims=True)
    labels = y_true.copy()
    flipped = rng.choice(n, 40, replace=False)
    labels[flipped] = (labels[flipped] + 1) % 4
    scores = cleanlab_suspects(probs, labels)
    found = set(np.flatnonzero(scores > 0).tolist())
    assert len(found & set(flipped.tolist())) >= 35
    assert len(found - set(flipped.tolist())) <= 5
    assert cleanlab_suspects(probs[:3], np.zeros(3, dtype=int)).tolist() == [0, 0, 0]


def test_priority_is_a_weighted_noisy_or() -> None:
    assert priority({}) == 0.0
    assert priority({"label_suspect": 0.0, "low_confidence": 0.0}) == 0.0
    w = {"a": 1.0, "b": 0.5}
    assert priority({"a": 0.4, "b": 0.4}, w) == pytest.approx(1 - 0.6 * 0.8)
    assert priority({"a": 1.0, "b": 0.2}, w) == 1.0
    assert priority({"zzz": 1.0}, w) == 0.0
    arr = priorities({"a": np.array([0.4, 1.0]), "b": np.array([0.4, 0.2])}, w)
    assert arr.tolist() == pytest.approx([1 - 0.6 * 0.8, 1.0])


def test_core_flags_uses_only_out_of_sample_predictions_for_label_suspect() -> None:
    probs = _onehot([3, 3, 3, 3, 3, 3])
    d = kcs_decision(probs, 3)
    own = PredictionMaterial("v1", d.final, d.kcs_mean_probs.tolist(), probs, d.kcs_indices)
    names = [f.name for f in core_flags([own], label=1)]
    assert names == ["kcs_disagreement", "low_confidence"]
    oos = PredictionMaterial(
        "v2", d.final, d.kcs_mean_probs.tolist(), probs, d.kcs_indices, out_of_sample=True
    )
    flags = {f.name: f for f in core_flags([own, oos], label=1)}
    assert set(flags) == {
        "kcs_disagreement",
        "low_confidence",
        "committee_disagreement",
        "label_suspect",
    }
    assert flags["label_suspect"].score > 0.5
    assert core_flags([]) == []
