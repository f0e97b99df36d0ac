"""Dashboard login: argon2 passwords, one answer for every wrong case, rate limit, audit."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import select

from her2ops.errors import InvalidRequest, NotFound, PermissionDenied
from her2ops.pipelines import auth
from her2ops.platform.db import session_scope
from her2ops.platform.schema import AuditEvent, User
from tests.factories import seed_users

PW = "correct horse battery"


@pytest.fixture
def users(db_url: str) -> None:
    seed_users(pathologists=2)
    auth.set_password(actor="admin", username="p1", password=PW)


def _events(action: str) -> list[AuditEvent]:
    with session_scope() as s:
        rows = list(s.scalars(select(AuditEvent).where(AuditEvent.action == action)))
        s.expunge_all()
        return rows


def test_login_returns_the_user_and_is_audited(users: None) -> None:
    assert auth.login("p1", PW) == {"username": "p1", "role": "pathologist"}
    with session_scope() as s:
        stored = s.scalar(select(User.password_hash).where(User.username == "p1"))
    assert stored is not None and stored.startswith("$argon2id$") and PW not in stored
    events = _events("auth.login")
    assert [e.entity_key for e in events] == ["p1"]


def test_wrong_password_unknown_user_and_no_password_give_one_answer(users: None) -> None:
    answers = set()
    for name, pw in (("p1", "wrong password!"), ("nobody", PW), ("p2", PW)):
        with pytest.raises(PermissionDenied) as err:
            auth.login(name, pw)
        answers.add(str(err.value))
    assert answers == {auth.WRONG}
    failed = _events("auth.login_failed")
    assert [e.entity_key for e in failed] == ["p1", "nobody", "p2"]
    text = json.dumps([e.details for e in failed])
    assert PW not in text and "wrong password!" not in text and "argon2" not in text
    with pytest.raises(InvalidRequest):
        auth.login("p1", "")


def test_too_many_failures_lock_the_name_even_with_the_right_password(users: None) -> None:
    for _ in range(auth.MAX_FAILURES):
        with pytest.raises(PermissionDenied):
            auth.login("p1", "not the password")
    with pytest.raises(PermissionDenied, match="too many failed logins"):
        auth.login("p1", PW)
    assert not _events("auth.login")
    # other names are not affected
    auth.set_password(actor="admin", username="p2", password=PW)
    assert auth.login("p2", PW)["username"] == "p2"


def test_inactive_user_cannot_log_in(users: None) -> None:
    with session_scope() as s:
        user = s.scalar(select(User).where(User.username == "p1"))
        assert user is not None
        user.active = False
    with pytest.raises(PermissionDenied):
        auth.login("p1", PW)


def test_set_password_rules(users: None) -> None:
    auth.set_password(actor="p2", username="p2", password="p2's own password")
    assert auth.login("p2", "p2's own password")["role"] == "pathologist"
    with pytest.raises(PermissionDenied):
        auth.set_password(actor="p2", username="p1", password="hijacked password")
    with pytest.raises(InvalidRequest):
        auth.set_password(actor="admin", username="p1", password="short")
    with pytest.raises(InvalidRequest):
        auth.set_password(actor="admin", username="p1", password="line\nbreak password")
    with pytest.raises(NotFound):
        auth.set_password(actor="admin", username="ghost", password=PW)
    assert auth.login("p1", PW)["username"] == "p1"
