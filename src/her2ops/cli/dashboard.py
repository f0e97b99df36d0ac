"""CLI command ``her2ops dashboard``: run the Streamlit dashboards on the CLI's settings."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from her2ops.cli._app import app, call
from her2ops.config import get_settings
from her2ops.pipelines.dashboard_queries import dashboard_ready

APP_SCRIPT = Path(__file__).resolve().parent.parent / "dashboards" / "app.py"


def streamlit_argv(port: int, host: str) -> list[str]:
    """The ``streamlit run`` command line of the dashboards (XSRF protection on, no telemetry)."""
    return [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        str(APP_SCRIPT),
        "--server.port",
        str(port),
        "--server.address",
        host,
        "--server.headless",
        "true",
        "--server.enableXsrfProtection",
        "true",
        "--server.enableCORS",
        "true",
        "--browser.gatherUsageStats",
        "false",
        "--client.toolbarMode",
        "viewer",
        "--global.developmentMode",
        "false",
    ]


@app.command("dashboard")
def dashboard_cmd(
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8501,
    host: Annotated[str, typer.Option(help="Address to bind (0.0.0.0 for every interface).")] = (
        "127.0.0.1"
    ),
) -> None:
    """Run the dashboards (Streamlit) on this command's settings (HER2OPS_*): log in with a
    user's password; each role sees its pages."""
    if not 1 <= port <= 65535:
        typer.echo(f"error: --port must be in 1..65535, not {port}", err=True)
        raise typer.Exit(1)
    ready = call(dashboard_ready)
    if ready["users_with_password"] == 0:
        typer.echo(
            "warning: no active user has a password yet, so nobody can log in "
            "(set one with 'her2ops users passwd NAME')",
            err=True,
        )
    typer.echo(f"her2ops dashboards on http://{host}:{port}", err=True)
    argv = streamlit_argv(port, host)
    secret = get_settings().dashboard_cookie_secret
    if secret is not None:  # passed by environment, never on the command line (ps shows argv)
        os.environ["STREAMLIT_SERVER_COOKIE_SECRET"] = secret.get_secret_value()
    sys.stdout.flush()
    sys.stderr.flush()
    # Replace this process, so that stopping it (Ctrl-C, SIGTERM to its pid) stops the server.
    os.execv(argv[0], argv)
