"""CLI command ``her2ops stack up``: the docker-compose services as local processes."""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import Annotated

import typer

from her2ops.cli._app import app, call

stack_app = typer.Typer(help="The deployed stack as local processes (no Docker).")
app.add_typer(stack_app, name="stack")


@stack_app.command("up")
def stack_up(
    mlflow_backend: Annotated[
        str | None,
        typer.Option(help="MLflow backend store (default: the settings' local MLflow store)."),
    ] = None,
    artifacts: Annotated[
        Path | None, typer.Option(help="MLflow artefact folder (default DATA_DIR/mlartifacts).")
    ] = None,
    mlflow_port: Annotated[int, typer.Option(help="Port of mlflow server.")] = 5000,
    dashboard_port: Annotated[int, typer.Option(help="Port of the dashboard.")] = 8501,
    dashboard: Annotated[bool, typer.Option(help="Also run the dashboard.")] = True,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for health.")] = 180.0,
) -> None:
    """Start mlflow server, a gpu- and a cpu-queue worker, the dispatcher and the dashboard on
    this command's settings (HER2OPS_DATABASE_URL, HER2OPS_BROKER_URL, ...), wait until each is
    healthy, run until Ctrl-C or SIGTERM, then stop them all."""
    from her2ops.pipelines.stack import LocalStack

    stack = call(
        LocalStack,
        mlflow_backend=mlflow_backend,
        artifacts=artifacts,
        mlflow_port=mlflow_port,
        dashboard_port=dashboard_port,
        dashboard=dashboard,
    )
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stack.start()
    try:
        call(stack.wait_healthy, timeout=timeout)
        typer.echo(f"stack healthy: mlflow {stack.mlflow_url}", err=True)
        if stack.dashboard_url:
            typer.echo(f"  dashboard {stack.dashboard_url}", err=True)
        typer.echo(f"  logs in {stack.logs}; Ctrl-C stops everything", err=True)
        stop.wait()
    finally:
        codes = stack.stop()
        typer.echo("stopped: " + ", ".join(f"{k} ({v})" for k, v in codes.items()), err=True)
