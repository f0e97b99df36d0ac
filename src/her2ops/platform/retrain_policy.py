"""When do new labels justify retraining? A pure policy and the query that feeds it.

:func:`labels_since` compares each core's training label (``agreed``/``adjudicated`` score) at a
model version's label snapshot with its current one: *new* labels (no training label then, one
now), *changed* labels (a different score) and *lost* labels (a training label then, none now,
e.g. a review sent the core to adjudication). The snapshot time is the version's ``created_at``:
the snapshot is taken when training starts, so a label that changed while the model trained
counts as unchanged here (the version's ``label_snapshot_hash`` identifies the exact snapshot).

:func:`retrain_due` is the policy: retrain when ``new >= min_new_labels`` or
``changed + lost >= min_changed_labels``. Submitting the ``retrain`` job (extend the split with
new patients only, train a challenger on the new snapshot, evaluate it beside the champion on
the frozen test partition; never promote automatically) belongs to the jobs layer.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from her2ops.platform.errors import InvalidRequest, NotFound
from her2ops.platform.schema import LABELLED_STATUSES, ConsensusLabel, ModelVersion


@dataclass(frozen=True)
class RetrainPolicy:
    min_new_labels: int = 50
    min_changed_labels: int = 20

    def __post_init__(self) -> None:
        if self.min_new_labels < 1 or self.min_changed_labels < 1:
            raise InvalidRequest("retrain thresholds must be at least 1")


@dataclass(frozen=True)
class LabelDelta:
    model_version_id: int
    since: datetime
    new: int
    changed: int
    lost: int


@dataclass(frozen=True)
class RetrainDecision:
    due: bool
    reason: str


def retrain_due(delta: LabelDelta, policy: RetrainPolicy | None = None) -> RetrainDecision:
    """Whether the labels that moved since the snapshot justify a retrain, and why (pure)."""
    p = policy or RetrainPolicy()
    moved = delta.changed + delta.lost
    counts = f"{delta.new} new, {delta.changed} changed, {delta.lost} lost label(s)"
    if delta.new >= p.min_new_labels:
        return RetrainDecision(True, f"{counts}: at least {p.min_new_labels} new labels")
    if moved >= p.min_changed_labels:
        return RetrainDecision(True, f"{counts}: at least {p.min_changed_labels} changed labels")
    return RetrainDecision(
        False,
        f"{counts}: retrain at {p.min_new_labels} new or {p.min_changed_labels} changed labels",
    )


def _aware(at: datetime) -> datetime:
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at


def labels_since(session: Session, model_version_id: int) -> LabelDelta:
    """Training labels that appeared, changed or disappeared since the version's snapshot."""
    mv = session.get(ModelVersion, model_version_id)
    if mv is None:
        raise NotFound(f"unknown model version id {model_version_id}")
    since = _aware(mv.created_at)
    then: dict[int, tuple[int, int | None]] = {}  # core -> (version, training score or None)
    now: dict[int, int | None] = {}
    q = select(
        ConsensusLabel.core_id,
        ConsensusLabel.version,
        ConsensusLabel.status,
        ConsensusLabel.score,
        ConsensusLabel.created_at,
        ConsensusLabel.is_current,
    )
    for core, version, status, score, at, current in session.execute(q):
        label = score if status in LABELLED_STATUSES else None
        if current:
            now[core] = label
        if _aware(at) <= since and version > then.get(core, (0, None))[0]:
            then[core] = (version, label)
    new = changed = lost = 0
    for core in set(now) | set(then):
        before = then.get(core, (0, None))[1]
        after = now.get(core)
        if before is None and after is not None:
            new += 1
        elif before is not None and after is None:
            lost += 1
        elif before != after:
            changed += 1
    return LabelDelta(model_version_id, since, new, changed, lost)
