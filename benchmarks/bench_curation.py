"""Curation at scale on PostgreSQL: import 100,000 votes for 20,000 cores, then consensus.

Targets (issue 2): import <= 20 s, consensus <= 10 s, on this machine's PostgreSQL.
Usage: python benchmarks/bench_curation.py [--cores 20000] [--votes-per-core 5]
       [--admin-url postgresql+psycopg://postgres@127.0.0.1:5432/postgres] [--json]
Creates and drops a database of its own. Cores are inserted directly (no images): the benchmark
measures the vote import and the protocol, not image decoding.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import psycopg
from sqlalchemy import insert

from her2ops.platform import migrate
from her2ops.platform.consensus import apply_consensus
from her2ops.platform.curation import add_user
from her2ops.platform.db import reset_engines, session_scope
from her2ops.platform.schema import Core, Patient
from her2ops.platform.votes import import_votes

SCORES = ("0", "1+", "2+", "3+")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cores", type=int, default=20_000)
    ap.add_argument("--votes-per-core", type=int, default=5)
    ap.add_argument("--admin-url", default="postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    dbname = f"her2ops_bench_{uuid.uuid4().hex[:8]}"
    dsn = args.admin_url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{dbname}"')
    url = args.admin_url.rsplit("/", 1)[0] + "/" + dbname
    try:
        results = run(url, args.cores, args.votes_per_core)
    finally:
        reset_engines()
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        print(
            f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
            f"PostgreSQL on 127.0.0.1"
        )
        print(f"{'step':<28}{'rows':>10}{'seconds':>10}{'target':>10}{'ratio':>8}  verdict")
        for r in results["steps"]:
            print(
                f"{r['step']:<28}{r['rows']:>10}{r['seconds']:>10.2f}{r['target_s']:>10.1f}"
                f"{r['seconds'] / r['target_s']:>8.2f}  {'PASS' if r['pass'] else 'FAIL'}"
            )
    return 0 if all(r["pass"] for r in results["steps"]) else 1


def run(url: str, n_cores: int, per_core: int) -> dict[str, object]:
    migrate.upgrade(url)
    rng = np.random.default_rng(0)
    pathologists = [f"path{i + 1}" for i in range(per_core)]
    with session_scope(url) as s:
        add_user(s, actor=None, username="admin", role="admin")
        add_user(s, actor="admin", username="lm", role="lab_manager")
        for p in pathologists:
            add_user(s, actor="admin", username=p, role="pathologist")
    t = time.perf_counter()
    with session_scope(url) as s:
        n_patients = n_cores // 2
        s.execute(insert(Patient), [{"code": f"P{i:06d}"} for i in range(n_patients)])
        s.execute(
            insert(Core),
            [
                {
                    "code": f"C{i:06d}",
                    "patient_id": i // 2 + 1,
                    "source_path": "-",
                    "sha256": f"{i:064d}",
                    "width": 1,
                    "height": 1,
                    "status": "ingested",
                    "needs_consensus": False,
                }
                for i in range(n_cores)
            ],
        )
    setup_s = time.perf_counter() - t

    truth = rng.choice(4, size=n_cores, p=[0.17, 0.36, 0.21, 0.26])
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "votes.csv"
        with path.open("w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(("core", "pathologist", "score"))
            for i in range(n_cores):
                for p in pathologists:
                    # adjacent-class errors 25% of the time, ND 2%
                    r = rng.random()
                    if r < 0.02:
                        score = "ND"
                    elif r < 0.27:
                        score = SCORES[int(np.clip(truth[i] + rng.choice((-1, 1)), 0, 3))]
                    else:
                        score = SCORES[truth[i]]
                    w.writerow((f"C{i:06d}", p, score))
        t = time.perf_counter()
        with session_scope(url) as s:
            report = import_votes(s, actor="lm", path=path)
        import_s = time.perf_counter() - t
    t = time.perf_counter()
    with session_scope(url) as s:
        cons = apply_consensus(s, actor="lm")
    consensus_s = time.perf_counter() - t
    steps = [
        {"step": "import votes", "rows": report.added, "seconds": import_s, "target_s": 20.0},
        {
            "step": "consensus (all dirty)",
            "rows": cons.evaluated,
            "seconds": consensus_s,
            "target_s": 10.0,
        },
    ]
    for st in steps:
        st["pass"] = st["seconds"] <= st["target_s"]
    return {
        "cores": n_cores,
        "votes": report.added,
        "setup_s": setup_s,
        "steps": steps,
        "by_status": cons.by_status,
        "python": sys.version.split()[0],
    }


if __name__ == "__main__":
    sys.exit(main())
