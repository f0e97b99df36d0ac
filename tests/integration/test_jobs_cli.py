"""The jobs CLI on the embedded defaults: SQLite under the data dir, the broker under it too,
and a real ``her2ops worker`` subprocess (started the way the demo starts it).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

import her2ops
from her2ops.cli import app
from her2ops.cli.jobs import background_worker
from her2ops.config import get_settings
from her2ops.platform import migrate
from tests.factories import seed_users

SRC = Path(her2ops.__file__).resolve().parents[1]


@pytest.fixture
def embedded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HER2OPS_JOBS_SELFTEST", "1")
    monkeypatch.setenv("HER2OPS_JOB_LEASE_SECONDS", "2")
    monkeypatch.setenv("HER2OPS_DISPATCHER_INTERVAL_SECONDS", "0.5")
    monkeypatch.setenv("PYTHONPATH", str(SRC))  # the worker subprocess runs this code
    get_settings.cache_clear()
    assert get_settings().database_url is None and get_settings().broker_url is None
    migrate.upgrade()
    seed_users()


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, ["--as", "eng", *args])
    return result.exit_code, result.stdout, result.stderr


@pytest.mark.slow
def test_jobs_cli_with_a_real_worker_on_the_embedded_defaults(
    embedded: None, tmp_path: Path
) -> None:
    code, _, err = run("jobs", "submit", "nope")
    assert code == 1 and err.strip() == "error: unknown job kind 'nope'; known: train, " + (
        "score, evaluate, ensemble, retrain, study, flags, selftest"
    )
    code, _, err = run("jobs", "submit", "selftest", "--param", "mode")
    assert code == 1 and "expected NAME=VALUE" in err

    with background_worker(log=tmp_path / "worker.log"):
        code, out, err = run(
            "jobs", "submit", "selftest", "-p", "mode=sleep", "-p", "seconds=0.5",
            "--wait", "--json", "--timeout", "120",
        )  # fmt: skip
        assert code == 0, err
        view = json.loads(out)
        assert view["status"] == "succeeded" and view["result"]["mode"] == "sleep"
        assert view["seconds"] >= 0.5

        code, out, err = run(
            "jobs", "submit", "selftest", "-p", "mode=raise", "--max-attempts", "1", "--wait"
        )
        assert code == 1 and "RuntimeError: selftest: raised as asked" in err
        failed_id = int(out.split()[1])
        code, out, _ = run("jobs", "retry", str(failed_id))
        assert code == 0 and out.strip() == f"job {failed_id} queued again"
        code, out, _ = run("jobs", "wait", str(failed_id), "--json", "--timeout", "120")
        assert code == 1 and json.loads(out)["status"] == "failed"

    code, out, _ = run("jobs", "list", "--json")
    assert code == 0 and [v["status"] for v in json.loads(out)] == ["failed", "succeeded"]
    code, out, _ = run("jobs", "show", str(failed_id))
    assert code == 0 and "traceback:" in out and "attempt 1/1" in out
    assert "  worker: " in out  # which worker failed it
    code, out, _ = run("jobs", "show", str(view["id"]))  # params and result, a line per entry
    assert code == 0 and "  params:\n    mode: sleep\n    seconds: 0.5\n" in out, out
    assert "  result:\n    mode: sleep\n" in out, out
    code, out, _ = run("jobs", "list", "--status", "bogus")
    assert code == 1
    code, _, err = run("jobs", "cancel", str(failed_id))
    assert code == 1 and err.strip() == f"error: job {failed_id} is already failed"
    assert (Path(os.environ["HER2OPS_DATA_DIR"]) / "broker.sqlite").exists()
