"""Background work: ``her2ops worker``, ``her2ops dispatcher`` and ``her2ops jobs ...``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Annotated, Any

import typer

from her2ops.cli._app import actor, app, call, emit_json, fail

jobs_app = typer.Typer(help="Background jobs (the jobs table).", no_args_is_help=True)
app.add_typer(jobs_app, name="jobs")

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
JobId = Annotated[int, typer.Argument(help="Job id.")]


def _parse_params(items: list[str] | None) -> dict[str, str]:
    params: dict[str, str] = {}
    for item in items or []:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            fail(f"--param {item!r}: expected NAME=VALUE")
        if name.strip() in params:
            fail(f"--param {name.strip()} given twice")
        params[name.strip()] = value.strip()
    return params


def _progress_text(view: dict[str, Any]) -> str:
    p = view["progress"]
    if p["done"] is None:
        return ""
    total = f"/{p['total']}" if p["total"] is not None else ""
    return f"{p['message'] or ''} {p['done']}{total}".strip()


def _line(view: dict[str, Any]) -> str:
    parts = [
        f"job {view['id']}",
        view["kind"],
        view["status"],
        f"attempt {view['attempts']}/{view['max_attempts']}",
    ]
    if view["status"] == "running" and view["worker"]:
        parts.append(f"on {view['worker']}")
    progress = _progress_text(view)
    if progress and view["status"] == "running":
        parts.append(progress)
    if view["error"]:
        parts.append(f"error: {view['error']}")
    return "  ".join(parts)


def _mapping(name: str, value: Any) -> None:
    """``name:`` then one ``key: value`` line per entry (nested values as compact JSON), so a
    result reads as a table; ``--json`` gives the structure itself."""
    if not isinstance(value, dict) or not value:
        typer.echo(f"  {name}: {value}")
        return
    typer.echo(f"  {name}:")
    for key, item in value.items():
        text = (
            json.dumps(item, default=str, separators=(", ", ": "))
            if isinstance(item, dict | list)
            else item
        )
        typer.echo(f"    {key}: {text}")


def _show(view: dict[str, Any]) -> None:
    typer.echo(_line(view))
    for name in ("queue", "worker", "key", "created_by", "created_at", "started_at", "finished_at"):
        if view.get(name) is not None:
            typer.echo(f"  {name}: {view[name]}")
    if view["seconds"] is not None:
        typer.echo(f"  seconds: {view['seconds']:.1f}")
    _mapping("params", view["params"])
    if view["result"] is not None:
        _mapping("result", view["result"])
    if view["error_detail"]:
        typer.echo("  traceback:\n" + view["error_detail"].rstrip())


def _wait(job_id: int, timeout: float | None, json_out: bool) -> None:
    from her2ops.pipelines.jobs import show_job
    from her2ops.platform.jobs import DONE

    deadline = None if timeout is None else time.monotonic() + timeout
    last, last_status, printed_at = "", "", 0.0
    # In a log (not a terminal) progress lines are thinned: a line when the status changes,
    # else at most one every 15 s.
    thin = not sys.stderr.isatty()
    while True:
        view = call(show_job, actor=actor(), job_id=job_id)
        line = _line(view)
        now = time.monotonic()
        due = not thin or view["status"] != last_status or now - printed_at >= 15
        if not json_out and line != last and due:
            typer.echo(line, err=True)
            last, last_status, printed_at = line, view["status"], now
        if view["status"] in DONE:
            break
        if deadline is not None and time.monotonic() >= deadline:
            if json_out:
                emit_json(view)
            fail(f"job {job_id} is still {view['status']} after {timeout:g} s", code=2)
        time.sleep(0.5)
    if json_out:
        emit_json(view)
    elif view["status"] == "succeeded":
        _mapping("result", view["result"])
    if view["status"] != "succeeded":
        raise typer.Exit(1)


def submit_in_background(kind: str, params: dict[str, Any], *, json_out: bool) -> None:
    """For a foreground command's ``--background``: submit the same work as a job and say so."""
    from her2ops.pipelines.jobs import submit_job

    view = call(
        submit_job,
        actor=actor(),
        kind=kind,
        params={k: v for k, v in params.items() if v is not None},
    )
    if json_out:
        emit_json(view)
        return
    what = "submitted" if view["created"] else "already submitted"
    typer.echo(f"job {view['id']} ({kind}) {what}; follow it with: her2ops jobs wait {view['id']}")


@contextmanager
def background_worker(*, queues: str = "gpu,cpu", log: Path | None = None) -> Iterator[None]:
    """Run a real ``her2ops worker`` subprocess for the duration of the block (the demo)."""
    out = log.open("ab") if log else subprocess.DEVNULL
    proc = subprocess.Popen(
        [sys.executable, "-m", "her2ops", "worker", "--queues", queues],
        stdout=out,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        yield
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            with suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        if log:
            out.close()  # type: ignore[union-attr]


def run_as_job(kind: str, params: dict[str, Any], *, timeout: float | None = None) -> Any:
    """Submit a job, wait for it, return its result; a failed job ends the command."""
    from her2ops.pipelines.jobs import submit_job, wait_job

    view = call(submit_job, actor=actor(), kind=kind, params=params)
    view = call(wait_job, actor=actor(), job_id=view["id"], timeout=timeout)
    if view["status"] != "succeeded":
        fail(f"job {view['id']} ({kind}) {view['status']}: {view['error'] or 'timed out'}")
    return view["result"]


@jobs_app.command("submit")
def submit(
    kind: Annotated[str, typer.Argument(help="train, score, evaluate, ensemble.")],
    param: Annotated[
        list[str] | None,
        typer.Option("--param", "-p", help="NAME=VALUE (repeatable); lists comma-separated."),
    ] = None,
    key: Annotated[
        str | None, typer.Option(help="Idempotency key (default: kind + parameters).")
    ] = None,
    max_attempts: Annotated[int | None, typer.Option(help="Attempts before failing.")] = None,
    wait: Annotated[bool, typer.Option("--wait", help="Wait until the job ends.")] = False,
    timeout: Annotated[float | None, typer.Option(help="With --wait: give up after S.")] = None,
    json_out: JsonOpt = False,
) -> None:
    """Submit a job (checked now; runs on a worker). The same work twice gives the same job."""
    from her2ops.pipelines.jobs import submit_job

    view = call(
        submit_job,
        actor=actor(),
        kind=kind,
        params=_parse_params(param),
        key=key,
        max_attempts=max_attempts,
    )
    if wait:
        if not json_out:
            typer.echo(f"job {view['id']} {'submitted' if view['created'] else 'exists'}")
        _wait(view["id"], timeout, json_out)
        return
    if json_out:
        emit_json(view)
        return
    what = "submitted" if view["created"] else "already submitted"
    typer.echo(f"job {view['id']} ({view['kind']}, queue {view['queue']}) {what}: {view['status']}")


@jobs_app.command("list")
def list_(
    status: Annotated[
        list[str] | None, typer.Option("--status", help="queued, running, ... (repeatable).")
    ] = None,
    kind: Annotated[str | None, typer.Option(help="Only this kind.")] = None,
    limit: Annotated[int, typer.Option(help="Newest N.")] = 50,
    json_out: JsonOpt = False,
) -> None:
    """Jobs, newest first."""
    from her2ops.pipelines.jobs import list_jobs

    views = call(list_jobs, actor=actor(), status=status, kind=kind, limit=limit)
    if json_out:
        emit_json(views)
        return
    for view in views:
        typer.echo(_line(view))


@jobs_app.command("show")
def show(job_id: JobId, json_out: JsonOpt = False) -> None:
    """One job: status, progress, attempts, worker, timings, result or error."""
    from her2ops.pipelines.jobs import show_job

    view = call(show_job, actor=actor(), job_id=job_id)
    if json_out:
        emit_json(view)
    else:
        _show(view)


@jobs_app.command("cancel")
def cancel(job_id: JobId, json_out: JsonOpt = False) -> None:
    """Cancel a queued job, or ask a running one to stop at its next progress report."""
    from her2ops.pipelines.jobs import cancel_job

    view = call(cancel_job, actor=actor(), job_id=job_id)
    if json_out:
        emit_json(view)
    elif view["status"] == "cancelled":
        typer.echo(f"job {job_id} cancelled")
    else:
        typer.echo(f"job {job_id} is {view['status']}: asked its worker to stop")


@jobs_app.command("retry")
def retry(job_id: JobId, json_out: JsonOpt = False) -> None:
    """Queue a failed job again with fresh attempts."""
    from her2ops.pipelines.jobs import retry_job

    view = call(retry_job, actor=actor(), job_id=job_id)
    if json_out:
        emit_json(view)
    else:
        typer.echo(f"job {job_id} queued again")


@jobs_app.command("wait")
def wait_cmd(
    job_id: JobId,
    timeout: Annotated[float | None, typer.Option(help="Give up after S seconds (exit 2).")] = None,
    json_out: JsonOpt = False,
) -> None:
    """Wait for a job to end; exit 0 if it succeeded, 1 if it failed or was cancelled."""
    _wait(job_id, timeout, json_out)


@app.command("worker")
def worker(
    queues: Annotated[str, typer.Option(help="Comma-separated queues: gpu, cpu.")] = "gpu,cpu",
    concurrency: Annotated[int, typer.Option(help="Jobs at a time (processes).")] = 1,
    name: Annotated[str | None, typer.Option(help="Worker name (default her2ops-PID@host).")] = (
        None
    ),
    pool: Annotated[str, typer.Option(help="Celery pool: prefork, solo or threads.")] = "prefork",
    dispatcher: Annotated[
        bool, typer.Option(help="Also run a dispatcher process beside the worker.")
    ] = True,
    loglevel: Annotated[str, typer.Option(help="Log level.")] = "INFO",
) -> None:
    """Start a Celery worker on the configured broker (HER2OPS_BROKER_URL)."""
    from her2ops.platform.broker import QUEUES

    chosen = [q.strip() for q in queues.split(",") if q.strip()]
    bad = [q for q in chosen if q not in QUEUES]
    if bad or not chosen:
        fail(f"unknown queue(s) {', '.join(bad) or '(none)'}; use {', '.join(QUEUES)}")
    if concurrency < 1:
        fail("--concurrency must be at least 1")
    if pool not in ("prefork", "solo", "threads"):
        fail(f"unknown pool {pool!r}; use prefork, solo or threads")
    from her2ops.pipelines.runtime import get_runtime

    call(get_runtime().check_database)  # migrate the embedded default, refuse a stale schema
    from her2ops.workers.celery_app import app as celery

    helper = None
    if dispatcher:
        helper = subprocess.Popen(
            [sys.executable, "-m", "her2ops", "dispatcher", "--exit-with", str(os.getpid())]
        )
    try:
        celery.worker_main(
            [
                "worker",
                f"--queues={','.join(chosen)}",
                f"--concurrency={concurrency}",
                f"--pool={pool}",
                f"--hostname={name or f'her2ops-{os.getpid()}@%h'}",
                f"--loglevel={loglevel}",
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
            ]
        )
    finally:
        if helper is not None:
            helper.terminate()
            try:
                helper.wait(timeout=10)
            except subprocess.TimeoutExpired:
                helper.kill()


@app.command("dispatcher")
def dispatcher_cmd(
    interval: Annotated[
        float | None,
        typer.Option(help="Seconds between rounds (default HER2OPS_DISPATCHER_INTERVAL_SECONDS)."),
    ] = None,
    once: Annotated[bool, typer.Option("--once", help="One round, then exit.")] = False,
    exit_with: Annotated[int | None, typer.Option(hidden=True)] = None,
) -> None:
    """Expire lost workers' leases and send queued jobs' messages (runs until stopped)."""
    import logging

    from her2ops.pipelines.runtime import get_runtime
    from her2ops.workers.dispatcher import run_dispatcher

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    call(get_runtime().check_database)
    run_dispatcher(interval=interval, exit_with=exit_with, once=once)
