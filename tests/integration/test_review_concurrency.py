"""Review claims under real concurrency on PostgreSQL: many claimer processes, SIGKILL.

Claimers are forked processes, each with its own engine and connections, so the database (not
the Python GIL or one connection pool) is what keeps two of them from taking the same item.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import time
from typing import Any

import pytest
from sqlalchemy import insert, select

from her2ops.pipelines import review as P
from her2ops.platform import review_claims as C
from her2ops.platform.curation import add_user
from her2ops.platform.db import reset_engines, session_scope
from her2ops.platform.schema import Core, Patient, ReviewItem, User

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.parametrize("db_url", ["postgresql"], indirect=True),
]
CTX = mp.get_context("fork")


def _world(n_items: int, n_pathologists: int) -> dict[str, int]:
    """``n_items`` open items on cores of their own and pathologists q1..qN (name -> id)."""
    with session_scope() as s:
        add_user(s, actor=None, username="admin", role="admin")
        add_user(s, actor="admin", username="lm", role="lab_manager")
        for i in range(n_pathologists):
            add_user(s, actor="admin", username=f"q{i + 1}", role="pathologist")
    with session_scope() as s:
        s.execute(insert(Patient), [{"code": f"CP{i}", "site": "A"} for i in range(n_items)])
        pids = dict(s.execute(select(Patient.code, Patient.id)).all())
        s.execute(
            insert(Core),
            [
                {
                    "code": f"CC{i:05d}",
                    "patient_id": pids[f"CP{i}"],
                    "source_path": "-",
                    "sha256": f"{i:064d}",
                    "width": 8,
                    "height": 8,
                }
                for i in range(n_items)
            ],
        )
        cores = s.scalars(select(Core.id).order_by(Core.id)).all()
        s.execute(
            insert(ReviewItem),
            [{"core_id": c, "priority": (i % 17) / 17, "reasons": []} for i, c in enumerate(cores)],
        )
        return dict(s.execute(select(User.username, User.id)).all())


def _claim_all(url: str, user_id: int, start: Any, out: Any) -> None:
    """Child: claim until nothing is left, one transaction per claim; report what it got."""
    from her2ops.platform.db import session_scope as scope

    start.wait()
    got = []
    while True:
        with scope(url) as s:
            claim = C.claim_next(s, user_id=user_id, lease_s=600)
        if claim is None:
            break
        got.append(claim)
    out.put((user_id, got))


def test_fifty_claimer_processes_never_collide_and_lose_nothing(db_url: str) -> None:
    users = _world(200, 50)
    reset_engines()  # no pooled connection crosses the fork
    start, out = CTX.Event(), CTX.Queue()
    procs = [
        CTX.Process(target=_claim_all, args=(db_url, users[f"q{i + 1}"], start, out))
        for i in range(50)
    ]
    for p in procs:
        p.start()
    start.set()
    results = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    claimed = [(uid, item, token) for uid, got in results for item, token in got]
    items = [item for _, item, _ in claimed]
    assert len(items) == len(set(items)) == 200  # none twice, none lost
    assert sum(1 for _, got in results if got) > 1  # the claims really were spread
    with session_scope() as s:
        rows = {r.id: r for r in s.scalars(select(ReviewItem))}
    for uid, item, token in claimed:
        assert rows[item].status == "claimed" and rows[item].claimed_by_id == uid
        assert token == rows[item].fencing_token == 1


def _claim_then_hang(url: str, actor: str, lease_s: int, out: Any) -> None:
    os.environ["HER2OPS_DATABASE_URL"] = url
    view = P.next_item(actor=actor, lease_s=lease_s)
    out.put(view["item"] if view else None)
    time.sleep(600)


def _claim_uncommitted_then_hang(url: str, user_id: int, out: Any) -> None:
    from sqlalchemy.orm import Session

    from her2ops.platform.db import get_engine

    s = Session(get_engine(url))
    out.put(C.claim_next(s, user_id=user_id, lease_s=600))  # holds the row lock, never commits
    time.sleep(600)


def test_sigkilled_claimer_item_returns_after_the_lease(db_url: str) -> None:
    _world(1, 3)
    reset_engines()
    out = CTX.Queue()
    child = CTX.Process(target=_claim_then_hang, args=(db_url, "q1", 2, out))
    child.start()
    item = out.get(timeout=60)
    assert item is not None
    os.kill(child.pid, signal.SIGKILL)  # type: ignore[arg-type]
    child.join(timeout=10)
    claimed_at = time.monotonic()
    assert P.next_item(actor="q2") is None  # still leased to the dead claimer
    time.sleep(max(0.0, 2.2 - (time.monotonic() - claimed_at)))
    view = P.next_item(actor="q2")
    assert view is not None and view["item"] == item and view["claim"]["token"] == 2
    assert P.submit(actor="q2", item=item, score="2+")["item_status"] == "done"


def test_claimer_killed_inside_its_transaction_leaves_the_item_open(db_url: str) -> None:
    users = _world(1, 2)
    reset_engines()
    out = CTX.Queue()
    child = CTX.Process(target=_claim_uncommitted_then_hang, args=(db_url, users["q1"], out))
    child.start()
    assert out.get(timeout=60) is not None
    with session_scope() as s:  # the row is locked by the child: SKIP LOCKED passes it by
        assert C.claim_next(s, user_id=users["q2"], lease_s=60) is None
    os.kill(child.pid, signal.SIGKILL)  # type: ignore[arg-type]
    child.join(timeout=10)
    deadline = time.monotonic() + 10  # PostgreSQL notices the dead backend and rolls back
    got = None
    while got is None and time.monotonic() < deadline:
        with session_scope() as s:
            got = C.claim_next(s, user_id=users["q2"], lease_s=60)
        time.sleep(0.1)
    assert got is not None and got[1] == 1  # the killed claim never happened
