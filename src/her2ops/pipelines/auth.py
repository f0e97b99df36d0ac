"""Password login for the dashboards: ``login(username, password) -> user dict``.

A minimal stand-in for the credentials the ``hardening`` branch is adding (``platform/auth.py``:
argon2id hashes in ``users.password_hash``); it uses the same column and hash format, so that
branch's ``her2ops users passwd`` sets passwords this login accepts.

Rate limit and audit share one mechanism: every attempt writes an audit event (``auth.login`` or
``auth.login_failed``, keyed by the user name tried) in a transaction of its own, and a user name
with ``MAX_FAILURES`` failed attempts in the last ``WINDOW`` is refused without checking the
password until the window has passed. Counting in the database (not in the process) holds across
dashboard replicas and restarts. No password or hash is ever logged or put in an audit event; the
answer to a wrong password and to an unknown user is the same message, and an unknown user costs
the same argon2 verification as a known one.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from sqlalchemy import func, select

from her2ops.errors import InvalidRequest, PermissionDenied
from her2ops.pipelines.runtime import get_runtime
from her2ops.platform import audit
from her2ops.platform.access import get_user, require
from her2ops.platform.schema import AuditEvent, User, utcnow

MIN_PASSWORD = 10
MAX_PASSWORD = 1024
#: Failed attempts on one user name allowed within ``WINDOW`` before logins are refused.
MAX_FAILURES = 5
WINDOW = timedelta(minutes=15)
WRONG = "wrong user name or password"

_HASHER = PasswordHasher()  # argon2id, the library's recommended parameters
# Verified against when the user does not exist, so that both answers take as long.
_DUMMY_HASH = _HASHER.hash("not a password of anyone")


def validate_password(password: str) -> None:
    """InvalidRequest unless ``password`` is acceptable (length; no NUL or line breaks)."""
    if len(password) < MIN_PASSWORD:
        raise InvalidRequest(f"a password needs at least {MIN_PASSWORD} characters")
    if len(password) > MAX_PASSWORD:
        raise InvalidRequest(f"a password has at most {MAX_PASSWORD} characters")
    if any(c in password for c in "\x00\r\n"):
        raise InvalidRequest("a password must not contain NUL or line breaks")


def _verify(hashed: str | None, password: str) -> bool:
    try:
        return _HASHER.verify(hashed or _DUMMY_HASH, password) and hashed is not None
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def set_password(*, actor: str | None, username: str, password: str) -> dict[str, Any]:
    """Set ``username``'s dashboard password: the user themself, or an admin for anyone."""
    validate_password(password)
    hashed = _HASHER.hash(password)
    with get_runtime().session() as s:
        target = get_user(s, username)
        acting = get_user(s, actor)
        if acting.id != target.id:
            require(s, actor, "users.add")
        target.password_hash = hashed
        audit.record(s, actor=acting, action="users.passwd", entity="user", key=target.username)
        return {"username": target.username}


def recent_failures(username: str) -> int:
    """Failed login attempts on ``username`` within the rate-limit window."""
    since = utcnow() - WINDOW
    with get_runtime().session() as s:
        return int(
            s.scalar(
                select(func.count())
                .select_from(AuditEvent)
                .where(
                    AuditEvent.action == "auth.login_failed",
                    AuditEvent.entity_key == username[:256],
                    AuditEvent.at >= since,
                )
            )
            or 0
        )


def login(username: str, password: str, *, client: str = "dashboard") -> dict[str, Any]:
    """The user dict ``{"username", "role"}`` if ``password`` is ``username``'s.

    PermissionDenied (one message for every wrong case) otherwise, or when the user name has had
    too many failed attempts recently. Every attempt is audited (without the password).
    """
    username = username.strip()
    if not username or not password:
        raise InvalidRequest("enter a user name and a password")
    if len(password) > MAX_PASSWORD or len(username) > 64:
        raise PermissionDenied(WRONG)
    if recent_failures(username) >= MAX_FAILURES:
        with get_runtime().session() as s:
            audit.record(
                s,
                actor=None,
                action="auth.login_failed",
                entity="user",
                key=username[:256],
                details={"client": client, "reason": "rate limited"},
            )
        raise PermissionDenied(
            f"too many failed logins for {username!r}: try again in "
            f"{int(WINDOW.total_seconds() // 60)} minutes"
        )
    with get_runtime().session() as s:
        user = s.scalar(select(User).where(User.username == username))
        ok = _verify(user.password_hash if user is not None else None, password)
        if ok and user is not None and user.active:
            audit.record(
                s,
                actor=user,
                action="auth.login",
                entity="user",
                key=user.username,
                details={"client": client},
            )
            return {"username": user.username, "role": user.role}
        reason = "unknown user" if user is None else "inactive" if ok else "wrong password"
        audit.record(
            s,
            actor=None,
            action="auth.login_failed",
            entity="user",
            key=username[:256],
            details={"client": client, "reason": reason},
        )
    raise PermissionDenied(WRONG)
