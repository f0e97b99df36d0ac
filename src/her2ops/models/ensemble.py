"""Combining the members of an ensemble into one decision per core (pure numpy).

Each member scores a core with the paper's protocol and keeps every set's softmax output
(``(N, 4)``). Three explicit rules turn the members' outputs into the ensemble's decision:

- ``pooled_kcs`` (default): all members' sets in one pool, the ``top_k`` most confident of the
  pool (the KCS), final = the maximum class among them: the paper's rule over the pooled sets.
- ``majority``: each member decides with its own KCS; the most frequent decision wins, a tie
  goes to the higher score (the paper's max-class rule also errs upwards).
- ``mean_prob``: the mean of the members' KCS mean probabilities; final = its argmax.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from her2ops.models.inference import kcs_decision

COMBINE_RULES: tuple[str, ...] = ("pooled_kcs", "majority", "mean_prob")


@dataclass(frozen=True)
class EnsembleDecision:
    final: int
    probs: np.ndarray  # (4,): pooled KCS mean, or the mean of the members' KCS means
    member_finals: tuple[int, ...]
    rule: str


def combine_members(
    member_set_probs: Sequence[np.ndarray],
    *,
    top_k: int,
    rule: str = "pooled_kcs",
    confidence: str = "margin",
) -> EnsembleDecision:
    """The ensemble's decision for one core from each member's ``(N_i, 4)`` set outputs."""
    if rule not in COMBINE_RULES:
        raise ValueError(f"unknown combine rule {rule!r}; use one of {', '.join(COMBINE_RULES)}")
    if not member_set_probs:
        raise ValueError("an ensemble needs at least one member")
    members = [np.asarray(p, dtype=np.float64) for p in member_set_probs]
    decisions = [kcs_decision(p, min(top_k, p.shape[0]), confidence) for p in members]
    finals = tuple(d.final for d in decisions)
    mean_of_means = np.mean([d.kcs_mean_probs for d in decisions], axis=0)
    if rule == "pooled_kcs":
        pooled = kcs_decision(np.concatenate(members, axis=0), top_k, confidence)
        return EnsembleDecision(pooled.final, pooled.kcs_mean_probs, finals, rule)
    if rule == "majority":
        counts = Counter(finals)
        best = max(counts.values())
        final = max(c for c, n in counts.items() if n == best)
        return EnsembleDecision(final, mean_of_means, finals, rule)
    return EnsembleDecision(int(mean_of_means.argmax()), mean_of_means, finals, rule)
