"""The hardening issue's classes on both dialects: reads with roles, silent acceptance refused
by name (identically on SQLite and PostgreSQL), spreadsheet formula injection, credentials and
guarded destructive commands."""

from __future__ import annotations

import csv
import io
import stat
from pathlib import Path

import pytest
from sqlalchemy import func, select
from typer.testing import CliRunner

from her2ops.cli import app
from her2ops.config import get_settings
from her2ops.pipelines import admin
from her2ops.platform import auth, migrate
from her2ops.platform.consensus import apply_consensus
from her2ops.platform.curation import add_user, ingest_manifest
from her2ops.platform.db import session_scope
from her2ops.platform.errors import (
    Conflict,
    ImportRejected,
    InvalidRequest,
    NotFound,
    PermissionDenied,
)
from her2ops.platform.labels import export_csv, export_rows, history, stats_summary
from her2ops.platform.schema import Core, User, Vote
from her2ops.platform.votes import cast_vote, import_votes
from tests.factories import make_manifest, seed_users, store, write_csv


def _curated(tmp_path: Path, n: int = 4) -> None:
    seed_users(3)
    with session_scope() as s:
        ingest_manifest(
            s,
            actor="lm",
            manifest=make_manifest(tmp_path / "m", n),
            store=store(),
            max_pixels=10**6,
        )
    rows = [(f"C{i:05d}", p, "2+") for i in range(n) for p in ("p1", "p2", "p3")]
    with session_scope() as s:
        import_votes(
            s,
            actor="lm",
            path=write_csv(tmp_path / "v.csv", ("core", "pathologist", "score"), rows),
        )
        apply_consensus(s, actor="lm")


def _rejected(path: Path, **kwargs: object) -> list[str]:
    with pytest.raises(ImportRejected) as info, session_scope() as s:
        import_votes(s, actor="lm", path=path, **kwargs)  # type: ignore[arg-type]
    return [str(e) for e in info.value.errors]


# --- 5. reads with roles ----------------------------------------------------------------------


def test_reads_check_the_acting_user(db_url: str, tmp_path: Path) -> None:
    _curated(tmp_path)
    with session_scope() as s:
        everyone = export_rows(s, actor="lm")
        mine = export_rows(s, actor="p1")
        assert everyone[0]["votes"] == "p1:2+;p2:2+;p3:2+"
        assert mine[0]["votes"] == "p1:2+"  # blinded: not the other readers' votes
        assert mine[0]["score"] == everyone[0]["score"] == "2+"
        assert history(s, actor="p2", core="C00000")[0].status == "agreed"
        assert stats_summary(s, actor="eng")["n_cores"] == 4
        with pytest.raises(PermissionDenied, match=r"may not stats\.read"):
            stats_summary(s, actor="p1")
        with pytest.raises(NotFound, match="unknown user"):
            export_rows(s, actor="ghost")
        with pytest.raises(PermissionDenied, match="no acting user"):
            export_rows(s, actor=None)
    from her2ops.pipelines.models import list_models

    with pytest.raises(PermissionDenied, match="no acting user"):
        list_models(actor=None)
    assert list_models(actor="p1") == []


# --- 8. silent acceptance ---------------------------------------------------------------------


def test_csv_structure_is_never_dropped_silently(db_url: str, tmp_path: Path) -> None:
    _curated(tmp_path)
    dup = tmp_path / "dup.csv"
    dup.write_text("core,pathologist,score,score\nC00000,p1,1+,2+\n")
    assert "duplicated column(s) score" in _rejected(dup)[0]
    extra = tmp_path / "extra.csv"
    extra.write_text("core,pathologist,score\nC00000,p1,1+,oops\nC00001,p1,2+,,\n")
    errors = _rejected(extra)
    assert len(errors) == 1 and "line 2" in errors[0] and "'oops'" in errors[0]


def test_values_beyond_column_limits_are_refused_alike(db_url: str, tmp_path: Path) -> None:
    """Over-long codes, NUL bytes and huge integers: the same row errors on both dialects,
    before the database (PostgreSQL would raise a driver error, SQLite would store them)."""
    seed_users(1)
    make_manifest(tmp_path / "m", 5)
    rows = [
        ("P" * 65, "A1", "img/c0.png", "", ""),
        ("P1", "C" * 129, "img/c1.png", "", ""),
        ("P1", "A\x00B", "img/c2.png", "", ""),
        ("P1", "A3", "img/c3.png", str(2**63), ""),
        ("P1", "A\nforged", "img/c4.png", "", ""),
    ]
    manifest = write_csv(
        tmp_path / "m" / "bad.csv", ("patient", "core", "image", "row", "col"), rows
    )
    with pytest.raises(ImportRejected) as info, session_scope() as s:
        ingest_manifest(s, actor="lm", manifest=manifest, store=store(), max_pixels=10**6)
    reasons = [e.reason for e in info.value.errors]
    assert reasons == [
        "patient has 65 characters (at most 64)",
        "core has 129 characters (at most 128)",
        "contains a NUL byte",
        f"row '{2**63}' is not in 0..100,000",
        "core 'A\\nforged' contains control or line-break characters",
    ]
    with session_scope() as s:
        assert s.scalar(select(func.count()).select_from(Core)) == 0
        with pytest.raises(InvalidRequest, match="at most 2000"):
            cast_vote(s, actor="p1", core="x", score="1+", comment="c" * 2001)


def test_a_file_of_several_images_needs_its_page_chosen(db_url: str, tmp_path: Path) -> None:
    """A multi-page TIFF is refused by name and count; with a ``page`` column, that page is
    ingested (never silently page one); a bad page is a row error."""
    import numpy as np
    import tifffile

    seed_users(1)
    ramp = np.linspace(0, 60, 80, dtype=np.float32)[None, :, None]  # smooth: JPEG keeps it
    pages = [
        np.broadcast_to(np.array([40 + 80 * i, 200 - 70 * i, 120]) + ramp, (96, 80, 3)).astype(
            np.uint8
        )
        for i in range(3)
    ]
    with tifffile.TiffWriter(tmp_path / "stack.tif") as tw:
        for page in pages:
            tw.write(page, photometric="rgb", metadata=None)
    header = ("patient", "core", "image", "page")
    plain = write_csv(tmp_path / "plain.csv", header, [("P1", "S1", "stack.tif", "")])
    with pytest.raises(ImportRejected) as info, session_scope() as s:
        ingest_manifest(s, actor="lm", manifest=plain, store=store(), max_pixels=10**6)
    (error,) = info.value.errors
    assert "stack.tif: TIFF holds 3 pages" in error.reason and "page 0 to 2" in error.reason
    bad = write_csv(tmp_path / "bad.csv", header, [("P1", "S1", "stack.tif", "two")])
    with pytest.raises(ImportRejected, match="page 'two' is not an integer"), session_scope() as s:
        ingest_manifest(s, actor="lm", manifest=bad, store=store(), max_pixels=10**6)
    beyond = write_csv(tmp_path / "beyond.csv", header, [("P1", "S1", "stack.tif", "5")])
    with (
        pytest.raises(ImportRejected, match="page 5 asked, the TIFF holds 3"),
        session_scope() as s,
    ):
        ingest_manifest(s, actor="lm", manifest=beyond, store=store(), max_pixels=10**6)
    chosen = write_csv(tmp_path / "chosen.csv", header, [("P1", "S1", "stack.tif", "2")])
    with session_scope() as s:
        ingest_manifest(s, actor="lm", manifest=chosen, store=store(), max_pixels=10**6)
    with session_scope() as s:
        core = s.scalar(select(Core).where(Core.code == "S1"))
        assert core is not None and core.source_path.endswith("stack.tif [page 2]")
        assert core.page == 2
        sha = core.sha256
    img = store().open(sha, 2, core="S1")
    try:
        level0 = img.read_level(0).astype(int)
    finally:
        img.close()
    # the store keeps JPEG tiles (lossy, a few levels off): page 2, not page one
    diffs = [float(np.abs(level0 - p).mean()) for p in pages]
    assert diffs[2] < 3 < 50 < min(diffs[0], diffs[1]), diffs


def test_each_page_of_a_multi_page_file_is_a_core_of_its_own(db_url: str, tmp_path: Path) -> None:
    """Cores from different pages of one file are ingested side by side, each stored and
    sampled from its own page; the same page twice is refused by line, within the file and
    against the database; a re-run changes nothing."""
    import numpy as np
    import tifffile

    from her2ops.imaging.store import CoreStore
    from her2ops.pipelines.sampling import StoreSampler
    from her2ops.platform.predictions import cores_by_code
    from her2ops.profiles import get_profile

    seed_users(1)
    texture = np.random.default_rng(7).integers(-30, 30, (160, 144, 1))
    tints = [(200, 70, 70), (70, 200, 70), (70, 70, 200), (150, 150, 60)]
    pages = [np.clip(np.array(tint) + texture, 0, 255).astype(np.uint8) for tint in tints]
    with tifffile.TiffWriter(tmp_path / "stack.tif") as tw:
        for page in pages:
            tw.write(page, photometric="rgb", metadata=None)
    header = ("patient", "core", "image", "page")
    two = write_csv(
        tmp_path / "two.csv",
        header,
        [("P1", "S0", "stack.tif", "0"), ("P1", "S2", "stack.tif", "2")],
    )

    def ingest(manifest: Path) -> object:
        with session_scope() as s:
            return ingest_manifest(
                s, actor="lm", manifest=manifest, store=store(), max_pixels=10**6
            )

    report = ingest(two)
    assert report.added == ["S0", "S2"]  # type: ignore[attr-defined]
    with session_scope() as s:
        cores = {c.code: c for c in s.scalars(select(Core))}
        refs = cores_by_code(s, ["S0", "S2"])
    assert (cores["S0"].page, cores["S2"].page) == (0, 2)
    sha = cores["S0"].sha256
    assert cores["S2"].sha256 == sha
    # page 0 keeps the store name of a file's only image; page 2 has one of its own
    assert cores["S0"].store_location == CoreStore.location_for(sha)
    assert cores["S2"].store_location == CoreStore.location_for(sha, 2)
    assert cores["S0"].store_location != cores["S2"].store_location
    assert all((store().root / c.store_location).is_file() for c in cores.values())

    # the same draw (one key, one seed) from each core: the pixels of its own page
    sampler = StoreSampler(store().root, get_profile("test").pss)
    try:
        sets = {
            ref.code: next(sampler.core_batches(ref.sha256, "one key", 0, [[0]], page=ref.page))
            for ref in refs
        }
    finally:
        sampler.close()
    assert not np.array_equal(sets["S0"], sets["S2"])
    for code, page in (("S0", 0), ("S2", 2)):
        means = sets[code].reshape(-1, 3).mean(axis=0)
        nearest = min(range(len(tints)), key=lambda i: float(np.abs(means - tints[i]).sum()))
        assert nearest == page, (code, means)

    again = ingest(two)
    assert again.added == [] and again.already_present == ["S0", "S2"]  # type: ignore[attr-defined]

    rows = [
        ("P1", "S0", "stack.tif", "0"),  # 2 already present
        ("P2", "T1", "stack.tif", "1"),  # 3 a new page: fine
        ("P2", "T2", "stack.tif", "1"),  # 4 the same page as line 3
        ("P2", "T3", "stack.tif", "2"),  # 5 the same page as S2, in the database
        ("P1", "S0", "stack.tif", "1"),  # 6 S0 again, another page: not a repeated row
        ("P1", "S2", "stack.tif", "3"),  # 7 S2 with another page than it was ingested with
    ]
    with pytest.raises(ImportRejected) as info:
        ingest(write_csv(tmp_path / "bad.csv", header, rows))
    reasons = {e.line: (e.key, e.reason) for e in info.value.errors}
    assert set(reasons) == {4, 5, 6, 7}, reasons
    assert reasons[4][0] == "T2" and "same image as core T1 on line 3" in reasons[4][1]
    assert reasons[5][0] == "T3" and "same image as core S2, already ingested" in reasons[5][1]
    assert "duplicate core code (also on line 2)" in reasons[6][1]
    assert "already ingested with a different image" in reasons[7][1]
    with session_scope() as s:
        assert s.scalar(select(func.count()).select_from(Core)) == 2


def test_split_names_are_checked(db_url: str) -> None:
    from her2ops.platform.splits import create_split

    seed_users(1)
    ratios = {"train": 0.6, "val": 0.2, "test": 0.2}
    with session_scope() as s:
        for bad in ("", "  ", "a\nb", "x" * 65, "=A1"):
            with pytest.raises(InvalidRequest, match="bad split name"):
                create_split(s, actor="lm", name=bad, seed=1, ratios=ratios)
        create_split(s, actor="lm", name="main-2026.v1", seed=1, ratios=ratios)


def test_usernames_are_checked(db_url: str) -> None:
    seed_users(1)
    with session_scope() as s:
        with pytest.raises(Conflict, match="already exists \\(as 'p1'\\)"):
            add_user(s, actor="admin", username="P1", role="pathologist")
        for bad in ("evil\nerror: forged line", "", "=cmd()", "a b", "x" * 65):
            with pytest.raises(InvalidRequest, match="bad username"):
                add_user(s, actor="admin", username=bad, role="pathologist")
        with pytest.raises(InvalidRequest, match="unknown role"):
            add_user(s, actor="admin", username="ok", role="boss")


# --- 9. formula injection ---------------------------------------------------------------------


def test_export_csv_escapes_formulas(db_url: str, tmp_path: Path) -> None:
    seed_users(2)
    make_manifest(tmp_path / "m", 2)
    manifest = write_csv(
        tmp_path / "m" / "f.csv",
        ("patient", "core", "image"),
        [
            ('=HYPERLINK("http://x")', "+cmd|' /C calc'!A0", "img/c0.png"),
            ("@SUM(1)", "-2+3", "img/c1.png"),
        ],
    )
    with session_scope() as s:
        ingest_manifest(s, actor="lm", manifest=manifest, store=store(), max_pixels=10**6)
    with session_scope() as s:
        text = export_csv(export_rows(s, actor="lm"))
    cells = [c for row in csv.reader(io.StringIO(text)) for c in row]
    assert not [c for c in cells if c[:1] in ("=", "+", "-", "@")]
    assert '\'=HYPERLINK("http://x")' in cells and "'-2+3" in cells


# --- 14. credentials --------------------------------------------------------------------------


def test_passwords_and_tokens(db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HER2OPS_TOKEN_FILE", str(tmp_path / "cfg" / "token"))
    get_settings.cache_clear()
    with session_scope() as s:
        add_user(s, actor=None, username="boss", role="admin", password="correct horse")
        add_user(s, actor="boss", username="p1", role="pathologist")
    with session_scope() as s:
        boss = s.scalar(select(User).where(User.username == "boss"))
        assert boss is not None and boss.password_hash.startswith("$argon2id$")
        assert "correct horse" not in boss.password_hash
        assert auth.resolve_actor(s, "boss", "correct horse").username == "boss"
        for wrong in ("wrong horse", "", None, "h2o_forged"):
            with pytest.raises(PermissionDenied):
                auth.resolve_actor(s, "boss", wrong)
        with pytest.raises(PermissionDenied):  # no password set: nobody can act as p1
            auth.resolve_actor(s, "p1", "anything at all")
        with pytest.raises(InvalidRequest, match="at least"):
            auth.set_password(s, actor="p1", username="p1", password="short")
        with pytest.raises(PermissionDenied, match=r"may not users\.add"):
            auth.set_password(s, actor="p1", username="boss", password="a long new one")
    path = admin.login(username="boss", password="correct horse")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    saved = admin.read_token_file()
    assert saved is not None and saved[0] == "boss"
    with session_scope() as s:
        boss = s.scalar(select(User).where(User.username == "boss"))
        assert boss is not None and boss.token_hash == auth.token_digest(saved[1])
        assert saved[1] not in (boss.token_hash or "")  # stored hashed
        assert auth.resolve_actor(s, "boss", saved[1]).username == "boss"
        with pytest.raises(PermissionDenied):
            auth.resolve_actor(s, "p1", saved[1])  # boss's token is not p1's
        # credentials are required outside the SQLite default (forced on here)
        monkeypatch.setenv("HER2OPS_REQUIRE_CREDENTIALS", "true")
        monkeypatch.delenv("HER2OPS_TOKEN", raising=False)
        get_settings.cache_clear()
        assert admin.authenticate(s, "boss", interactive=False) is not None  # the token file
        with pytest.raises(PermissionDenied, match="needs that user's credential"):
            admin.authenticate(s, "p1", interactive=False)
        auth.set_password(s, actor="boss", username="boss", password="battery staple")
    with session_scope() as s, pytest.raises(PermissionDenied):
        auth.resolve_actor(s, "boss", saved[1])  # a new password ends the old token
    with pytest.raises(PermissionDenied, match="wrong user name or password"):
        admin.login(username="boss", password="correct horse")

    # `her2ops logout` ends the token in the database and removes the file
    admin.login(username="boss", password="battery staple")
    saved = admin.read_token_file()
    assert saved is not None
    result = CliRunner().invoke(app, ["logout"])
    assert result.exit_code == 0 and "logged out" in result.stdout, result.stderr
    assert admin.read_token_file() is None
    with session_scope() as s, pytest.raises(PermissionDenied):
        auth.resolve_actor(s, "boss", saved[1])
    result = CliRunner().invoke(app, ["logout"])
    assert result.exit_code == 0 and "not logged in" in result.stdout


# --- 1. destructive commands ------------------------------------------------------------------


def test_downgrade_needs_an_admin_and_confirmation(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _curated(tmp_path, 2)
    with session_scope() as s:
        auth.set_password(s, actor="admin", username="admin", password="admin password")
        token = auth.issue_token(s, username="admin", password="admin password")
    monkeypatch.setenv("HER2OPS_REQUIRE_CREDENTIALS", "true")
    monkeypatch.setenv("HER2OPS_TOKEN_FILE", str(tmp_path / "no-token"))
    get_settings.cache_clear()
    with pytest.raises(PermissionDenied, match="needs that user's credential"):
        admin.downgrade_database(
            actor="admin", revision="base", yes=True, i_know_this_deletes_data=True
        )
    monkeypatch.setenv("HER2OPS_TOKEN", token)
    for actor, kwargs, error in [
        (None, {"yes": True, "i_know_this_deletes_data": True}, PermissionDenied),
        ("lm", {"yes": True, "i_know_this_deletes_data": True}, PermissionDenied),
        ("admin", {}, InvalidRequest),
    ]:
        with pytest.raises(error):
            admin.downgrade_database(actor=actor, revision="base", **kwargs)  # type: ignore[arg-type]
    if db_url.startswith("postgresql"):
        with pytest.raises(PermissionDenied, match="--i-know-this-deletes-data"):
            admin.downgrade_database(actor="admin", revision="base", yes=True)
    assert migrate.current(db_url) == migrate.head()
    with session_scope() as s:
        assert s.scalar(select(func.count()).select_from(Vote)) == 6
    out = admin.downgrade_database(
        actor="admin", revision="0003", yes=True, i_know_this_deletes_data=True
    )
    assert out["current"] == "0003"
