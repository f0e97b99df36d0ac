"""Engine and session handling: one engine per URL, one ``session_scope()`` per unit of work."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, IntegrityError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from her2ops.config import get_settings
from her2ops.platform.errors import ConfigError, Conflict

log = logging.getLogger(__name__)
T = TypeVar("T")


class Collision(Conflict):
    """A transaction collided with a concurrent one (lock timeout, deadlock, serialization)."""


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    # WAL lets the dashboard read while a worker writes; foreign keys are off by default in SQLite.
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()


def _sqlite_savepoint(conn: Any, _name: Any) -> None:
    # Python's sqlite3 driver issues BEGIN only before a data change, never before SAVEPOINT, and
    # a SAVEPOINT outside a transaction starts one that its RELEASE commits: a nested write would
    # outlive the rollback of its unit of work. Open the outer transaction first; IMMEDIATE takes
    # the write lock now, since a savepoint is there to write.
    dbapi = conn.connection.dbapi_connection
    if dbapi is not None and not dbapi.in_transaction:
        dbapi.execute("BEGIN IMMEDIATE")


_ENGINES: dict[str, Engine] = {}
_FACTORIES: dict[str, sessionmaker[Session]] = {}


def get_engine(url: str | None = None) -> Engine:
    """The engine for ``url`` (default: the configured one). SQLite files get their folder made."""
    url = url or get_settings().resolved_database_url
    if url not in _ENGINES:
        _ENGINES[url] = _create_engine(url)
    return _ENGINES[url]


def _create_engine(url: str) -> Engine:
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise ConfigError(f"HER2OPS_DATABASE_URL is not a database URL: {url!r}") from None
    kwargs: dict[str, Any] = {"future": True}
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        kwargs["connect_args"] = {"timeout": 30}
    else:
        kwargs["pool_pre_ping"] = True
        # An unreachable server fails in seconds instead of hanging on the OS's TCP timeout.
        if "connect_timeout" not in parsed.query:  # the URL's own value wins
            kwargs["connect_args"] = {"connect_timeout": get_settings().db_connect_timeout_s}
    try:
        engine = create_engine(parsed, **kwargs)
    except (ArgumentError, ImportError) as exc:
        raise ConfigError(f"HER2OPS_DATABASE_URL {parsed!r} cannot be used: {exc}") from None
    if parsed.get_backend_name() == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
        event.listen(engine, "savepoint", _sqlite_savepoint)
    return engine


def _config_error(what: str, url: URL, exc: OperationalError) -> ConfigError:
    """One line naming the setting and the driver's first line of complaint (no password)."""
    reason = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
    return ConfigError(
        f"{what} HER2OPS_DATABASE_URL={url.render_as_string(hide_password=True)}: {reason}"
    )


def check_connection(engine: Engine) -> None:
    """Raise ConfigError naming the setting when the database cannot be reached."""
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except OperationalError as exc:
        raise _config_error("cannot reach the database at", engine.url, exc) from None


def _factory(url: str) -> sessionmaker[Session]:
    if url not in _FACTORIES:
        _FACTORIES[url] = sessionmaker(bind=get_engine(url), expire_on_commit=False)
    return _FACTORIES[url]


@contextmanager
def session_scope(url: str | None = None) -> Iterator[Session]:
    """A session that commits on success and rolls back (and re-raises) on any error."""
    url = url or get_settings().resolved_database_url
    session = _factory(url)()
    try:
        yield session
        session.commit()
    except OperationalError as exc:
        session.rollback()
        if is_transient(exc):  # a lock timeout, deadlock or serialization failure
            reason = str(exc.orig).strip().splitlines()[0] if exc.orig else type(exc).__name__
            raise Collision(
                f"the database is busy with a concurrent change ({reason}); nothing was "
                "written, run it again"
            ) from exc
        raise _config_error("database error at", make_url(url), exc) from exc
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def reset_engines() -> None:
    """Dispose and forget every engine (tests, and Celery's worker_process_init after fork)."""
    for engine in _ENGINES.values():
        engine.dispose()
    _ENGINES.clear()
    _FACTORIES.clear()


# SQLSTATEs of collisions between concurrent transactions: serialization failure, deadlock,
# lock not available. Unique violations (23505) are IntegrityErrors, handled alongside.
_TRANSIENT_SQLSTATES = {"40001", "40P01", "55P03"}


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` is a collision with a concurrent transaction (worth a retry)."""
    if isinstance(exc, IntegrityError):
        return True
    if not isinstance(exc, DBAPIError):
        return False
    orig = exc.orig
    if getattr(orig, "sqlstate", None) in _TRANSIENT_SQLSTATES:
        return True
    # SQLite: another writer held the database longer than busy_timeout.
    return "database is locked" in str(orig)


def run_in_transaction(
    work: Callable[[Session], T],
    *,
    url: str | None = None,
    what: str = "the command",
    attempts: int = 4,
) -> T:
    """Run ``work(session)`` in one transaction; retry (bounded) when it collides with a
    concurrent one (unique key taken meanwhile, deadlock, serialization failure).

    ``work`` must be safe to re-run from the start: every service here re-reads what the database
    holds, so a retry sees the rows the other transaction committed (a re-import then finds them
    "already recorded"). After ``attempts`` collisions it ends with one clear :class:`Conflict`.
    """
    delay = 0.05
    for attempt in range(1, attempts + 1):
        try:
            with session_scope(url) as session:
                return work(session)
        except (DBAPIError, Collision) as exc:
            cause = exc.__cause__ if isinstance(exc, Collision) else exc
            if not isinstance(cause, DBAPIError) or not is_transient(cause):
                raise
            reason = str(cause.orig).strip().splitlines()[0] if cause.orig else type(exc).__name__
            if attempt == attempts:
                raise Conflict(
                    f"{what} collided with concurrent changes on each of {attempts} tries and "
                    f"was not applied (last: {reason}); nothing was written, run it again"
                ) from None
            log.info(
                "%s collided with a concurrent transaction (%s); retry %d", what, reason, attempt
            )
            time.sleep(delay * attempt)
    raise AssertionError("unreachable")
