"""The dashboards' read models on SQLite and PostgreSQL: figures checked against the tables,
McNemar's test against statsmodels, and the role check each use case makes itself."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from sqlalchemy import select
from statsmodels.stats.contingency_tables import mcnemar as sm_mcnemar

from her2ops.errors import InvalidRequest, NotFound, PermissionDenied
from her2ops.pipelines import dashboard_queries as q
from her2ops.platform.db import session_scope
from her2ops.platform.schema import ConsensusLabel, Core, Vote
from tests.dashboard_world import EVIL_COMMENT, EVIL_CORE, World, build_world


@pytest.fixture
def tables_world(db_url: str) -> World:
    return build_world(n_patients=16, mlflow=False)


def test_curation_overview_matches_the_tables(tables_world: World) -> None:
    with session_scope() as s:
        cores = list(s.execute(select(Core.code, Core.status)))
        current = list(
            s.execute(
                select(ConsensusLabel.status, ConsensusLabel.score).where(
                    ConsensusLabel.is_current.is_(True)
                )
            )
        )
        n_votes = len(list(s.scalars(select(Vote.id))))
    out = q.curation_overview(actor="lm")
    assert out["n_cores"] == len(cores)
    assert out["n_votes"] == n_votes
    assert out["core_status"] == dict(Counter(st for _, st in cores))
    statuses = Counter(st for st, _ in current)
    statuses["unlabelled"] = len(cores) - len(current)
    assert out["label_status"] == dict(statuses)
    labels = ("0", "1+", "2+", "3+")
    expected_scores = Counter(
        labels[sc] for st, sc in current if st in ("agreed", "adjudicated") and sc is not None
    )
    assert out["score_counts"] == {lab: expected_scores.get(lab, 0) for lab in labels}
    assert out["needs_adjudication"]["total"] == statuses["needs_adjudication"] > 0
    assert len(out["needs_adjudication"]["cores"]) == statuses["needs_adjudication"]
    assert out["ingest_failures"] == {
        "total": 1,
        "cores": [{"core": "C-failed", "reason": "<script>alert('x')</script> not an image"}],
    }
    assert set(out["splits"]) == {"main", "other"}


def test_activity_by_week_counts_every_vote_and_label(tables_world: World) -> None:
    weeks = q.activity_by_week(actor="lm")
    with session_scope() as s:
        n_votes = len(list(s.scalars(select(Vote.id))))
        n_labels = len(
            list(
                s.scalars(
                    select(ConsensusLabel.id).where(
                        ConsensusLabel.status.in_(("agreed", "adjudicated"))
                    )
                )
            )
        )
    assert sum(w["votes"] for w in weeks) == n_votes
    assert sum(w["labels"] for w in weeks) == n_labels
    assert [w["week"] for w in weeks] == sorted({w["week"] for w in weeks})


def test_split_balance_equals_split_show(tables_world: World) -> None:
    from her2ops.platform.splits import show_split

    for name in ("main", "other"):
        with session_scope() as s:
            reference = show_split(s, name)
        assert q.split_balance(actor="lm", split=name) == reference
    bal = q.split_balance(actor="lm", split="main")
    assert bal["frozen"] is True
    assert sum(p["n"] for p in bal["by_patient"]["partitions"].values()) == bal["patients"] == 16
    with pytest.raises(NotFound):
        q.split_balance(actor="lm", split="nope")


def test_agreement_counted_in_sql_equals_the_stats_module(tables_world: World) -> None:
    """The SQL aggregation gives her2ops stats' figures, also with ND votes, a rater who voted
    on a few cores only (Fleiss then skips cores) and a pair that shares no core."""
    from her2ops.platform.curation import add_user
    from her2ops.platform.labels import stats_summary
    from her2ops.platform.schema import User

    with session_scope() as s:
        add_user(s, actor="admin", username="p4", role="pathologist")
        add_user(s, actor="admin", username="p5", role="pathologist")
    with session_scope() as s:
        uid = {u.username: u.id for u in s.scalars(select(User))}
        cores = list(s.scalars(select(Core.id).where(Core.status == "ingested").order_by(Core.id)))
        rng = np.random.default_rng(7)
        for cid in cores[:9]:  # p4: a few cores, some ND
            score = str(rng.choice(["0", "1+", "2+", "3+", "ND"]))
            s.add(Vote(core_id=cid, user_id=uid["p4"], score=score, round="initial", seq=0))
        for cid in cores[-3:]:  # p5 never shares a core with p4
            s.add(Vote(core_id=cid, user_id=uid["p5"], score="ND", round="initial", seq=0))
    with session_scope() as s:
        reference = stats_summary(s, actor="lm")
    fast = q.agreement(actor="lm")
    assert fast["raters"] == reference["raters"] == ["p1", "p2", "p3", "p4", "p5"]
    for key in ("n_subjects", "n_raters", "n_skipped"):
        assert fast["fleiss"][key] == reference["fleiss"][key]
    assert fast["fleiss"]["kappa"] == pytest.approx(reference["fleiss"]["kappa"])
    ref_pairs = reference["pairwise_cohen"]["pairs"]
    assert [(p["rater_a"], p["rater_b"], p["n"]) for p in fast["pairwise_cohen"]["pairs"]] == [
        (p["rater_a"], p["rater_b"], p["n"]) for p in ref_pairs
    ]
    for mine, ref in zip(fast["pairwise_cohen"]["pairs"], ref_pairs, strict=True):
        assert mine["kappa"] == pytest.approx(ref["kappa"], nan_ok=True)
    ref_agree = reference["agreement_with_consensus"]
    assert fast["agreement_with_consensus"].keys() == ref_agree.keys()
    for who, row in fast["agreement_with_consensus"].items():
        assert row == pytest.approx(ref_agree[who], nan_ok=True)


def test_label_export_and_core_detail_keep_text_as_typed(tables_world: World) -> None:
    csv_text = q.label_export_csv(actor="lm", split="main")
    assert csv_text.splitlines()[0] == "core,patient,partition,score,status,votes,agreement"
    assert EVIL_CORE in csv_text
    detail = q.core_detail(actor="eng", core=EVIL_CORE)
    assert detail["core"] == EVIL_CORE
    assert [v["comment"] for v in detail["votes"] if v["pathologist"] == "p1"] == [EVIL_COMMENT]
    assert detail["image"].shape == (256, 256, 3)  # the store's top level (<= 512 px)
    assert q.core_detail(actor="eng", core="C001-0")["image"] is None  # not in the store
    with pytest.raises(NotFound):
        q.core_detail(actor="eng", core="no-such-core")


@pytest.mark.parametrize(
    ("actor", "allowed"),
    [
        ("lm", {"curation", "cores", "jobs"}),
        ("eng", {"models", "cores", "jobs"}),
        ("p1", set()),
        ("admin", {"curation", "models", "cores", "jobs"}),
    ],
)
def test_each_read_checks_the_role_itself(
    tables_world: World, actor: str, allowed: set[str]
) -> None:
    reads = {
        "curation": [
            lambda: q.curation_overview(actor=actor),
            lambda: q.activity_by_week(actor=actor),
            lambda: q.agreement(actor=actor),
            lambda: q.split_balance(actor=actor, split="main"),
            lambda: q.label_export_csv(actor=actor),
        ],
        "models": [
            lambda: q.model_overview(actor=actor),
            lambda: q.compare_models(actor=actor, a="1", b="2"),
            lambda: q.ensembles(actor=actor),
        ],
        "cores": [lambda: q.core_detail(actor=actor, core="C001-0", thumbnail=False)],
        "jobs": [lambda: q.submittable_kinds(actor=actor)],
    }
    for area, calls in reads.items():
        for call in calls:
            if area in allowed:
                call()
            else:
                with pytest.raises(PermissionDenied):
                    call()
    assert set(q.readable_areas(actor=actor)["areas"]) == allowed


def test_unknown_or_missing_user_reads_nothing(tables_world: World) -> None:
    with pytest.raises(NotFound):
        q.curation_overview(actor="mallory")
    with pytest.raises(PermissionDenied):
        q.model_overview(actor=None)


def test_compare_models_counts_and_mcnemar(tables_world: World) -> None:
    w = tables_world
    out = q.compare_models(actor="eng", a="1", b="2")
    cores = sorted(w.truth)
    y = np.array([w.truth[c] for c in cores])
    pa = np.array([w.preds[1][c] for c in cores])
    pb = np.array([w.preds[2][c] for c in cores])
    assert out["cores"] == len(cores)
    assert out["frozen"] is True and out["split"] == "main"
    assert out["versions"][0]["accuracy"] == pytest.approx(np.mean(pa == y))
    assert out["versions"][1]["accuracy"] == pytest.approx(np.mean(pb == y))
    differ = {c for c in cores if w.preds[1][c] != w.preds[2][c]}
    assert {d["core"] for d in out["differ"]} == differ
    table = [
        [np.sum((pa == y) & (pb == y)), np.sum((pa == y) & (pb != y))],
        [np.sum((pa != y) & (pb == y)), np.sum((pa != y) & (pb != y))],
    ]
    ref = sm_mcnemar(table, exact=True)
    assert out["mcnemar"]["p_value"] == pytest.approx(ref.pvalue)
    assert out["mcnemar"]["only_a_correct"] == table[0][1]
    assert out["mcnemar"]["only_b_correct"] == table[1][0]
    with pytest.raises(InvalidRequest, match="different splits"):
        q.compare_models(actor="eng", a="1", b="3")
    with pytest.raises(InvalidRequest, match="two different"):
        q.compare_models(actor="eng", a="2", b="challenger")


@pytest.mark.parametrize(
    ("b", "c", "n_same"), [(0, 0, 5), (3, 1, 10), (12, 2, 30), (40, 25, 100), (7, 7, 3)]
)
def test_mcnemar_matches_statsmodels(b: int, c: int, n_same: int) -> None:
    a_right = np.array([True] * b + [False] * c + [True] * n_same)
    b_right = np.array([False] * b + [True] * c + [True] * n_same)
    out = q.mcnemar(a_right, b_right)
    ref = sm_mcnemar([[n_same, b], [c, 0]], exact=True)
    assert out["p_value"] == pytest.approx(ref.pvalue)
    if b + c:
        chi = sm_mcnemar([[n_same, b], [c, 0]], exact=False, correction=True)
        assert out["chi2"] == pytest.approx(chi.statistic)


def test_ensembles_are_the_succeeded_ensemble_jobs(tables_world: World) -> None:
    from her2ops.platform.schema import Job, Split

    with session_scope() as s:
        for status, members in (("succeeded", [1, 2]), ("failed", None)):
            s.add(
                Job(
                    kind="ensemble",
                    queue="cpu",
                    status=status,
                    params={"split": "main", "members": 2, "profile": "test"},
                    idempotency_key=f"ens-{status}",
                    result={"members": [{"version": v} for v in members]} if members else None,
                    max_attempts=1,
                )
            )
        assert s.scalar(select(Split.id).where(Split.name == "main"))
    out = q.ensembles(actor="eng")
    assert [(e["split"], e["members"]) for e in out] == [("main", [1, 2])]
