"""Administration use cases: guarded schema downgrades, credentials (login, passwords), and who
the acting user of a command is.

Destructive commands need an admin and an explicit confirmation (``yes``); on PostgreSQL, the
production system of record, a downgrade also needs ``i_know_this_deletes_data``: it drops the
append-only votes with their tables, and an emptied users table re-opens the first-user
bootstrap.
"""

from __future__ import annotations

import getpass
import json
import os
import sys
from pathlib import Path
from typing import Any

from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from her2ops.config import Settings, get_settings
from her2ops.errors import ConfigError, InvalidRequest, PermissionDenied
from her2ops.platform import audit, auth, migrate
from her2ops.platform.access import get_user, require
from her2ops.platform.db import session_scope
from her2ops.platform.schema import User

TOKEN_ENV = "HER2OPS_TOKEN"


# --- who is acting ----------------------------------------------------------------------------


def read_token_file(settings: Settings | None = None) -> tuple[str, str] | None:
    """(username, token) from the token file written by :func:`login`, or None."""
    path = (settings or get_settings()).resolved_token_file
    try:
        data = json.loads(path.read_text())
        return str(data["username"]), str(data["token"])
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError):
        raise ConfigError(f"token file {path} is unreadable: run 'her2ops login' again") from None


def default_actor(named: str | None, settings: Settings | None = None) -> str | None:
    """The acting user: ``--as``/``HER2OPS_USER`` if given, else the token file's user."""
    if named:
        return named
    saved = read_token_file(settings)
    return saved[0] if saved else None


def authenticate(
    session: Session,
    username: str | None,
    *,
    settings: Settings | None = None,
    interactive: bool | None = None,
) -> User | None:
    """Check that the command may act as ``username``.

    In the embedded single-user SQLite default nothing is checked (whoever can run the command
    can open the database file anyway). Elsewhere the credential is ``HER2OPS_TOKEN``, the token
    file of ``her2ops login`` (if it is that user's), or, on a terminal, a password prompt.
    """
    settings = settings or get_settings()
    if username is None or not settings.credentials_required:
        return None
    credential = os.environ.get(TOKEN_ENV) or None
    if credential is None:
        saved = read_token_file(settings)
        if saved and saved[0] == username:
            credential = saved[1]
    if credential is None and (sys.stdin.isatty() if interactive is None else interactive):
        credential = getpass.getpass(f"password for {username}: ")
    return auth.resolve_actor(session, username, credential)


# --- login and passwords ----------------------------------------------------------------------


def write_token_file(path: Path, username: str, token: str, database: str) -> None:
    """Write the token file readable and writable by its owner only (mode 0600, atomic)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)  # O_CREAT's mode is masked by the umask and ignored if it exists
        os.write(
            fd, json.dumps({"username": username, "token": token, "database": database}).encode()
        )
    finally:
        os.close(fd)
    os.replace(tmp, path)


def login(*, username: str, password: str, url: str | None = None) -> Path:
    """Check ``username``'s password, store a new personal token (hashed) and write it to the
    token file. A new login replaces the previous token."""
    from her2ops.pipelines.runtime import get_runtime

    settings = get_settings()
    url = url or settings.resolved_database_url
    get_runtime().check_database()
    with session_scope(url) as s:
        token = auth.issue_token(s, username=username, password=password)
    path = settings.resolved_token_file
    write_token_file(path, username, token, make_url(url).render_as_string(hide_password=True))
    return path


def logout(*, url: str | None = None) -> bool:
    """Forget the token: in the database (if it is still the current one) and the file."""
    settings = get_settings()
    saved = read_token_file(settings)
    if saved is None:
        return False
    with session_scope(url or settings.resolved_database_url) as s:
        user = s.get(User, get_user(s, saved[0]).id)
        if user is not None and user.token_hash == auth.token_digest(saved[1]):
            user.token_hash = None
            user.token_created_at = None
    settings.resolved_token_file.unlink(missing_ok=True)
    return True


def add_user(
    session: Session, *, actor: str | None, username: str, role: str, password: str | None
) -> User:
    """Add a user from an adapter. Where credentials are required (not the embedded SQLite
    default) the first user needs a password, or nobody could ever act as anyone."""
    from her2ops.platform.access import user_count
    from her2ops.platform.curation import add_user as add

    if password is None and get_settings().credentials_required and user_count(session) == 0:
        raise InvalidRequest(
            "the first user needs a password here (credentials are required outside the "
            "embedded SQLite default): pass --password-stdin"
        )
    return add(session, actor=actor, username=username, role=role, password=password)


def set_password(*, actor: str | None, username: str, password: str) -> dict[str, Any]:
    """Set a password (the user themself, or an admin); ends the user's token."""
    from her2ops.pipelines.runtime import get_runtime

    with get_runtime().session() as s:
        user = auth.set_password(s, actor=actor, username=username, password=password)
        return {"username": user.username}


def authenticated_actor(named: str | None) -> str | None:
    """The acting user of an adapter's command (``--as``, else the token file's), after
    :func:`authenticate` has checked the credential where one is required."""
    from her2ops.pipelines.runtime import get_runtime

    username = default_actor(named)
    if username is None or not get_settings().credentials_required:
        return username
    with get_runtime().session() as s:
        authenticate(s, username)
    return username


# --- destructive schema changes ---------------------------------------------------------------


def downgrade_database(
    *,
    actor: str | None,
    revision: str,
    yes: bool = False,
    i_know_this_deletes_data: bool = False,
    url: str | None = None,
) -> dict[str, Any]:
    """Migrate down to ``revision`` after the checks: an authenticated admin, ``yes``, and on
    PostgreSQL ``i_know_this_deletes_data``. Audited before the tables go."""
    url = url or get_settings().resolved_database_url
    rev = migrate.current(url)
    if rev is None:
        return {"current": None, "head": migrate.head(), "changed": False}
    if not revision:
        raise InvalidRequest("name the revision to go down to ('base' empties the database)")
    with session_scope(url) as s:
        authenticate(s, actor)
        user = require(s, actor, "db.downgrade")
        if not yes:
            raise InvalidRequest(
                f"'db downgrade {revision}' drops tables or columns and the data in them "
                "(votes included); pass --yes to confirm"
            )
        if make_url(url).get_backend_name() == "postgresql" and not i_know_this_deletes_data:
            raise PermissionDenied(
                f"'db downgrade {revision}' on PostgreSQL deletes recorded data; refused unless "
                "--i-know-this-deletes-data is given as well (take a backup first)"
            )
        audit.record(
            s,
            actor=user,
            action="db.downgrade",
            entity="schema",
            key=revision,
            details={"from": rev},
        )
        user_id = user.id
    try:
        migrate.downgrade(revision, url)
    except Exception as exc:
        # the event above was written first (a downgrade may drop the audit table itself): say
        # that it did not happen, so the log never shows a downgrade that the database refused
        with session_scope(url) as s:
            audit.record(
                s,
                actor=s.get(User, user_id),
                action="db.downgrade_failed",
                entity="schema",
                key=revision,
                details={"from": rev, "error": str(exc).splitlines()[0][:500]},
            )
        raise
    return {"current": migrate.current(url), "head": migrate.head(), "changed": True}
