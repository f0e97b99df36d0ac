"""Dashboard first screens at real sizes: 20,000 cores and 100,000 votes in PostgreSQL.

Target (issue 11, item 7): every page's first screen in under 2 s, cold (no cache). For each page
it times the read use cases the first screen calls, and the whole server-side render of the page
through ``streamlit.testing.v1.AppTest`` (script run, use cases, element tree; not the browser's
drawing). A warm run (the per-user cache filled) is printed beside it.

Usage: python benchmarks/bench_dashboard.py [--cores 20000] [--votes-per-core 5]
       [--admin-url postgresql+psycopg://postgres@127.0.0.1:5432/postgres] [--json]
Creates and drops a database of its own. Cores are inserted directly (no images); votes are
spread over 26 weeks; a 0.7/0.1/0.2 split and two model versions with predictions on its test
partition (for the comparison).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import psycopg
from sqlalchemy import insert, select

from her2ops.config import get_settings
from her2ops.platform import migrate
from her2ops.platform.consensus import apply_consensus
from her2ops.platform.curation import add_user
from her2ops.platform.db import reset_engines, session_scope
from her2ops.platform.labels import label_snapshot
from her2ops.platform.schema import Core, ModelVersion, Patient, Prediction, Split, User, Vote
from her2ops.platform.splits import create_split, freeze_split

SCORES = ("0", "1+", "2+", "3+")
TARGET_S = 2.0
PAGES = {
    "curation": ("curation", "lm"),
    "agreement": ("agreement", "lm"),
    "models": ("models", "eng"),
    "jobs": ("jobs", "eng"),
    "core": ("core", "eng"),
    "account": ("account", "p1"),
}


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--cores", type=int, default=20_000)
    ap.add_argument("--votes-per-core", type=int, default=5)
    ap.add_argument("--admin-url", default="postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    dbname = f"her2ops_benchdash_{uuid.uuid4().hex[:8]}"
    dsn = args.admin_url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{dbname}"')
    url = args.admin_url.rsplit("/", 1)[0] + "/" + dbname
    try:
        with tempfile.TemporaryDirectory() as tmp:
            os.environ["HER2OPS_DATABASE_URL"] = url
            os.environ["HER2OPS_DATA_DIR"] = tmp
            get_settings.cache_clear()
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
            f"PostgreSQL on 127.0.0.1; {results['cores']:,} cores, {results['votes']:,} votes "
            f"(data set up in {results['setup_s']:.1f} s)"
        )
        print(
            f"{'page':<10}{'use cases (s)':>14}{'page cold (s)':>15}{'page warm (s)':>15}"
            f"{'target':>8}  verdict"
        )
        for r in results["pages"]:
            print(
                f"{r['page']:<10}{r['use_cases_s']:>14.2f}{r['cold_s']:>15.2f}{r['warm_s']:>15.2f}"
                f"{TARGET_S:>8.1f}  {'PASS' if r['pass'] else 'FAIL'}"
            )
        for name, secs in results["other"].items():
            print(f"  {name}: {secs:.2f} s")
    return 0 if all(r["pass"] for r in results["pages"]) else 1


def populate(url: str, n_cores: int, per_core: int) -> dict[str, Any]:
    """Users, patients, cores, votes over 26 weeks, consensus, a frozen split, two versions."""
    migrate.upgrade(url)
    rng = np.random.default_rng(0)
    pathologists = [f"path{i + 1}" for i in range(per_core)]
    with session_scope(url) as s:
        add_user(s, actor=None, username="admin", role="admin")
        for name, role in (("lm", "lab_manager"), ("eng", "engineer"), ("p1", "pathologist")):
            add_user(s, actor="admin", username=name, role=role)
        for p in pathologists:
            add_user(s, actor="admin", username=p, role="pathologist")
    with session_scope(url) as s:
        users = {u.username: u.id for u in s.scalars(select(User))}
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
                    "status": "failed" if i % 997 == 0 else "ingested",
                    "failure_reason": "not an image" if i % 997 == 0 else None,
                    "needs_consensus": True,
                }
                for i in range(n_cores)
            ],
        )
        truth = rng.choice(4, size=n_cores, p=[0.17, 0.36, 0.21, 0.26])
        start = datetime.now(UTC) - timedelta(weeks=26)
        rows = []
        for i in range(n_cores):
            when = start + timedelta(minutes=int(i * 26 * 7 * 24 * 60 / n_cores))
            for p in pathologists:
                r = rng.random()
                if r < 0.02:
                    score = "ND"
                elif r < 0.27:
                    score = SCORES[int(np.clip(truth[i] + rng.choice((-1, 1)), 0, 3))]
                else:
                    score = SCORES[truth[i]]
                rows.append(
                    {
                        "core_id": i + 1,
                        "user_id": users[p],
                        "score": score,
                        "round": "initial",
                        "seq": 0,
                        "created_at": when,
                    }
                )
        for k in range(0, len(rows), 20_000):
            s.execute(insert(Vote), rows[k : k + 20_000])
    with session_scope(url) as s:
        apply_consensus(s, actor="lm")
    with session_scope(url) as s:
        create_split(
            s, actor="lm", name="main", seed=1, ratios={"train": 0.7, "val": 0.1, "test": 0.2}
        )
        freeze_split(s, name="main", reason="benchmark")
    with session_scope(url) as s:
        items, digest = label_snapshot(s, "main")
        test = [i for i in items if i.partition == "test"]
        ids = dict(s.execute(select(Core.code, Core.id)).all())
        split_id = s.scalar(select(Split.id).where(Split.name == "main"))
        assert split_id is not None
        for v, right in ((1, 0.8), (2, 0.85)):
            mv = ModelVersion(
                name=get_settings().registered_model_name,
                version=v,
                run_id=f"bench-run-{v}",
                profile="paper",
                split_id=split_id,
                label_snapshot_hash=digest,
                code_version="bench",
                aliases=["champion"] if v == 1 else ["challenger"],
                metrics={"test_accuracy": right},
            )
            s.add(mv)
            s.flush()
            preds = []
            for it in test:
                final = it.label if rng.random() < right else (it.label + 1) % 4
                probs = [0.05] * 4
                probs[final] = 0.85
                preds.append(
                    {
                        "core_id": ids[it.core],
                        "model_version_id": mv.id,
                        "n_sets": 20,
                        "top_k": 5,
                        "seed": 0,
                        "confidence": "margin",
                        "final_score": final,
                        "kcs_probs": probs,
                        "set_probs": [probs] * 20,
                        "kcs_indices": [0, 1, 2, 3, 4],
                    }
                )
            s.execute(insert(Prediction), preds)
    return {"test_cores": len(test), "votes": n_cores * per_core}


def timed(fn: Any, **kwargs: Any) -> float:
    t = time.perf_counter()
    fn(**kwargs)
    return time.perf_counter() - t


def page_times(module: str, user: str, role: str, query: dict[str, str]) -> tuple[float, float]:
    """Cold and warm server-side render of one page (fresh session each; cache cleared first)."""
    from streamlit.testing.v1 import AppTest

    from her2ops.dashboards.ui import clear_cache

    def once() -> float:
        at = AppTest.from_string(
            f"from her2ops.dashboards.{module} import render\nrender()", default_timeout=120
        )
        at.session_state["her2ops_user"] = {"username": user, "role": role}
        for k, v in query.items():
            at.query_params[k] = v
        t = time.perf_counter()
        at.run()
        secs = time.perf_counter() - t
        if at.exception:
            raise RuntimeError(f"page {module} failed: {at.exception[0].message}")
        return secs

    clear_cache()
    once()  # imports and Streamlit's first-run costs, not the page's
    clear_cache()
    cold = once()
    warm = once()
    return cold, warm


def run(url: str, n_cores: int, per_core: int) -> dict[str, Any]:
    from her2ops.pipelines import auth
    from her2ops.pipelines import dashboard_queries as q
    from her2ops.pipelines import jobs as jobs_uc

    t = time.perf_counter()
    info = populate(url, n_cores, per_core)
    setup_s = time.perf_counter() - t
    auth.set_password(actor="admin", username="eng", password="benchmark-password")
    roles = {"lm": "lab_manager", "eng": "engineer", "p1": "pathologist"}

    use_cases = {
        "curation": lambda: sum(
            (
                timed(q.curation_overview, actor="lm"),
                timed(q.activity_by_week, actor="lm"),
                timed(q.split_balance, actor="lm", split="main"),
            )
        ),
        "agreement": lambda: timed(q.agreement, actor="lm"),
        "models": lambda: timed(q.model_overview, actor="eng"),
        "jobs": lambda: (
            timed(q.submittable_kinds, actor="eng") + timed(jobs_uc.list_jobs, actor="eng")
        ),
        "core": lambda: timed(q.core_detail, actor="eng", core="C000123"),
        "account": lambda: timed(q.readable_areas, actor="p1"),
    }
    queries = {"core": {"core": "C000123"}}
    pages = []
    for page, (module, user) in PAGES.items():
        uc = use_cases[page]()
        cold, warm = page_times(module, user, roles[user], queries.get(page, {}))
        pages.append(
            {
                "page": page,
                "use_cases_s": uc,
                "cold_s": cold,
                "warm_s": warm,
                "pass": cold <= TARGET_S,
            }
        )
    other = {
        "login (argon2 verify + audit)": timed(
            auth.login, username="eng", password="benchmark-password"
        ),
        f"compare two versions on {info['test_cores']:,} test cores (on click)": timed(
            q.compare_models, actor="eng", a="1", b="2"
        ),
        "label export CSV (on click)": timed(q.label_export_csv, actor="lm", split="main"),
    }
    return {
        "cores": n_cores,
        "votes": info["votes"],
        "setup_s": setup_s,
        "pages": pages,
        "other": other,
        "python": sys.version.split()[0],
    }


if __name__ == "__main__":
    sys.exit(main())
