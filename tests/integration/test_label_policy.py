"""Label policy on SQLite and PostgreSQL: consensus parameters from settings (admins may
override, audited), who runs consensus, who may adjudicate and when, reopening a core."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select

from her2ops.config import get_settings
from her2ops.platform.consensus import apply_consensus, label_history, reopen_core
from her2ops.platform.curation import ingest_manifest
from her2ops.platform.db import session_scope
from her2ops.platform.errors import Conflict, ImportRejected, InvalidRequest, PermissionDenied
from her2ops.platform.schema import AuditEvent, Vote
from her2ops.platform.votes import cast_vote, import_votes
from tests.factories import make_manifest, seed_users, store, write_csv


def _setup(tmp_path: Path, rows: list[tuple[str, str, str]]) -> None:
    seed_users(pathologists=6)
    with session_scope() as s:
        ingest_manifest(
            s,
            actor="lm",
            manifest=make_manifest(tmp_path / "m", 4),
            store=store(),
            max_pixels=10**7,
        )
    path = write_csv(tmp_path / "v.csv", ("core", "pathologist", "score"), rows)
    with session_scope() as s:
        import_votes(s, actor="lm", path=path)


# C00000: p1 2+, p2 3+ (discordant); C00001: p1, p2 agree on 1+; C00002: one vote
VOTES = [
    ("C00000", "p1", "2+"),
    ("C00000", "p2", "3+"),
    ("C00001", "p1", "1+"),
    ("C00001", "p2", "1+"),
    ("C00002", "p1", "0"),
]


def _status(core: str) -> tuple[str, int | None]:
    with session_scope() as s:
        cur = next(h for h in label_history(s, core) if h.is_current)
        return cur.status, cur.score


@pytest.mark.parametrize(
    ("user", "allowed"), [("lm", True), ("admin", True), ("p1", False), ("eng", False)]
)
def test_only_lab_managers_run_consensus(
    db_url: str, tmp_path: Path, user: str, allowed: bool
) -> None:
    _setup(tmp_path, VOTES)
    if allowed:
        with session_scope() as s:
            assert apply_consensus(s, actor=user).evaluated == 3
        return
    with pytest.raises(PermissionDenied, match=r"consensus\.apply") as exc, session_scope() as s:
        apply_consensus(s, actor=user)
    assert "\n" not in str(exc.value)


def test_parameters_are_lab_policy_and_admin_overrides_are_audited(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _setup(tmp_path, VOTES)
    with pytest.raises(PermissionDenied, match="lab policy") as exc, session_scope() as s:
        apply_consensus(s, actor="lm", all_cores=True, min_agreement=3)
    assert "\n" not in str(exc.value) and "only an admin" in str(exc.value)
    with pytest.raises(InvalidRequest, match="min_agreement"), session_scope() as s:
        apply_consensus(s, actor="admin", min_agreement=0)
    with session_scope() as s:  # the policy's own values are no override
        rep = apply_consensus(s, actor="lm", min_agreement=2, min_votes=2)
    assert rep.by_status == {"agreed": 1, "insufficient_votes": 1, "needs_adjudication": 1}
    with session_scope() as s:
        rep = apply_consensus(s, actor="admin", all_cores=True, min_agreement=3)
    assert rep.by_status == {"insufficient_votes": 2, "needs_adjudication": 2}  # C00003: none
    with session_scope() as s:
        events = s.scalars(
            select(AuditEvent).where(AuditEvent.action == "consensus.apply").order_by(AuditEvent.id)
        ).all()
        assert [e.details["policy_override"] for e in events] == [False, True]
        assert events[1].details["min_agreement"] == 3
    # the lab changes its policy: min_votes 5 (the paper's protocol) from settings
    monkeypatch.setenv("HER2OPS_MIN_VOTES", "5")
    get_settings.cache_clear()
    with session_scope() as s:
        rep = apply_consensus(s, actor="lm", all_cores=True)
    assert rep.by_status == {"insufficient_votes": 4}


def test_adjudication_rules_on_cast(db_url: str, tmp_path: Path) -> None:
    _setup(tmp_path, VOTES)
    with session_scope() as s:
        apply_consensus(s, actor="lm")
    # a panel member may not adjudicate
    with pytest.raises(PermissionDenied, match="in this core's panel"), session_scope() as s:
        cast_vote(s, actor="p1", core="C00000", score="3+", round="adjudication")
    # an agreed core (and one with too few votes) needs no adjudication
    for core in ("C00001", "C00002"):
        with pytest.raises(Conflict, match="does not need adjudication"), session_scope() as s:
            cast_vote(s, actor="p3", core=core, score="3+", round="adjudication")
    # an outsider on a discordant core: accepted, decides
    with session_scope() as s:
        cast_vote(s, actor="p3", core="C00000", score="3+", round="adjudication")
        apply_consensus(s, actor="lm")
    assert _status("C00000") == ("adjudicated", 3)
    # a second adjudicator may not override it
    with pytest.raises(Conflict, match="already adjudicated"), session_scope() as s:
        cast_vote(s, actor="p4", core="C00000", score="2+", round="adjudication")
    with session_scope() as s:
        assert len(s.scalars(select(Vote).where(Vote.round == "adjudication")).all()) == 1


def test_adjudication_rules_on_import(db_url: str, tmp_path: Path) -> None:
    _setup(tmp_path, VOTES)
    rows = [
        ("C00000", "p1", "3+", "adjudication"),  # 2: panel member
        ("C00001", "p3", "3+", "adjudication"),  # 3: agreed core
        ("C00002", "p2", "0", "initial"),  # 4: fine, makes C00002 agreed
        ("C00002", "p3", "1+", "adjudication"),  # 5: C00002 agreed with line 4
        ("C00000", "p4", "2+", "adjudication"),  # 6: fine
    ]
    path = write_csv(tmp_path / "adj.csv", ("core", "pathologist", "score", "round"), rows)
    with pytest.raises(ImportRejected) as exc, session_scope() as s:
        import_votes(s, actor="lm", path=path)
    reasons = {e.line: e.reason for e in exc.value.errors}
    assert set(reasons) == {2, 3, 5}
    assert "panel" in reasons[2] and "does not need adjudication" in reasons[3]
    assert "agreed" in reasons[5]
    with session_scope() as s:
        rep = import_votes(s, actor="lm", path=path, skip_invalid=True)
    assert rep.added == 2 and len(rep.skipped) == 3
    with session_scope() as s:
        apply_consensus(s, actor="lm")
    assert _status("C00000") == ("adjudicated", 2) and _status("C00002") == ("agreed", 0)
    # one file with a core's panel votes and its adjudication (the synthetic data's layout);
    # the adjudication may come before the vote that makes the core discordant
    both = write_csv(
        tmp_path / "both.csv",
        ("core", "pathologist", "score", "round"),
        [
            ("C00003", "p1", "0", "initial"),
            ("C00003", "p5", "1+", "adjudication"),
            ("C00003", "p2", "1+", "initial"),
        ],
    )
    with session_scope() as s:
        assert import_votes(s, actor="lm", path=both).added == 3
        apply_consensus(s, actor="lm")
    assert _status("C00003") == ("adjudicated", 1)


def test_reopen_lets_an_outsider_adjudicate(db_url: str, tmp_path: Path) -> None:
    _setup(tmp_path, VOTES)
    with session_scope() as s:
        apply_consensus(s, actor="lm")
    with pytest.raises(PermissionDenied, match=r"labels\.reopen"), session_scope() as s:
        reopen_core(s, actor="p3", core="C00001")
    with pytest.raises(Conflict, match="already needs adjudication"), session_scope() as s:
        reopen_core(s, actor="lm", core="C00000")
    with session_scope() as s:
        label = reopen_core(s, actor="lm", core="C00001", reason="second look")
        assert label.version == 2
    assert _status("C00001") == ("needs_adjudication", None)
    with session_scope() as s:  # a full re-run keeps the reopening
        apply_consensus(s, actor="lm", all_cores=True)
    assert _status("C00001") == ("needs_adjudication", None)
    with pytest.raises(PermissionDenied, match="panel"), session_scope() as s:
        cast_vote(s, actor="p2", core="C00001", score="2+", round="adjudication")
    with session_scope() as s:
        cast_vote(s, actor="p3", core="C00001", score="2+", round="adjudication")
        apply_consensus(s, actor="lm")
    assert _status("C00001") == ("adjudicated", 2)
    with session_scope() as s:
        hist = [(h.version, h.status) for h in label_history(s, "C00001")]
        assert hist == [(1, "agreed"), (2, "needs_adjudication"), (3, "adjudicated")]
        ev = s.scalars(select(AuditEvent).where(AuditEvent.action == "labels.reopen")).one()
        assert ev.entity_key == "C00001" and ev.details["reason"] == "second look"
    # reopened again after that adjudication: a further outsider may decide
    with session_scope() as s:
        reopen_core(s, actor="admin", core="C00001")
    with session_scope() as s:
        cast_vote(s, actor="p4", core="C00001", score="1+", round="adjudication")
        apply_consensus(s, actor="lm")
    assert _status("C00001") == ("adjudicated", 1)


def test_adjudicator_rule_can_be_switched_off(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HER2OPS_ADJUDICATOR_OUTSIDE_PANEL", "false")
    get_settings.cache_clear()
    _setup(tmp_path, VOTES)
    with session_scope() as s:
        cast_vote(s, actor="p1", core="C00000", score="3+", round="adjudication")
        apply_consensus(s, actor="lm")
    assert _status("C00000") == ("adjudicated", 3)


def test_cli_policy_reopen_and_balanced_split(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    # the label policy, not credentials (those: test_cli_curation, test_hardening)
    monkeypatch.setenv("HER2OPS_REQUIRE_CREDENTIALS", "false")
    get_settings.cache_clear()

    from her2ops.cli import app

    runner = CliRunner()

    def run(*args: str, ok: bool = True) -> str:
        result = runner.invoke(app, list(args))
        assert result.exit_code == (0 if ok else 1), result.output + str(result.exception)
        assert "Traceback" not in result.output
        return result.output

    _setup(tmp_path, VOTES)
    out = run("--as", "lm", "consensus", "--min-agreement", "3", ok=False)
    assert "only an admin" in out and len(out.strip().splitlines()) == 1
    out = run("--as", "p1", "consensus", ok=False)
    assert "may not consensus.apply" in out and len(out.strip().splitlines()) == 1
    assert "label(s) changed" in run("--as", "admin", "consensus", "--min-votes", "3")
    run("--as", "lm", "consensus", "--all")
    out = run("--as", "p3", "labels", "reopen", "C00001", ok=False)
    assert "labels.reopen" in out and len(out.strip().splitlines()) == 1
    assert "needs_adjudication" in run("--as", "lm", "labels", "reopen", "C00001")
    out = run("--as", "p1", "votes", "cast", "C00001", "3+", "--round", "adjudication", ok=False)
    assert "panel" in out and len(out.strip().splitlines()) == 1
    run("--as", "p3", "votes", "cast", "C00001", "3+", "--round", "adjudication")
    out = run("--as", "lm", "split", "create", "b", "--seed", "1", "--balanced-test")
    assert "labelled cores per class" in out
    info = run("--as", "lm", "split", "show", "b", "--json")
    assert '"class_counts"' in info
