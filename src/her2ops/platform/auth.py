"""Credentials: argon2id password hashes, personal tokens, and who the acting user really is.

The CLI, the workers and the dashboards all act *as* a user, whose role the services check.
Outside the embedded single-user SQLite default (``Settings.credentials_required``), naming a
user is not enough: :func:`resolve_actor` needs that user's personal token (written by
``her2ops login``, stored here only as its sha256) or their password (stored only as an argon2id
hash; the dashboards use the same :func:`check_password`).

The trust boundary: this protects the application's entry points. Whoever holds the database's
own credentials can bypass all of it, so production gives the CLI's database user only what it
needs (see the README).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from datetime import datetime

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from sqlalchemy import select
from sqlalchemy.orm import Session

from her2ops.platform import audit
from her2ops.platform.access import get_user, require
from her2ops.platform.errors import InvalidRequest, PermissionDenied
from her2ops.platform.schema import User, utcnow

MIN_PASSWORD = 10
MAX_PASSWORD = 1024
TOKEN_PREFIX = "h2o_"
_HASHER = PasswordHasher()  # argon2id with the library's current recommended parameters
_DUMMY = _HASHER.hash("not a password of anyone")  # equal work for unknown users (timing)


def validate_password(password: str) -> None:
    """InvalidRequest unless ``password`` is acceptable (length; no NUL or line breaks)."""
    if len(password) < MIN_PASSWORD:
        raise InvalidRequest(f"a password needs at least {MIN_PASSWORD} characters")
    if len(password) > MAX_PASSWORD:
        raise InvalidRequest(f"a password has at most {MAX_PASSWORD} characters")
    if any(c in password for c in "\x00\r\n"):
        raise InvalidRequest("a password must not contain NUL or line breaks")


def hash_password(password: str) -> str:
    validate_password(password)
    return _HASHER.hash(password)


def check_password(user: User, password: str) -> bool:
    """Whether ``password`` is ``user``'s (constant time; False when none is set)."""
    if not password:
        return False
    try:
        if not user.password_hash:
            _HASHER.verify(_DUMMY, password)  # the same work, so timing tells nothing
            return False
        return _HASHER.verify(user.password_hash, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def set_password(session: Session, *, actor: str | None, username: str, password: str) -> User:
    """Set ``username``'s password: the user themself, or an admin for anyone."""
    target = get_user(session, username)
    acting = get_user(session, actor)
    if acting.id != target.id:
        require(session, actor, "users.add")
    target.password_hash = hash_password(password)
    # A new password ends the old token: a leaked token dies with a password change.
    target.token_hash = None
    target.token_created_at = None
    audit.record(session, actor=acting, action="users.passwd", entity="user", key=target.username)
    return target


def issue_token(session: Session, *, username: str, password: str) -> str:
    """Check the password and return a new personal token (only its hash is stored)."""
    user = session.scalar(select(User).where(User.username == username))
    if user is None or not user.active:
        check_password(User(username="", role="pathologist"), password)  # timing
        raise PermissionDenied(f"wrong user name or password for {username!r}")
    if not check_password(user, password):
        raise PermissionDenied(f"wrong user name or password for {username!r}")
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    user.token_hash = token_digest(token)
    user.token_created_at = utcnow()
    audit.record(session, actor=user, action="users.login", entity="user", key=user.username)
    return token


def resolve_actor(session: Session, username: str | None, credential: str | None) -> User:
    """The active user ``username`` if ``credential`` (their token or password) is theirs.

    Always PermissionDenied with the same message for a wrong credential, whichever part was
    wrong, so that the answer does not tell which user names exist.
    """
    denied = PermissionDenied(
        f"acting as {username!r} needs that user's credential: run 'her2ops login {username}' "
        "(or set HER2OPS_TOKEN)"
    )
    if not username:
        raise PermissionDenied("no acting user: pass --as USER or set HER2OPS_USER")
    if not credential:
        raise denied
    user = session.scalar(select(User).where(User.username == username))
    if user is None or not user.active:
        if not credential.startswith(TOKEN_PREFIX):
            check_password(User(username="", role="pathologist"), credential)  # timing
        raise denied
    if credential.startswith(TOKEN_PREFIX):
        if user.token_hash and hmac.compare_digest(user.token_hash, token_digest(credential)):
            return user
        raise denied
    if check_password(user, credential):
        return user
    raise denied


def token_age(user: User) -> datetime | None:
    return user.token_created_at
