"""The runtime: every resource a use case needs, built from the settings in one place.

CLI commands, Celery tasks, dashboard pages and tests all get the database, the image store and
MLflow from here, never by constructing them themselves. Nothing is read at import time: the
settings are read when ``get_runtime()`` is first called (and again after
``get_settings.cache_clear()``).

The database check lives here too: the embedded SQLite default migrates itself; a PostgreSQL
database whose schema is behind the code is refused with the command that fixes it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import cached_property
from typing import TYPE_CHECKING, TypeVar

from sqlalchemy.orm import Session

from her2ops.config import Settings, get_settings
from her2ops.errors import ConfigError
from her2ops.platform import migrate
from her2ops.platform.db import run_in_transaction, session_scope

T = TypeVar("T")

if TYPE_CHECKING:
    from her2ops.imaging.pss import PSSConfig
    from her2ops.imaging.store import CoreStore
    from her2ops.pipelines.sampling import StoreSampler
    from her2ops.tracking import Tracking


class Runtime:
    """Database sessions, the image store and MLflow for one set of settings."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.database_url = settings.resolved_database_url
        self._checked = False

    def check_database(self) -> None:
        """Migrate the embedded SQLite default; refuse a PostgreSQL schema behind the code."""
        if self._checked:
            return
        if self.database_url.startswith("sqlite"):
            migrate.ensure_current(self.database_url)
        else:
            rev = migrate.current(self.database_url)
            if rev != migrate.head():
                raise ConfigError(
                    f"database at HER2OPS_DATABASE_URL is at revision {rev or 'none'}, the code "
                    f"expects {migrate.head()}: run 'her2ops db upgrade'"
                )
        self._checked = True

    @contextmanager
    def session(self) -> Iterator[Session]:
        """One unit of work on the checked database: commits on success, rolls back on error."""
        self.check_database()
        with session_scope(self.database_url) as session:
            yield session

    def transaction(self, work: Callable[[Session], T], *, what: str) -> T:
        """``work(session)`` in one unit of work, retried (bounded) when it collides with a
        concurrent one; a lasting collision is one :class:`~her2ops.errors.Conflict`."""
        self.check_database()
        return run_in_transaction(work, url=self.database_url, what=what)

    @cached_property
    def store(self) -> CoreStore:
        from her2ops.imaging.store import CoreStore

        s = self.settings
        return CoreStore(
            s.resolved_store_dir, jpeg_quality=s.store_jpeg_quality, lossless=s.store_lossless
        )

    @cached_property
    def tracking(self) -> Tracking:
        from her2ops.tracking import Tracking

        return Tracking(self.settings)

    def sampler(self, cfg: PSSConfig) -> StoreSampler:
        """A PSS sampler over the image store (close it when done)."""
        from her2ops.pipelines.sampling import StoreSampler

        return StoreSampler(self.settings.resolved_store_dir, cfg)

    @property
    def device(self) -> str | None:
        return self.settings.device


_CURRENT: list[Runtime] = []


def get_runtime() -> Runtime:
    """The runtime of the current settings (a new one after the settings cache is cleared)."""
    settings = get_settings()
    if not _CURRENT or _CURRENT[0].settings is not settings:
        _CURRENT[:] = [Runtime(settings)]
    return _CURRENT[0]
