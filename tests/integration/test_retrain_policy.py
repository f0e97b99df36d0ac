"""The retrain policy (pure) and the label delta since a model version's snapshot."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest

from her2ops.pipelines import review as P
from her2ops.platform.db import session_scope
from her2ops.platform.errors import InvalidRequest, NotFound
from her2ops.platform.retrain_policy import (
    LabelDelta,
    RetrainPolicy,
    labels_since,
    retrain_due,
)
from her2ops.platform.schema import ModelVersion
from tests.integration.review_world import build_world

_T = datetime(2026, 1, 1, tzinfo=UTC)


def test_policy_thresholds() -> None:
    p = RetrainPolicy(min_new_labels=10, min_changed_labels=3)
    assert not retrain_due(LabelDelta(1, _T, 9, 2, 0), p).due
    assert retrain_due(LabelDelta(1, _T, 10, 0, 0), p).due
    decision = retrain_due(LabelDelta(1, _T, 0, 2, 1), p)
    assert decision.due and decision.reason.startswith("0 new, 2 changed, 1 lost")
    assert "retrain at 10 new" in retrain_due(LabelDelta(1, _T, 0, 0, 0), p).reason
    with pytest.raises(InvalidRequest):
        RetrainPolicy(min_new_labels=0)


def test_labels_since_counts_review_changes(db_url: str) -> None:
    w = build_world()
    with session_scope() as s:  # the version trained after the initial consensus
        mv = s.get(ModelVersion, w.model_version_id)
        assert mv is not None
        mv.created_at = datetime.now(UTC) + timedelta(milliseconds=5)
    time.sleep(0.02)
    with session_scope() as s:
        before = labels_since(s, w.model_version_id)
    assert (before.new, before.changed, before.lost) == (0, 0, 0)
    P.add_items(actor="lm", cores=["K2-0"], reason="x", votes_needed=2)
    for who in ("p1", "p2"):  # 1+, 1+, 1+ -> 3+, 3+, 1+: agreed 3+
        item = P.next_item(actor=who)
        assert item is not None
        P.submit(actor=who, item=item["item"], score="3+")
    with session_scope() as s:
        delta = labels_since(s, w.model_version_id)
    assert (delta.new, delta.changed, delta.lost) == (0, 1, 0)
    with session_scope() as s, pytest.raises(NotFound):
        labels_since(s, 999)


def test_check_retrain_and_the_retrain_job_are_validated_at_submit(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The policy use case reads the settings' thresholds; a due retrain is submitted as a job;
    a retrain job for an unknown split is refused when submitted, not minutes later."""
    from her2ops.config import get_settings
    from her2ops.pipelines.jobs import submit_job
    from her2ops.pipelines.retrain import check_retrain

    w = build_world()
    with session_scope() as s:
        mv = s.get(ModelVersion, w.model_version_id)
        assert mv is not None
        mv.created_at = datetime.now(UTC) + timedelta(milliseconds=5)
    time.sleep(0.02)
    out = check_retrain(actor="eng", model_ref="champion")
    assert not out["due"] and out["job"] is None and out["split"] == "main"
    P.add_items(actor="lm", cores=["K2-0"], reason="x", votes_needed=2)
    for who in ("p1", "p2"):
        item = P.next_item(actor=who)
        assert item is not None
        P.submit(actor=who, item=item["item"], score="3+")
    monkeypatch.setenv("HER2OPS_RETRAIN_MIN_CHANGED_LABELS", "1")
    get_settings.cache_clear()
    due = check_retrain(actor="eng", model_ref="champion", submit=True, profile="test", epochs=1)
    assert due["due"] and due["changed"] == 1
    assert due["job"]["kind"] == "retrain" and due["job"]["params"]["split"] == "main"
    with pytest.raises(NotFound):
        submit_job(actor="eng", kind="retrain", params={"split": "nope"})
