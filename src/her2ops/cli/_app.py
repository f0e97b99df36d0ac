"""The Typer application object and the helpers every command module shares.

A command parses its arguments, calls ONE application-layer function (``her2ops.pipelines``)
through :func:`call` and renders the result. ``call`` maps the errors a user can cause
(:class:`her2ops.errors.Her2opsError`) to one line on stderr and exit code 1; anything else is a
bug: one line naming the exception and a log file holding the traceback, exit code 3.
"""

from __future__ import annotations

import json
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import typer

app = typer.Typer(
    name="her2ops",
    help="her2ops: HER2 IHC scoring of TMA cores, and the platform around it.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

T = TypeVar("T")
BUG_EXIT = 3
_STATE: dict[str, Any] = {"actor": None}

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]


@app.callback()
def _global(
    as_user: Annotated[
        str | None,
        typer.Option("--as", envvar="HER2OPS_USER", help="Act as this user (roles are checked)."),
    ] = None,
) -> None:
    """her2ops: HER2 IHC scoring of TMA cores, and the platform around it."""
    from her2ops.config import get_settings

    call(get_settings)  # every setting is checked at start-up: one line naming a bad one
    _STATE["actor"] = as_user
    _STATE.pop("authenticated", None)


def actor() -> str | None:
    """The acting user: ``--as`` or ``HER2OPS_USER``, else the ``her2ops login`` token's user;
    outside the embedded SQLite default, only with that user's credential (checked once)."""
    from her2ops.pipelines.admin import authenticated_actor

    if "authenticated" not in _STATE:
        _STATE["authenticated"] = call(authenticated_actor, named=_STATE["actor"])
    return _STATE["authenticated"]


def fail(message: str, code: int = 1) -> NoReturn:
    """End the command with a one-line error on stderr (no traceback)."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def emit_json(payload: Any) -> None:
    """Print ``payload`` as JSON on stdout (for scripts)."""
    sys.stdout.write(json.dumps(payload, indent=2, default=str) + "\n")


def _report_bug(exc: BaseException) -> NoReturn:
    """A non-user error: name it in one line and keep the traceback in a log file."""
    text = "".join(traceback.format_exception(exc))
    where: Path | None = None
    try:
        from her2ops.config import get_settings

        logs = get_settings().data_dir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        where = logs / f"crash-{time.strftime('%Y%m%d-%H%M%S')}.log"
        where.write_text(text)
    except Exception:
        where = None
    first = str(exc).splitlines()[0] if str(exc) else ""
    typer.echo(
        f"internal error (a bug in her2ops, not in your input): {type(exc).__name__}: {first}",
        err=True,
    )
    if where is not None:
        typer.echo(f"traceback: {where}", err=True)
    else:
        typer.echo(text, err=True)
    raise typer.Exit(BUG_EXIT)


def call(fn: Callable[..., T], /, **kwargs: Any) -> T:
    """Run one use case; user errors end the command in one line, bugs are reported as bugs."""
    from her2ops.errors import Her2opsError

    try:
        return fn(**kwargs)
    except Her2opsError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    except (typer.Exit, KeyboardInterrupt, SystemExit):
        raise
    except Exception as exc:
        _report_bug(exc)


class BarProgress:
    """Renders the progress protocol as tqdm bars on stderr: one bar per phase (message)."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self._bar: Any = None
        self._message: str | None = None

    def __call__(self, done: int, total: int | None, message: str) -> None:
        if not self.enabled:
            return
        from tqdm import tqdm

        if message != self._message or self._bar is None:
            self.close()
            self._message = message
            self._bar = tqdm(total=total, desc=message, file=sys.stderr)
        if total is not None and self._bar.total != total:
            self._bar.total = total
        if done > self._bar.n:
            self._bar.update(done - self._bar.n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> BarProgress:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def print_row_errors(title: str, errors: list[Any]) -> None:
    if errors:
        typer.echo(f"{title}: {len(errors)} row(s) skipped", err=True)
        for e in errors:
            typer.echo(f"  {e}", err=True)
