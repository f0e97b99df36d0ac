"""The review queue on SQLite and PostgreSQL: build, add, claim, lease, submit, blinding, errors."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from sqlalchemy import func, select

from her2ops.pipelines import review as P
from her2ops.platform import review as R
from her2ops.platform import review_claims as C
from her2ops.platform.db import session_scope
from her2ops.platform.errors import Conflict, InvalidRequest, NotFound, PermissionDenied
from her2ops.platform.schema import AuditEvent, ConsensusLabel, ReviewItem, User, Vote, utcnow
from tests.integration.review_world import build_world


def _counts() -> tuple[int, int, int, int]:
    """(votes, review items, current labels, audit events): 'nothing written' checks."""
    with session_scope() as s:
        return (
            int(s.scalar(select(func.count()).select_from(Vote)) or 0),
            int(s.scalar(select(func.count()).select_from(ReviewItem)) or 0),
            int(s.scalar(select(func.count()).select_from(ConsensusLabel)) or 0),
            int(s.scalar(select(func.count()).select_from(AuditEvent)) or 0),
        )


def _items() -> dict[str, dict[str, object]]:
    return {it["core"]: it for it in P.list_items(actor="lm")["items"]}


def test_build_ranks_flags_and_never_duplicates(db_url: str) -> None:
    build_world()
    out = P.build_queue(actor="eng", model_ref="champion", label_method="rule")
    items = _items()
    assert "K3-1" not in items  # excluded by the consensus
    assert out["excluded"] == 1 and out["added"] == len(items)
    ranked = sorted(items.values(), key=lambda it: -float(it["priority"]))  # type: ignore[arg-type]
    assert ranked[0]["core"] == "K2-0"  # a confident held-out model contradicts its label
    assert ranked[0]["reasons"][0] == "label_suspect"  # type: ignore[index]
    # K0-1 contradicts its label too, but the model trained on it: no label_suspect there
    assert "label_suspect" not in items["K0-1"]["reasons"]  # type: ignore[operator]
    assert "kcs_disagreement" in items["K1-0"]["reasons"]  # type: ignore[operator]
    again = P.build_queue(actor="eng", model_ref="champion", label_method="rule")
    assert again["added"] == 0 and again["already_queued"] == len(items)
    assert len(_items()) == len(items)


def test_build_top_and_roles(db_url: str) -> None:
    build_world()
    out = P.build_queue(actor="lm", model_ref="1", top=2, label_method="rule")
    assert out["added"] == 2 and len(_items()) == 2
    with pytest.raises(PermissionDenied):
        P.build_queue(actor="p1", model_ref="1")
    with pytest.raises(NotFound, match="unknown model reference"):
        P.build_queue(actor="eng", model_ref="7")


def test_add_by_hand(db_url: str) -> None:
    build_world()
    out = P.add_items(actor="lm", cores=["K1-1", "K2-1"], reason="second look")
    assert out["added"] == 2
    again = P.add_items(actor="lm", cores=["K1-1"], reason="again")
    assert again["added"] == 0 and again["already_queued_cores"] == ["K1-1"]
    before = _counts()
    with pytest.raises(NotFound, match=r"unknown core.*NOPE"):
        P.add_items(actor="lm", cores=["K0-0", "NOPE"], reason="x")
    with pytest.raises(Conflict, match=r"excluded.*K3-1"):
        P.add_items(actor="lm", cores=["K0-0", "K3-1"], reason="x")
    with pytest.raises(PermissionDenied):
        P.add_items(actor="p1", cores=["K0-0"], reason="x")
    with pytest.raises(InvalidRequest, match="reason"):
        P.add_items(actor="lm", cores=["K0-0"], reason=" ")
    assert _counts() == before


def test_claims_follow_priority_and_hold(db_url: str) -> None:
    build_world()
    P.build_queue(actor="eng", model_ref="champion", label_method="rule")
    first = P.next_item(actor="p1")
    assert first is not None and first["core"] == "K2-0" and first["claim"]["token"] == 1
    assert P.next_item(actor="p1")["item"] == first["item"]  # type: ignore[index]
    second = P.next_item(actor="p2")
    assert second is not None and second["item"] != first["item"]
    with pytest.raises(PermissionDenied):
        P.next_item(actor="lm")
    with pytest.raises(PermissionDenied):
        P.next_item(actor="eng")


def test_submit_votes_and_recomputes_consensus(db_url: str) -> None:
    w = build_world()
    P.add_items(actor="lm", cores=["K2-0"], reason="suspect", votes_needed=2)
    a = P.next_item(actor="p1")
    assert a is not None
    out = P.submit(actor="p1", item=a["item"], score="3+", token=a["claim"]["token"])
    assert out["item_status"] == "open" and not out["label_changed"]  # 3+, 1+, 1+ -> agreed 1+
    # p1 voted in this round: never offered this core again; p2 gets it
    assert P.next_item(actor="p1") is None
    b = P.next_item(actor="p2")
    assert b is not None and b["item"] == a["item"]
    out = P.submit(actor="p2", item=b["item"], score="3", comment="strong, complete")
    assert out["item_status"] == "done" and out["label_changed"]
    assert out["label_before"] == {"status": "agreed", "score": 1}
    assert out["label_after"] == {"status": "agreed", "score": 3}
    with session_scope() as s:
        votes = s.execute(
            select(Vote.round, Vote.seq, Vote.source).where(
                Vote.core_id == w.core_ids["K2-0"], Vote.round == "review"
            )
        ).all()
        assert sorted(votes) == [("review", 1, f"review-item:{a['item']}")] * 2
        label = s.scalar(
            select(ConsensusLabel).where(
                ConsensusLabel.core_id == w.core_ids["K2-0"], ConsensusLabel.is_current.is_(True)
            )
        )
        assert label is not None and label.score == 3 and label.version == 2


def test_own_adjudication_is_never_offered(db_url: str) -> None:
    w = build_world()
    with session_scope() as s:
        p3 = s.scalar(select(User.id).where(User.username == "p3"))
        s.add(Vote(core_id=w.core_ids["K1-0"], user_id=p3, score="2+", round="adjudication"))
    P.add_items(actor="lm", cores=["K1-0"], reason="x")
    assert P.next_item(actor="p3") is None
    assert P.next_item(actor="p1") is not None


def test_bad_input_is_one_typed_error_and_writes_nothing(db_url: str) -> None:
    build_world()
    P.add_items(actor="lm", cores=["K2-0", "K1-0"], reason="x")
    mine = P.next_item(actor="p1")
    assert mine is not None
    before = _counts()
    cases = [
        (NotFound, "unknown review item 999", dict(actor="p1", item=999, score="1+")),
        (Conflict, "not claimed by p2", dict(actor="p2", item=mine["item"], score="1+")),
        (InvalidRequest, "bad score '4\\+'", dict(actor="p1", item=mine["item"], score="4+")),
        (PermissionDenied, "role lab_manager", dict(actor="lm", item=mine["item"], score="1+")),
        (PermissionDenied, "role engineer", dict(actor="eng", item=mine["item"], score="1+")),
    ]
    for exc, msg, kw in cases:
        with pytest.raises(exc, match=msg) as info:
            P.submit(**kw)  # type: ignore[arg-type]
        assert "\n" not in str(info.value)
    with pytest.raises(Conflict, match="not claimed by p2"):
        P.renew(actor="p2", item=mine["item"])
    with pytest.raises(Conflict):
        P.skip(actor="p2", item=mine["item"])
    assert _counts() == before


def test_review_of_a_core_excluded_meanwhile_is_refused(db_url: str) -> None:
    w = build_world()
    P.add_items(actor="lm", cores=["K2-1"], reason="x")
    mine = P.next_item(actor="p1")
    assert mine is not None
    with session_scope() as s:  # an adjudicator excludes the core while p1 holds it
        admin = s.scalar(select(User.id).where(User.username == "admin"))
        s.add(Vote(core_id=w.core_ids["K2-1"], user_id=admin, score="ND", round="adjudication"))
    with session_scope() as s:
        from her2ops.platform.consensus import apply_consensus

        apply_consensus(s, actor="lm", all_cores=True)
    before = _counts()
    with pytest.raises(Conflict, match="K2-1 was excluded"):
        P.submit(actor="p1", item=mine["item"], score="2+")
    assert _counts() == before


def test_lapsed_lease_late_submit_is_refused(db_url: str) -> None:
    build_world()
    P.add_items(actor="lm", cores=["K2-0"], reason="x")
    a = P.next_item(actor="p1", lease_s=60)
    assert a is not None
    assert P.next_item(actor="p2") is None  # held
    with session_scope() as s:  # p2 claims an hour later: p1's lease lapsed
        p2 = s.scalar(select(User.id).where(User.username == "p2"))
        assert p2 is not None
        got = C.claim_next(s, user_id=p2, lease_s=60, now=utcnow() + timedelta(hours=1))
    assert got == (a["item"], 2)
    before = _counts()
    with pytest.raises(Conflict, match=r"not claimed by p1.*claimed by p2") as info:
        P.submit(actor="p1", item=a["item"], score="3+", token=a["claim"]["token"])
    assert "\n" not in str(info.value)
    assert _counts() == before


def test_stale_token_is_refused_even_for_the_same_pathologist(db_url: str) -> None:
    build_world()
    P.add_items(actor="lm", cores=["K2-0"], reason="x")
    a = P.next_item(actor="p1", lease_s=60)
    assert a is not None
    with session_scope() as s:  # the lease lapses and p1 (another process) claims again
        p1 = s.scalar(select(User.id).where(User.username == "p1"))
        assert p1 is not None
        C.claim_next(s, user_id=p1, lease_s=60, now=utcnow() + timedelta(hours=1))
    before = _counts()
    with pytest.raises(Conflict, match="no longer current"):
        P.submit(actor="p1", item=a["item"], score="3+", token=a["claim"]["token"])
    assert _counts() == before
    assert P.submit(actor="p1", item=a["item"], score="3+", token=2)["item_status"] == "done"


def test_renew_release_skip_and_expire(db_url: str) -> None:
    build_world()
    P.add_items(actor="lm", cores=["K2-0"], reason="x")
    a = P.next_item(actor="p1", lease_s=5)
    assert a is not None
    renewed = P.renew(actor="p1", item=a["item"], lease_s=600)
    assert renewed["lease_expires_at"] > a["claim"]["lease_expires_at"]
    P.release(actor="p1", item=a["item"])
    assert _items()["K2-0"]["status"] == "open"
    again = P.next_item(actor="p1")
    assert again is not None and again["claim"]["token"] == 2
    P.skip(actor="p1", item=a["item"])
    assert _items()["K2-0"]["status"] == "skipped"
    assert P.next_item(actor="p1") is None  # skipped: not offered to p1 again
    b = P.next_item(actor="p2", lease_s=1)
    assert b is not None and b["item"] == a["item"]
    with session_scope() as s:
        assert C.expire_leases(s, now=utcnow() + timedelta(seconds=5)) == 1
        assert R.queue_counts(s)["expired"] == 1
    c = P.next_item(actor="p3")
    assert c is not None and c["item"] == a["item"]


def test_blinded_payload_holds_no_votes_and_no_model_output(db_url: str) -> None:
    build_world()
    P.build_queue(actor="eng", model_ref="champion", label_method="rule")
    view = P.next_item(actor="p1")
    assert view is not None and view["blinded"]
    text = json.dumps(view, default=str)
    for word in ("p2", "p3", 'votes"', "consensus", "reasons", "priority", "model", "probs"):
        assert word not in text, word
    assert set(view) == {
        "item", "core", "round", "status", "mode", "blinded", "image", "votes_needed",
        "votes_done", "claim",
    }  # fmt: skip
    listed = P.list_items(actor="p1")["items"]
    assert all("reasons" not in it and "priority" not in it for it in listed)
    with pytest.raises(PermissionDenied, match="blinded"):
        P.show_item(actor="p1", item=view["item"], png=__import__("pathlib").Path("x.png"))
    # an engineer (and adjudication mode) sees everything, with what redraws the KCS sets
    full = P.show_item(actor="eng", item=view["item"])
    assert not full["blinded"]
    assert {v["pathologist"] for v in full["votes"]} == {"p1", "p2", "p3"}
    model = full["model"]
    assert model["sampler"] == {"key": "K2-0", "seed": 0}
    assert [st["index"] for st in model["kcs_sets"]] == [0, 1, 2]
    assert all(st["class"] == "3+" and st["confidence"] > 0.8 for st in model["kcs_sets"])


def test_adjudication_mode_shows_all_to_a_pathologist(db_url: str) -> None:
    build_world()
    P.add_items(actor="lm", cores=["K1-0"], reason="tie", mode="adjudication")
    view = P.next_item(actor="p1")
    assert view is not None and not view["blinded"]
    assert {v["pathologist"] for v in view["votes"]} == {"p1", "p2", "p3"}
    with pytest.raises(InvalidRequest, match="bad review mode"):
        P.add_items(actor="lm", cores=["K0-0"], reason="x", mode="peek")
