"""The Typer application object and the helpers every command module shares."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Any, NoReturn

import typer

app = typer.Typer(
    name="her2ops",
    help="her2ops: HER2 IHC scoring of TMA cores, and the platform around it.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

_STATE: dict[str, Any] = {"actor": None}


@app.callback()
def _global(
    as_user: Annotated[
        str | None,
        typer.Option("--as", envvar="HER2OPS_USER", help="Act as this user (roles are checked)."),
    ] = None,
) -> None:
    """her2ops: HER2 IHC scoring of TMA cores, and the platform around it."""
    _STATE["actor"] = as_user


def actor() -> str | None:
    """The acting user named by ``--as`` or ``HER2OPS_USER``."""
    return _STATE["actor"]


def fail(message: str, code: int = 1) -> NoReturn:
    """End the command with a one-line error on stderr (no traceback)."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def emit_json(payload: Any) -> None:
    """Print ``payload`` as JSON on stdout (for scripts)."""
    sys.stdout.write(json.dumps(payload, indent=2, default=str) + "\n")


@contextmanager
def domain_errors() -> Iterator[None]:
    """Turn the errors a user can cause into one-line messages (exit 1)."""
    from her2ops.platform.errors import Her2opsError, ImportRejected

    try:
        yield
    except ImportRejected as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    except (Her2opsError, ValueError) as exc:
        fail(str(exc))


@contextmanager
def db_session() -> Iterator[Any]:
    """A session on the configured database, migrated if it is the embedded SQLite default."""
    from her2ops.config import get_settings
    from her2ops.platform import migrate
    from her2ops.platform.db import session_scope

    settings = get_settings()
    url = settings.resolved_database_url
    with domain_errors():
        if url.startswith("sqlite"):
            migrate.ensure_current(url)
        else:
            rev = migrate.current(url)
            if rev != migrate.head():
                fail(
                    f"database at HER2OPS_DATABASE_URL is at revision {rev or 'none'}, the code "
                    f"expects {migrate.head()}: run 'her2ops db upgrade'"
                )
        with session_scope(url) as session:
            yield session


def ensure_database() -> None:
    """Check (and for the embedded SQLite default, migrate) the database before long work."""
    with db_session():
        pass
