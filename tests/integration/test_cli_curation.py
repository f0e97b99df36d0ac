"""The curation CLI end to end through Typer's CliRunner (both dialects)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from her2ops.cli import app
from her2ops.config import get_settings
from tests.factories import insert_labelled_cores, make_manifest, write_csv

runner = CliRunner()
PASSWORDS = {"boss": "boss-password-1", "lm": "lm-password-12", "p1": "p1-password-123"}


@pytest.fixture(autouse=True)
def _token_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Credentials are required on both dialects here; the token file lives in tmp_path."""
    monkeypatch.setenv("HER2OPS_TOKEN_FILE", str(tmp_path / "token"))
    monkeypatch.setenv("HER2OPS_REQUIRE_CREDENTIALS", "true")
    get_settings.cache_clear()


def run(*args: str, ok: bool = True, token: str | None = None, stdin: str | None = None) -> str:
    env = {"HER2OPS_TOKEN": token} if token else None
    result = runner.invoke(app, list(args), env=env, input=stdin)
    if ok:
        assert result.exit_code == 0, result.output + str(result.exception)
    else:
        assert result.exit_code == 1, result.output
    return result.output


def token_of(user: str) -> str:
    """Log ``user`` in (password on stdin) and return the personal token from the token file."""
    run("login", user, "--password-stdin", stdin=PASSWORDS[user] + "\n")
    return str(json.loads(Path(get_settings().resolved_token_file).read_text())["token"])


def add_user(name: str, role: str, admin_token: str | None) -> None:
    args = ["users", "add", name, "--role", role]
    if name in PASSWORDS:
        args.append("--password-stdin")
    if admin_token:
        args = ["--as", "boss", *args]
    run(*args, token=admin_token, stdin=PASSWORDS.get(name, "") + "\n")


def test_full_curation_flow(db_url: str, tmp_path: Path) -> None:
    add_user("boss", "admin", None)
    boss = token_of("boss")
    add_user("lm", "lab_manager", boss)
    for p in ("p1", "p2", "p3"):
        add_user(p, "pathologist", boss)
    lm, p1 = token_of("lm"), token_of("p1")
    manifest = make_manifest(tmp_path / "m", 8)
    out = json.loads(run("--as", "lm", "ingest", str(manifest), "--json", token=lm))
    assert out["added"] == 8
    rows = [
        (f"C{i:05d}", p, str((i + (j == 2)) % 4))
        for i in range(8)
        for j, p in enumerate(("p1", "p2", "p3"))
    ]
    votes = write_csv(tmp_path / "v.csv", ("core", "pathologist", "score"), rows)
    assert "imported 24 vote(s)" in run("--as", "lm", "votes", "import", str(votes), token=lm)
    assert "24 already recorded" in run("--as", "lm", "votes", "import", str(votes), token=lm)
    cons = json.loads(run("--as", "lm", "consensus", "--json", token=lm))
    assert cons["by_status"] == {"agreed": 8}
    split = json.loads(run("--as", "lm", "split", "create", "s", "--seed", "3", "--json", token=lm))
    assert split["patients"] == 4
    stats = json.loads(run("--as", "lm", "stats", "--json", token=lm))
    assert stats["n_labelled"] == 8 and stats["fleiss"]["n_raters"] == 3
    assert stats["agreement_with_consensus"]["p1"]["rate"] == 1.0
    text = run("--as", "lm", "labels", "export", "--split", "s", token=lm)
    assert text.splitlines()[0] == "core,patient,partition,score,status,votes,agreement"
    assert len(text.splitlines()) == 9
    exported = json.loads(run("--as", "lm", "labels", "export", "--format", "json", token=lm))
    assert exported[0]["votes"] == "p1:0;p2:0;p3:1+"
    # a pathologist sees the consensus and their own votes only (blinded review)
    mine = json.loads(run("--as", "p1", "labels", "export", "--format", "json", token=p1))
    assert mine[0]["votes"] == "p1:0" and mine[0]["score"] == "0"
    assert "v1 agreed" in run("--as", "p1", "labels", "history", "C00000", token=p1)
    # a name without its credential, or with another user's, acts as nobody
    out = run("--as", "lm", "stats", "--json", ok=False)
    assert "needs that user's credential" in out
    out = run("--as", "boss", "users", "add", "mallory", "--role", "admin", token=lm, ok=False)
    assert "needs that user's credential" in out
    assert "mallory" not in run("--as", "boss", "users", "list", token=boss)


def test_errors_are_one_line(db_url: str, tmp_path: Path) -> None:
    add_user("boss", "admin", None)
    boss = token_of("boss")
    out = run("--as", "nobody", "ingest", str(tmp_path / "none.csv"), ok=False, token=boss)
    assert "acting as 'nobody' needs that user's credential" in out and "Traceback" not in out
    out = run("--as", "boss", "ingest", str(tmp_path / "none.csv"), ok=False, token=boss)
    assert "file not found" in out
    out = run(
        "--as",
        "boss",
        "split",
        "create",
        "x",
        "--seed",
        "1",
        "--ratios",
        "0.5,0.6",
        ok=False,
        token=boss,
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
    assert "current: 0" in run("db", "current")
    out = run("users", "add", "boss", "--role", "admin", ok=False)
    assert "the first user needs a password here" in out
    add_user("boss", "admin", None)
    boss = token_of("boss")
    add_user("lm", "lab_manager", boss)
    lm = token_of("lm")
    # destructive: an admin, with --yes, and on PostgreSQL --i-know-this-deletes-data as well
    # without --as the token file's user acts (lm logged in last)
    out = run("db", "downgrade", "base", "--yes", ok=False)
    assert "user 'lm' (role lab_manager) may not db.downgrade" in out
    Path(get_settings().resolved_token_file).unlink()
    out = run("db", "downgrade", "base", "--yes", ok=False)
    assert "no acting user" in out
    out = run("--as", "lm", "db", "downgrade", "base", "--yes", token=lm, ok=False)
    assert "may not db.downgrade" in out
    out = run("--as", "boss", "db", "downgrade", "base", token=boss, ok=False)
    assert "pass --yes" in out
    assert "current: 0" in run("db", "current")
    if blank_db_url.startswith("postgresql"):
        out = run("--as", "boss", "db", "downgrade", "base", "--yes", token=boss, ok=False)
        assert "--i-know-this-deletes-data" in out
        assert "current: 0" in run("db", "current")
    run(
        "--as",
        "boss",
        "db",
        "downgrade",
        "base",
        "--yes",
        "--i-know-this-deletes-data",
        token=boss,
    )
    assert "current: none" in run("db", "current")


def test_split_extend_reports_the_test_partition(db_url: str) -> None:
    """`split extend` says where the newcomers went and the test partition's cores per class
    afterwards, and whether that partition is kept class-balanced (a --balanced-test split)."""
    add_user("boss", "admin", None)
    boss = token_of("boss")
    add_user("lm", "lab_manager", boss)
    lm = token_of("lm")
    insert_labelled_cores(120, seed=3)
    created = run("--as", "lm", "split", "create", "b", "--seed", "5", "--balanced-test", token=lm)
    assert created.startswith("split b (seed 5, class-balanced test, not frozen): 120 patients")
    insert_labelled_cores(60, seed=4, first=120)
    text = run("--as", "lm", "split", "extend", "b", token=lm)
    info = json.loads(run("--as", "lm", "split", "show", "b", "--json", token=lm))
    assert info["balanced_test"] is True
    test = info["class_counts"]["test"]
    line = "  ".join(f"{c}: {n}" for c, n in test.items())
    assert f"test partition (class-balanced), labelled cores per class: {line}" in text
    assert text.startswith("added 60 patient(s) (")
    again = json.loads(run("--as", "lm", "split", "extend", "b", "--json", token=lm))
    assert again["added"] == 0 and again["added_by_partition"] == {}
    assert again["class_counts"]["test"] == test and again["balanced_test"] is True
