"""Password login for the dashboards: ``login(username, password) -> user dict``.

Built on the platform's credentials (``platform/auth.py``: argon2id hashes in
``users.password_hash``, set with ``her2ops users passwd`` or ``users add --password-stdin``).
This adds what a login form needs on top of a password check: a rate limit and an audit trail.

Rate limit and audit share one mechanism: every attempt writes an audit event
(``auth.login`` or ``auth.login_failed``, keyed by the user name tried) in a transaction of its
own, and a user name with ``MAX_FAILURES`` failed attempts in the last ``WINDOW`` is refused
without checking the password until the window has passed. Counting in the database (not in the
process) holds across dashboard replicas and restarts. No password or hash is ever logged or put
in an audit event; a wrong password, an unknown user, a user without a password and an inactive
user all get the same answer, after the same argon2 work (``check_password``).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import func, select

from her2ops.errors import InvalidRequest, PermissionDenied
from her2ops.pipelines.admin import set_password
from her2ops.pipelines.runtime import get_runtime
from her2ops.platform import audit
from her2ops.platform.auth import MAX_PASSWORD, MIN_PASSWORD, check_password
from her2ops.platform.schema import AuditEvent, User, utcnow

__all__ = ["MAX_FAILURES", "MIN_PASSWORD", "WINDOW", "WRONG", "login", "set_password"]

#: Failed attempts on one user name allowed within ``WINDOW`` before logins are refused.
MAX_FAILURES = 5
WINDOW = timedelta(minutes=15)
WRONG = "wrong user name or password"


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
        ok = check_password(user if user is not None else User(), password)
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
