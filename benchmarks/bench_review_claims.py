"""Review-queue claims per second: P claimer processes drain N open items, one claim per
transaction (``UPDATE ... WHERE id = (SELECT ... FOR UPDATE SKIP LOCKED LIMIT 1) RETURNING``).

Target (issue 10): >= 500 claims/s on PostgreSQL on this machine. SQLite (``BEGIN IMMEDIATE``) is
measured beside it for comparison. Every run also checks that no item was claimed twice.
Usage: python benchmarks/bench_review_claims.py [--items 5000] [--procs 8]
       [--admin-url postgresql+psycopg://postgres@127.0.0.1:5432/postgres] [--no-sqlite] [--json]
Creates and drops a database of its own.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg
from sqlalchemy import insert, select
from sqlalchemy.orm import Session

from her2ops.platform import migrate
from her2ops.platform.curation import add_user
from her2ops.platform.db import get_engine, reset_engines, session_scope
from her2ops.platform.review_claims import claim_next
from her2ops.platform.schema import Core, Patient, ReviewItem, User

TARGET = 500.0
CTX = mp.get_context("fork")


def seed(url: str, n_items: int, n_users: int) -> list[int]:
    migrate.upgrade(url)
    with session_scope(url) as s:
        add_user(s, actor=None, username="admin", role="admin")
        for i in range(n_users):
            add_user(s, actor="admin", username=f"b{i}", role="pathologist")
    with session_scope(url) as s:
        s.execute(insert(Patient), [{"code": f"BP{i}", "site": "A"} for i in range(n_items)])
        pids = dict(s.execute(select(Patient.code, Patient.id)).all())
        s.execute(
            insert(Core),
            [
                {
                    "code": f"BC{i:06d}",
                    "patient_id": pids[f"BP{i}"],
                    "source_path": "-",
                    "sha256": f"{i:064d}",
                    "width": 8,
                    "height": 8,
                }
                for i in range(n_items)
            ],
        )
        cores = s.scalars(select(Core.id)).all()
        s.execute(
            insert(ReviewItem),
            [{"core_id": c, "priority": (i % 97) / 97, "reasons": []} for i, c in enumerate(cores)],
        )
        return list(s.scalars(select(User.id).where(User.role == "pathologist")))


def _claimer(url: str, user_id: int, start: Any, out: Any) -> None:
    """One claimer: a long-lived connection (as a worker or dashboard process holds), one
    transaction per claim."""
    got = []
    with get_engine(url).connect() as conn:
        start.wait()
        while True:
            with Session(bind=conn) as s:
                claim = claim_next(s, user_id=user_id, lease_s=600)
                s.commit()
            if claim is None:
                break
            got.append(claim[0])
    out.put((time.perf_counter(), got))


def measure(url: str, n_items: int, procs: int) -> dict[str, Any]:
    users = seed(url, n_items, procs)
    reset_engines()
    start, out = CTX.Event(), CTX.Queue()
    workers = [CTX.Process(target=_claimer, args=(url, u, start, out)) for u in users]
    for w in workers:
        w.start()
    time.sleep(0.5)  # let every process reach the start line
    t0 = time.perf_counter()
    start.set()
    results = [out.get(timeout=600) for _ in workers]
    for w in workers:
        w.join()
    seconds = max(t for t, _ in results) - t0
    items = [i for _, got in results for i in got]
    return {
        "dialect": url.split(":", 1)[0].split("+")[0],
        "items": n_items,
        "processes": procs,
        "claims": len(items),
        "unique": len(set(items)),
        "seconds": round(seconds, 3),
        "claims_per_s": round(len(items) / seconds, 1),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=int, default=5000)
    ap.add_argument("--procs", type=int, default=8)
    ap.add_argument("--admin-url", default="postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
    ap.add_argument("--no-sqlite", action="store_true")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    rows = []
    dbname = f"her2ops_bench_{uuid.uuid4().hex[:8]}"
    dsn = args.admin_url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{dbname}"')
    try:
        rows.append(
            measure(args.admin_url.rsplit("/", 1)[0] + "/" + dbname, args.items, args.procs)
        )
    finally:
        reset_engines()
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')
    if not args.no_sqlite:
        with tempfile.TemporaryDirectory() as tmp:
            rows.append(measure(f"sqlite:///{Path(tmp) / 'claims.db'}", args.items, args.procs))
            reset_engines()
    ok = all(r["claims"] == r["unique"] == r["items"] for r in rows)
    passed = ok and rows[0]["claims_per_s"] >= TARGET
    if args.json:
        print(json.dumps({"rows": rows, "target_claims_per_s": TARGET, "pass": passed}, indent=2))
    else:
        print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs; one claim per transaction")
        print(f"{'database':<12}{'items':>8}{'procs':>7}{'seconds':>9}{'claims/s':>10}  unique")
        for r in rows:
            print(
                f"{r['dialect']:<12}{r['items']:>8}{r['processes']:>7}{r['seconds']:>9.2f}"
                f"{r['claims_per_s']:>10.0f}  {'yes' if r['claims'] == r['unique'] else 'NO'}"
            )
        print(
            f"PostgreSQL target >= {TARGET:.0f} claims/s: "
            f"{'PASS' if passed else 'FAIL'} ({rows[0]['claims_per_s'] / TARGET:.2f}x)"
        )
    return 0 if passed else 1


if __name__ == "__main__":
    raise SystemExit(main())
