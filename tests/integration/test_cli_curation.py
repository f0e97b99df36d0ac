"""The curation CLI end to end through Typer's CliRunner (both dialects)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from her2ops.cli import app
from her2ops.config import get_settings
from tests.factories import make_manifest, write_csv

runner = CliRunner()


def run(*args: str, ok: bool = True) -> str:
    result = runner.invoke(app, list(args))
    if ok:
        assert result.exit_code == 0, result.output + str(result.exception)
    else:
        assert result.exit_code == 1, result.output
    return result.output


def test_full_curation_flow(db_url: str, tmp_path: Path) -> None:
    run("users", "add", "boss", "--role", "admin")
    run("--as", "boss", "users", "add", "lm", "--role", "lab_manager")
    for p in ("p1", "p2", "p3"):
        run("--as", "boss", "users", "add", p)
    manifest = make_manifest(tmp_path / "m", 8)
    out = json.loads(run("--as", "lm", "ingest", str(manifest), "--json"))
    assert out["added"] == 8
    rows = [
        (f"C{i:05d}", p, str((i + (j == 2)) % 4))
        for i in range(8)
        for j, p in enumerate(("p1", "p2", "p3"))
    ]
    votes = write_csv(tmp_path / "v.csv", ("core", "pathologist", "score"), rows)
    assert "imported 24 vote(s)" in run("--as", "lm", "votes", "import", str(votes))
    assert "24 already recorded" in run("--as", "lm", "votes", "import", str(votes))
    cons = json.loads(run("--as", "lm", "consensus", "--json"))
    assert cons["by_status"] == {"agreed": 8}
    split = json.loads(run("--as", "lm", "split", "create", "s", "--seed", "3", "--json"))
    assert split["patients"] == 4
    stats = json.loads(run("stats", "--json"))
    assert stats["n_labelled"] == 8 and stats["fleiss"]["n_raters"] == 3
    assert stats["agreement_with_consensus"]["p1"]["rate"] == 1.0
    text = run("labels", "export", "--split", "s")
    assert text.splitlines()[0] == "core,patient,partition,score,status,votes,agreement"
    assert len(text.splitlines()) == 9
    exported = json.loads(run("labels", "export", "--format", "json"))
    assert exported[0]["votes"] == "p1:0;p2:0;p3:1+"
    assert "v1 agreed" in run("labels", "history", "C00000")


def test_errors_are_one_line(db_url: str, tmp_path: Path) -> None:
    run("users", "add", "boss", "--role", "admin")
    out = run("--as", "nobody", "ingest", str(tmp_path / "none.csv"), ok=False)
    assert "unknown user 'nobody'" in out and "Traceback" not in out
    out = run("--as", "boss", "ingest", str(tmp_path / "none.csv"), ok=False)
    assert "file not found" in out
    out = run(
        "--as", "boss", "split", "create", "x", "--seed", "1", "--ratios", "0.5,0.6", ok=False
    )
    assert "error:" in out


def test_bad_database_url_names_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HER2OPS_DATABASE_URL", "not a url")
    get_settings.cache_clear()
    out = run("stats", ok=False)
    assert "HER2OPS_DATABASE_URL" in out and len(out.strip().splitlines()) == 1
    monkeypatch.setenv(
        "HER2OPS_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:1/none?connect_timeout=2"
    )
    get_settings.cache_clear()
    out = run("stats", ok=False)
    assert "cannot reach the database at HER2OPS_DATABASE_URL" in out
    assert len(out.strip().splitlines()) == 1


def test_db_commands(blank_db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HER2OPS_DATABASE_URL", blank_db_url)
    get_settings.cache_clear()
    assert "current: none" in run("db", "current")
    run("db", "upgrade")
    assert "current: 0001" in run("db", "current") or "current: 0" in run("db", "current")
    run("db", "downgrade", "base")
    assert "current: none" in run("db", "current")
