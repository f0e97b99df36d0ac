"""Curation services on SQLite and PostgreSQL: ingest, votes, consensus, roles, audit."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.exc import DBAPIError, IntegrityError

from her2ops.platform.consensus import apply_consensus, label_history
from her2ops.platform.curation import add_user, ingest_manifest
from her2ops.platform.db import session_scope
from her2ops.platform.errors import AccessDenied, Conflict, ImportRejected
from her2ops.platform.schema import AuditEvent, ConsensusLabel, Core, Patient, Vote
from her2ops.platform.votes import cast_vote, import_votes
from tests.factories import make_manifest, make_png, seed_users, store, write_csv

MAX_PIXELS = 10_000_000


def ingest(path: Path, *, skip: bool = False, actor: str = "lm") -> object:
    with session_scope() as s:
        return ingest_manifest(
            s, actor=actor, manifest=path, store=store(), max_pixels=MAX_PIXELS, skip_invalid=skip
        )


def count(model: type) -> int:
    with session_scope() as s:
        return int(s.scalar(select(func.count()).select_from(model)) or 0)


def test_ingest_and_rerun_is_noop(db_url: str, tmp_path: Path) -> None:
    seed_users()
    manifest = make_manifest(tmp_path / "m", 6)
    report = ingest(manifest)
    assert len(report.added) == 6 and report.new_patients == 3
    assert count(Core) == 6 and count(Patient) == 3
    with session_scope() as s:
        core = s.scalar(select(Core).where(Core.code == "C00000"))
        assert core is not None and core.width == 96 and core.height == 80
        assert store().has(core.sha256)
    again = ingest(manifest)
    assert again.added == [] and len(again.already_present) == 6
    assert count(Core) == 6
    with session_scope() as s:
        events = s.scalars(select(AuditEvent).where(AuditEvent.action == "cores.ingest")).all()
        assert len(events) == 1 and events[0].details["added"] == 6


def test_ingest_lists_every_bad_row_and_writes_nothing(db_url: str, tmp_path: Path) -> None:
    seed_users()
    make_manifest(tmp_path / "old", 2)
    ingest(tmp_path / "old" / "manifest.csv")  # C00000, C00001 for P0000 at site-A
    d = tmp_path / "new"
    make_png(d / "ok.png", 100)
    make_png(d / "ok2.png", 101)
    make_png(d / "big.png", 102, size=(4000, 3000))
    (d / "trunc.png").write_bytes(make_png(d / "full.png", 103).read_bytes()[:300])
    (d / "junk.png").write_bytes(b"this is not an image")
    make_png(d / "dup.png", 100)  # same pixels and bytes as ok.png
    for i in range(3):
        make_png(d / f"other{i}.png", 200 + i)
    old_img = tmp_path / "old" / "img" / "c0.png"
    rows = [
        ("P9", "N1", "ok.png", "site-A"),  # 2 good
        ("P9", "N2", "missing.png", "site-A"),  # 3 missing file
        ("P9", "N3", "trunc.png", "site-A"),  # 4 truncated
        ("P9", "N4", "junk.png", "site-A"),  # 5 unreadable
        ("P9", "N5", "big.png", "site-A"),  # 6 bomb (over max_pixels)
        ("P9", "N1", "ok2.png", "site-A"),  # 7 duplicate code in file
        ("P9", "N6", "dup.png", "site-A"),  # 8 same image twice in file
        ("P9", "C00000", "ok2.png", "site-A"),  # 9 code already ingested w/ other image
        ("P8", "N7", str(old_img), "site-A"),  # 10 same image as an ingested core
        ("P0000", "N8", "other0.png", "site-B"),  # 11 patient site conflicts with DB
        ("P9", "N9", "other1.png", "site-C"),  # 12 site conflict within file
        ("P9", "", "other2.png", "site-A"),  # 13 empty core
    ]
    manifest = write_csv(d / "manifest.csv", ("patient", "core", "image", "site"), rows)
    with pytest.raises(ImportRejected) as exc, session_scope() as s:
        ingest_manifest(s, actor="lm", manifest=manifest, store=store(), max_pixels=5_000_000)
    lines = {e.line: e.reason for e in exc.value.errors}
    assert set(lines) == set(range(3, 14)), lines
    assert "no such file" in lines[3] or "not found" in lines[3]
    assert "truncat" in lines[4].lower() or "corrupt" in lines[4].lower()
    assert "pixels" in lines[6]
    assert "duplicate core code" in lines[7]
    assert "same image as core N1" in lines[8]
    assert "different image" in lines[9]
    assert "same image as core C00000" in lines[10]
    assert "site" in lines[11] and "site" in lines[12]
    assert "empty core" in lines[13]
    assert count(Core) == 2  # nothing from the rejected file

    # --skip-invalid loads the good row(s) and reports the rest
    with session_scope() as s:
        report = ingest_manifest(
            s, actor="lm", manifest=manifest, store=store(), max_pixels=5_000_000, skip_invalid=True
        )
    assert report.added == ["N1"]
    assert {e.line for e in report.skipped} == set(range(3, 14))


def test_ingest_bad_header(db_url: str, tmp_path: Path) -> None:
    seed_users()
    manifest = write_csv(tmp_path / "m.csv", ("patient", "image"), [("P1", "x.png")])
    with pytest.raises(ImportRejected, match="missing column"):
        ingest(manifest)


def test_roles_are_checked(db_url: str, tmp_path: Path) -> None:
    seed_users()
    manifest = make_manifest(tmp_path / "m", 2)
    with pytest.raises(AccessDenied, match="lab_manager"):
        ingest(manifest, actor="p1")
    with session_scope() as s, pytest.raises(AccessDenied):
        add_user(s, actor="lm", username="x", role="admin")
    with session_scope() as s, pytest.raises(Conflict):
        add_user(s, actor="admin", username="p1", role="pathologist")


def _votes_file(tmp_path: Path, rows: list[tuple[str, ...]], name: str = "votes.csv") -> Path:
    header = ("core", "pathologist", "score", "round", "comment")[: len(rows[0])]
    return write_csv(tmp_path / name, header, rows)


def test_votes_import_consensus_and_rerun(db_url: str, tmp_path: Path) -> None:
    seed_users()
    ingest(make_manifest(tmp_path / "m", 4))
    votes = _votes_file(
        tmp_path,
        [
            ("C00000", "p1", "2+"),
            ("C00000", "p2", "2"),
            ("C00000", "p3", "3+"),
            ("C00001", "p1", "0"),
            ("C00001", "p2", "1+"),
            ("C00002", "p1", "ND"),
            ("C00002", "p2", "nd"),
            ("C00002", "p3", "1+"),
            ("C00003", "p1", "3+"),
        ],
    )
    with session_scope() as s:
        rep = import_votes(s, actor="lm", path=votes)
    assert rep.added == 9 and rep.cores_touched == 4
    with session_scope() as s:
        rep2 = import_votes(s, actor="lm", path=votes)
    assert rep2.added == 0 and rep2.unchanged == 9
    with session_scope() as s:
        cons = apply_consensus(s, actor="lm")
    assert cons.evaluated == 4
    assert cons.by_status == {
        "agreed": 1,
        "excluded": 1,
        "insufficient_votes": 1,
        "needs_adjudication": 1,
    }
    with session_scope() as s:  # nothing changed since: nothing to evaluate
        assert apply_consensus(s, actor="lm").evaluated == 0

    # an adjudication resolves C00001; a review vote changes C00000; history is kept
    adj = _votes_file(tmp_path, [("C00001", "p3", "1+", "adjudication", "looked again")], "adj.csv")
    with session_scope() as s:
        import_votes(s, actor="lm", path=adj)
        cast_vote(s, actor="p3", core="C00000", score="2+")
    with session_scope() as s:
        cons = apply_consensus(s, actor="lm")
    assert cons.evaluated == 2 and len(cons.changed) == 1  # C00000 stays agreed 2+
    with session_scope() as s:
        hist = label_history(s, "C00001")
        assert [(h.version, h.status, h.score, h.is_current) for h in hist] == [
            (1, "needs_adjudication", None, False),
            (2, "adjudicated", 1, True),
        ]
        current = s.scalars(select(ConsensusLabel).where(ConsensusLabel.is_current)).all()
        assert len(current) == 4
        assert (
            s.scalar(
                select(func.count())
                .select_from(AuditEvent)
                .where(AuditEvent.action == "consensus.apply")
            )
            == 2
        )


def test_vote_errors_are_listed_and_nothing_written(db_url: str, tmp_path: Path) -> None:
    seed_users()
    ingest(make_manifest(tmp_path / "m", 2))
    with session_scope() as s:
        import_votes(s, actor="lm", path=_votes_file(tmp_path, [("C00000", "p1", "2+")], "a.csv"))
    bad = _votes_file(
        tmp_path,
        [
            ("C00001", "p1", "1+", "initial"),  # 2 fine
            ("C99999", "p1", "1+", "initial"),  # 3 unknown core
            ("C00001", "nobody", "1+", "initial"),  # 4 unknown pathologist
            ("C00001", "lm", "1+", "initial"),  # 5 not a pathologist
            ("C00001", "p2", "4+", "initial"),  # 6 bad score
            ("C00001", "p2", "1+", "second"),  # 7 bad round
            ("C00000", "p1", "3+", "initial"),  # 8 conflicts with the recorded vote
            ("C00001", "p1", "2+", "initial"),  # 9 duplicate of line 2
        ],
        "bad.csv",
    )
    with pytest.raises(ImportRejected) as exc, session_scope() as s:
        import_votes(s, actor="lm", path=bad)
    reasons = {e.line: e.reason for e in exc.value.errors}
    assert set(reasons) == {3, 4, 5, 6, 7, 8, 9}
    assert "unknown core" in reasons[3] and "unknown pathologist" in reasons[4]
    assert "not a pathologist" in reasons[5] and "bad score" in reasons[6]
    assert "bad round" in reasons[7] and "never overwritten" in reasons[8]
    assert "line 2" in reasons[9]
    assert count(Vote) == 1
    with session_scope() as s:
        rep = import_votes(s, actor="lm", path=bad, skip_invalid=True)
    assert rep.added == 1 and len(rep.skipped) == 7


def test_review_votes_repeat_and_file_rerun_is_noop(db_url: str, tmp_path: Path) -> None:
    seed_users()
    ingest(make_manifest(tmp_path / "m", 1))
    review = _votes_file(
        tmp_path, [("C00000", "p1", "2+", "review"), ("C00000", "p1", "3+", "review")], "r.csv"
    )
    with session_scope() as s:
        assert import_votes(s, actor="lm", path=review).added == 2
    with session_scope() as s:
        assert import_votes(s, actor="lm", path=review).added == 0
    with session_scope() as s:
        cast_vote(s, actor="p1", core="C00000", score="1+")
        seqs = s.scalars(select(Vote.seq).order_by(Vote.id)).all()
    assert seqs == [1, 2, 3]


def test_votes_are_append_only_in_the_database(db_url: str, tmp_path: Path) -> None:
    seed_users()
    ingest(make_manifest(tmp_path / "m", 1))
    with session_scope() as s:
        cast_vote(s, actor="p1", core="C00000", score="2+", round="initial")
    for stmt in ("UPDATE votes SET score = '3+'", "DELETE FROM votes"):
        with pytest.raises(DBAPIError, match="append-only"), session_scope() as s:
            s.execute(text(stmt))
    with pytest.raises(Conflict, match="never overwritten"), session_scope() as s:
        cast_vote(s, actor="p1", core="C00000", score="3+", round="initial")
    with pytest.raises(IntegrityError), session_scope() as s:  # the unique key backs it up
        s.add(
            Vote(
                core_id=1,
                user_id=s.scalar(text("SELECT id FROM users WHERE username='p1'")),
                score="3+",
                round="initial",
                seq=0,
            )
        )
    assert count(Vote) == 1
