"""Ensemble combine rules: pooled KCS, member majority, mean probability."""

from __future__ import annotations

import numpy as np
import pytest

from her2ops.models.ensemble import combine_members
from her2ops.models.inference import kcs_decision


def sets(*rows: tuple[float, float, float, float]) -> np.ndarray:
    return np.array(rows, dtype=np.float64)


# member A: confident 1+ sets; member B: weakly 3+; member C: confident 0 sets
A = sets((0.0, 0.9, 0.1, 0.0), (0.05, 0.85, 0.1, 0.0), (0.3, 0.4, 0.3, 0.0))
B = sets((0.0, 0.1, 0.35, 0.55), (0.0, 0.2, 0.3, 0.5), (0.25, 0.25, 0.25, 0.25))
C = sets((0.95, 0.05, 0.0, 0.0), (0.9, 0.1, 0.0, 0.0), (0.5, 0.5, 0.0, 0.0))


def test_pooled_kcs_is_the_papers_rule_over_all_members_sets() -> None:
    d = combine_members([A, B, C], top_k=2, rule="pooled_kcs")
    pooled = np.concatenate([A, B, C])
    ref = kcs_decision(pooled, 2)
    assert d.final == ref.final and np.allclose(d.probs, ref.kcs_mean_probs)
    # the most confident pooled sets: C's first (margin 0.9) and A's first (0.8, tied with C's
    # second; the earlier set wins): the max class of {0, 1+} is 1+
    assert d.final == 1
    assert d.member_finals == (kcs_decision(A, 2).final, kcs_decision(B, 2).final, 0)


def test_majority_with_ties_going_up() -> None:
    assert combine_members([A, A, C], top_k=2, rule="majority").final == 1
    assert combine_members([A, C], top_k=2, rule="majority").final == 1  # tie 1 vs 0 -> 1
    assert combine_members([A, B], top_k=2, rule="majority").final == 3  # tie 1 vs 3 -> 3


def test_mean_probability() -> None:
    d = combine_members([A, B, C], top_k=2, rule="mean_prob")
    means = np.mean([kcs_decision(m, 2).kcs_mean_probs for m in (A, B, C)], axis=0)
    assert np.allclose(d.probs, means) and d.final == int(means.argmax())
    assert np.isclose(d.probs.sum(), 1.0)


def test_rules_can_disagree_and_bad_input_is_refused() -> None:
    finals = {r: combine_members([A, B, C], top_k=2, rule=r).final for r in
              ("pooled_kcs", "majority", "mean_prob")}  # fmt: skip
    assert len(set(finals.values())) > 1  # the choice of rule matters on this core
    with pytest.raises(ValueError, match="unknown combine rule"):
        combine_members([A], top_k=2, rule="vote")
    with pytest.raises(ValueError, match="at least one member"):
        combine_members([], top_k=2)
