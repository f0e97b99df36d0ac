"""Concurrent commands on PostgreSQL, as real processes with a forced overlap.

The overlap is forced with a table lock held from another connection (the issue's recipe): a
``consensus`` run blocks on ``consensus_labels`` after it has read the votes, and votes are
imported meanwhile; several imports block on ``votes`` after they have decided what to insert,
and then all go at once. Nothing may be lost, and every process ends cleanly (no traceback).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import select

from her2ops.platform import auth
from her2ops.platform.consensus import apply_consensus
from her2ops.platform.db import session_scope
from her2ops.platform.schema import ConsensusLabel, Core, Patient, User, Vote
from her2ops.platform.votes import import_votes
from tests.factories import make_manifest, seed_users, write_csv

pytestmark = pytest.mark.postgres
SRC = Path(__file__).resolve().parents[2] / "src"


def _token(username: str) -> str:
    with session_scope() as s:
        s.scalar(select(User).where(User.username == username)).password_hash = (  # type: ignore[union-attr]
            auth.hash_password("a-long-password")
        )
    with session_scope() as s:
        return auth.issue_token(s, username=username, password="a-long-password")


def _cli(db_url: str, token: str, *args: str) -> subprocess.Popen[str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("HER2OPS_") or k.startswith("HER2OPS_TEST")
    }
    env.update(
        HER2OPS_DATABASE_URL=db_url,
        HER2OPS_DATA_DIR=os.environ["HER2OPS_DATA_DIR"],
        HER2OPS_TOKEN=token,
        PYTHONPATH=str(SRC),
    )
    return subprocess.Popen(
        [sys.executable, "-m", "her2ops", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _lock(db_url: str, table: str) -> psycopg.Connection:
    conn = psycopg.connect(db_url.replace("postgresql+psycopg://", "postgresql://"))
    conn.execute(f"LOCK TABLE {table} IN SHARE MODE")  # held until commit
    return conn


def _wait_for_waiters(conn: psycopg.Connection, table: str, n: int, timeout: float = 60) -> None:
    """Until ``n`` other backends wait for a lock on ``table``."""
    deadline = time.monotonic() + timeout
    with psycopg.connect(conn.info.dsn, autocommit=True) as watcher:
        while time.monotonic() < deadline:
            waiting = watcher.execute(
                "SELECT count(DISTINCT pid) FROM pg_locks WHERE NOT granted AND relation = "
                "%s::regclass",
                (table,),
            ).fetchone()
            if waiting and waiting[0] >= n:
                return
            time.sleep(0.1)
    raise AssertionError(f"{n} process(es) never blocked on {table}")


def _finish(proc: subprocess.Popen[str], timeout: float = 120) -> tuple[str, str]:
    out, err = proc.communicate(timeout=timeout)
    assert "Traceback" not in err, err
    assert proc.returncode == 0, out + err
    return out, err


def _cores(n: int) -> list[str]:
    with session_scope() as s:
        patient = Patient(code="P-conc")
        s.add(patient)
        s.flush()
        for i in range(n):
            s.add(
                Core(
                    code=f"K{i}",
                    patient_id=patient.id,
                    source_path="-",
                    sha256=f"k{i}".ljust(64, "0"),
                    width=1,
                    height=1,
                )
            )
    return [f"K{i}" for i in range(n)]


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_votes_arriving_during_consensus_are_not_lost(db_url: str, tmp_path: Path) -> None:
    seed_users(3)
    cores = _cores(6)
    first = write_csv(
        tmp_path / "v1.csv",
        ("core", "pathologist", "score"),
        [(c, p, "1+") for c in cores for p in ("p1", "p2")],
    )
    with session_scope() as s:
        import_votes(s, actor="lm", path=first)
    lm = _token("lm")

    lock = _lock(db_url, "consensus_labels")
    try:
        run = _cli(db_url, lm, "--as", "lm", "consensus", "--json")
        _wait_for_waiters(lock, "consensus_labels", 1)  # it has read the votes, cannot write
        late = write_csv(
            tmp_path / "v2.csv",
            ("core", "pathologist", "score", "round"),
            [(c, p, "3+", "review") for c in cores[:3] for p in ("p1", "p2")],
        )
        out, _ = _finish(_cli(db_url, lm, "--as", "lm", "votes", "import", str(late)))
        assert "imported 6 vote(s) on 3 core(s)" in out
    finally:
        lock.commit()
        lock.close()
    _finish(run)

    with session_scope() as s:
        dirty = set(s.scalars(select(Core.code).where(Core.needs_consensus.is_(True))))
    assert dirty == set(cores[:3])  # the run did not see their new votes: still marked
    with session_scope() as s:
        report = apply_consensus(s, actor="lm")
    assert report.evaluated == 3
    with session_scope() as s:
        labels = dict(
            s.execute(
                select(Core.code, ConsensusLabel.score)
                .join(Core, Core.id == ConsensusLabel.core_id)
                .where(ConsensusLabel.is_current.is_(True))
            ).all()
        )
    assert labels == {c: (3 if c in cores[:3] else 1) for c in cores}


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_colliding_imports_and_consensus_runs_retry_without_traceback(
    db_url: str, tmp_path: Path
) -> None:
    seed_users(3)
    cores = _cores(5)
    rows = [(c, p, "2+", "initial") for c in cores for p in ("p1", "p2", "p3")]
    rows += [(c, "p1", "3+", "review") for c in cores]
    votes = write_csv(tmp_path / "v.csv", ("core", "pathologist", "score", "round"), rows)
    lm = _token("lm")

    lock = _lock(db_url, "votes")
    try:
        procs = [_cli(db_url, lm, "--as", "lm", "votes", "import", str(votes)) for _ in range(3)]
        _wait_for_waiters(lock, "votes", 3)  # all three decided to insert every row
    finally:
        lock.commit()
        lock.close()
    outs = [_finish(p)[0] for p in procs]
    assert sum(f"imported {len(rows)} vote(s)" in o for o in outs) == 1
    assert sum(f"{len(rows)} already recorded" in o for o in outs) == 2  # retried, then no-op
    with session_scope() as s:
        assert len(s.scalars(select(Vote.id)).all()) == len(rows)

    lock = _lock(db_url, "consensus_labels")
    try:
        procs = [_cli(db_url, lm, "--as", "lm", "consensus", "--json") for _ in range(2)]
        _wait_for_waiters(lock, "consensus_labels", 2)
    finally:
        lock.commit()
        lock.close()
    for p in procs:
        _finish(p)
    with session_scope() as s:
        versions = s.execute(select(ConsensusLabel.core_id, ConsensusLabel.version)).all()
    assert sorted(v for _, v in versions) == [1] * len(cores)  # one label each, no duplicate


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_colliding_ingests_retry_without_traceback(db_url: str, tmp_path: Path) -> None:
    """Two ingests of overlapping manifests both decide to create the same patients and cores;
    the one that loses the race retries and finds them already present."""
    seed_users(1)
    lm = _token("lm")
    first = make_manifest(tmp_path / "a", 6)
    second = make_manifest(tmp_path / "b", 6, seed0=3)  # cores 3..5 and patient 1..2 overlap
    lock = _lock(db_url, "patients")
    try:
        procs = [
            _cli(db_url, lm, "--as", "lm", "ingest", str(m), "--json") for m in (first, second)
        ]
        _wait_for_waiters(lock, "patients", 2)
    finally:
        lock.commit()
        lock.close()
    outs = [_finish(p)[0] for p in procs]
    assert "already_present" in outs[0] + outs[1]
    with session_scope() as s:
        codes = sorted(s.scalars(select(Core.code)))
        patients = sorted(s.scalars(select(Patient.code)))
    assert codes == [f"C{i:05d}" for i in range(9)]
    assert patients == [f"P{i:04d}" for i in range(5)]
