"""Engine and session handling: one engine per URL, one ``session_scope()`` per unit of work."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from her2ops.config import get_settings
from her2ops.platform.errors import ConfigError


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    # WAL lets the dashboard read while a worker writes; foreign keys are off by default in SQLite.
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()


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
    try:
        engine = create_engine(parsed, **kwargs)
    except (ArgumentError, ImportError) as exc:
        raise ConfigError(f"HER2OPS_DATABASE_URL {parsed!r} cannot be used: {exc}") from None
    if parsed.get_backend_name() == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
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
