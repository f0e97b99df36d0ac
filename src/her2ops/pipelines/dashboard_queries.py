"""Read models of the dashboards: what each page shows, as plain dicts, each checking the role.

Pages never query the database; they call these. Every function takes the acting user and checks
that user's role itself (the navigation and the page check it too, but neither is the guard).
Aggregations run in SQL where the rows are many (20,000 cores, 100,000 votes): counts are
grouped in the database and only per-day totals or short lists come back.

Who reads what (admins read everything):

- ``curation``: counts, progress, agreement, adjudication list, failures, split balance, the
  label export: lab managers.
- ``models``: versions, metrics, comparisons: engineers.
- ``jobs``: the jobs page (the jobs use cases check each action's own permission): engineers
  and lab managers.
- ``cores``: one core in full (its votes, label history, predictions, image): lab managers and
  engineers. Not pathologists: the review queue shows them cores blinded.
"""

from __future__ import annotations

from collections import Counter
from datetime import date, datetime, timedelta
from typing import Any

import numpy as np
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from her2ops.errors import InvalidRequest, NotFound, PermissionDenied
from her2ops.pipelines.runtime import get_runtime
from her2ops.platform import labels as labels_service
from her2ops.platform import splits as split_service
from her2ops.platform.access import get_user
from her2ops.platform.schema import (
    LABELLED_STATUSES,
    ConsensusLabel,
    Core,
    ModelVersion,
    Patient,
    Prediction,
    Split,
    User,
    Vote,
)
from her2ops.scores import SCORE_LABELS

#: area -> roles that may read it (admins may read everything).
READ_ROLES: dict[str, tuple[str, ...]] = {
    "curation": ("lab_manager",),
    "models": ("engineer",),
    "cores": ("lab_manager", "engineer"),
    "jobs": ("engineer", "lab_manager"),
}
#: Rows of the lists on the first screen (the totals are always complete).
LIST_LIMIT = 200


def _reader(session: Session, actor: str | None, area: str) -> User:
    """The acting user if their role may read ``area``; PermissionDenied otherwise."""
    user = get_user(session, actor)
    allowed = READ_ROLES[area]
    if user.role != "admin" and user.role not in allowed:
        raise PermissionDenied(
            f"user {user.username!r} (role {user.role}) may not read {area}; "
            f"needs role {' or '.join(allowed)}"
        )
    return user


def readable_areas(*, actor: str | None) -> dict[str, Any]:
    """The acting user's name, role and the areas they may read (the navigation's source)."""
    with get_runtime().session() as s:
        user = get_user(s, actor)
        areas = [a for a, roles in READ_ROLES.items() if user.role == "admin" or user.role in roles]
        return {"username": user.username, "role": user.role, "areas": areas}


def dashboard_ready() -> dict[str, Any]:
    """Check the database before the dashboards start (one-line error if it is unusable) and
    count the active users who can log in (those with a password)."""
    rt = get_runtime()
    with rt.session() as s:
        users = int(s.scalar(select(func.count()).select_from(User).where(User.active)) or 0)
        with_password = int(
            s.scalar(
                select(func.count())
                .select_from(User)
                .where(User.active, User.password_hash.is_not(None))
            )
            or 0
        )
    return {"users": users, "users_with_password": with_password}


def submittable_kinds(*, actor: str | None) -> list[dict[str, Any]]:
    """The job kinds the acting user's role may submit, with their parameters (for a form)."""
    from her2ops.pipelines.job_kinds import available_kinds
    from her2ops.platform.access import can

    with get_runtime().session() as s:
        user = _reader(s, actor, "jobs")
        return [
            {
                "kind": spec.name,
                "required": list(spec.required),
                "params": [
                    {"name": name, "help": p.help, "type": p.type_name}
                    for name, p in spec.params.items()
                ],
            }
            for spec in available_kinds().values()
            if can(user, spec.permission)
        ]


# --- curation ---------------------------------------------------------------------------------


def curation_overview(*, actor: str | None) -> dict[str, Any]:
    """Counts by core status, label status and score; cores needing adjudication; failures."""
    with get_runtime().session() as s:
        _reader(s, actor, "curation")
        core_status = dict(s.execute(select(Core.status, func.count()).group_by(Core.status)).all())
        n_cores = int(sum(core_status.values()))
        label_rows = s.execute(
            select(ConsensusLabel.status, ConsensusLabel.score, func.count())
            .where(ConsensusLabel.is_current.is_(True))
            .group_by(ConsensusLabel.status, ConsensusLabel.score)
        ).all()
        label_status: Counter[str] = Counter()
        scores: Counter[str] = Counter()
        for status, score, n in label_rows:
            label_status[status] += int(n)
            if status in LABELLED_STATUSES and score is not None:
                scores[SCORE_LABELS[int(score)]] += int(n)
        label_status["unlabelled"] = n_cores - sum(label_status.values())
        adjudication = s.execute(
            select(Core.code, ConsensusLabel.n_votes, ConsensusLabel.agreement)
            .join(ConsensusLabel, ConsensusLabel.core_id == Core.id)
            .where(
                ConsensusLabel.is_current.is_(True),
                ConsensusLabel.status == "needs_adjudication",
            )
            .order_by(Core.code)
            .limit(LIST_LIMIT)
        ).all()
        failures = s.execute(
            select(Core.code, Core.failure_reason)
            .where(Core.status == "failed")
            .order_by(Core.code)
            .limit(LIST_LIMIT)
        ).all()
        n_votes = int(s.scalar(select(func.count()).select_from(Vote)) or 0)
        splits = list(s.scalars(select(Split.name).order_by(Split.created_at.desc())))
    return {
        "n_cores": n_cores,
        "n_votes": n_votes,
        "core_status": {k: int(v) for k, v in core_status.items()},
        "label_status": dict(label_status),
        "score_counts": {label: scores.get(label, 0) for label in SCORE_LABELS},
        "needs_adjudication": {
            "total": label_status.get("needs_adjudication", 0),
            "cores": [{"core": c, "votes": int(n), "agreement": a} for c, n, a in adjudication],
        },
        "ingest_failures": {
            "total": int(core_status.get("failed", 0)),
            "cores": [{"core": c, "reason": r or ""} for c, r in failures],
        },
        "splits": splits,
    }


def _week(day: date) -> str:
    """The Monday starting ``day``'s ISO week, as YYYY-MM-DD."""
    return (day - timedelta(days=day.weekday())).isoformat()


def _as_date(value: Any) -> date:
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    return date.fromisoformat(str(value)[:10])


def activity_by_week(*, actor: str | None) -> list[dict[str, Any]]:
    """Votes cast and training labels created (new label versions) per week, oldest first."""
    with get_runtime().session() as s:
        _reader(s, actor, "curation")
        vote_days = s.execute(
            select(func.date(Vote.created_at), func.count()).group_by(func.date(Vote.created_at))
        ).all()
        label_days = s.execute(
            select(func.date(ConsensusLabel.created_at), func.count())
            .where(ConsensusLabel.status.in_(LABELLED_STATUSES))
            .group_by(func.date(ConsensusLabel.created_at))
        ).all()
    weeks: dict[str, dict[str, int]] = {}
    for rows, key in ((vote_days, "votes"), (label_days, "labels")):
        for day, n in rows:
            if day is None:
                continue
            w = weeks.setdefault(_week(_as_date(day)), {"votes": 0, "labels": 0})
            w[key] += int(n)
    return [{"week": w, **weeks[w]} for w in sorted(weeks)]


def agreement(*, actor: str | None) -> dict[str, Any]:
    """Fleiss' kappa, pairwise quadratic-weighted Cohen's kappa (ND excluded) and each
    pathologist's agreement with the consensus, over the initial votes.

    The same figures as ``her2ops stats`` (``platform.stats``, whose rules this follows: Fleiss
    over the cores with the modal number of raters, ND a category of its own there; a test
    checks it against ``stats_summary``), but counted in the database: one query pivots each
    core's initial votes into a row (one column per rater, plus the consensus score) and counts
    the distinct rows, so a few thousand patterns come back instead of every vote.
    """
    from sqlalchemy import case

    with get_runtime().session() as s:
        _reader(s, actor, "curation")
        names = dict(s.execute(select(User.id, User.username)).all())
        rater_ids = sorted(
            s.scalars(select(Vote.user_id).where(Vote.round == "initial").distinct()),
            key=lambda u: names[u],
        )
        patterns: list[tuple[tuple[int | None, ...], int | None, int]] = []
        if rater_ids:
            cols = [
                func.max(case((Vote.user_id == uid, Vote.score))).label(f"r{i}")
                for i, uid in enumerate(rater_ids)
            ]
            per_core = (
                select(Vote.core_id, *cols)
                .where(Vote.round == "initial")
                .group_by(Vote.core_id)
                .subquery()
            )
            label = (
                select(ConsensusLabel.core_id, ConsensusLabel.score)
                .where(
                    ConsensusLabel.is_current.is_(True),
                    ConsensusLabel.status.in_(LABELLED_STATUSES),
                )
                .subquery()
            )
            rcols = [per_core.c[f"r{i}"] for i in range(len(rater_ids))]
            for row in s.execute(
                select(*rcols, label.c.score, func.count())
                .select_from(per_core)
                .outerjoin(label, label.c.core_id == per_core.c.core_id)
                .group_by(*rcols, label.c.score)
            ):
                votes = tuple(None if v is None else _CATEGORY[v] for v in row[:-2])
                patterns.append((votes, row[-2], int(row[-1])))
    raters = [names[u] for u in rater_ids]
    return {
        "raters": raters,
        "fleiss": _fleiss(patterns),
        "pairwise_cohen": {
            "weights": "quadratic",
            "nd_excluded": True,
            "pairs": [
                {"rater_a": raters[i], "rater_b": raters[j], **_weighted_kappa(patterns, i, j)}
                for i in range(len(raters))
                for j in range(i + 1, len(raters))
            ],
        },
        "agreement_with_consensus": {
            who: _agreement_row(patterns, i) for i, who in enumerate(raters)
        },
    }


#: Vote text -> category index; ND is index 4 (a category of its own for Fleiss only).
_CATEGORY = {"0": 0, "1+": 1, "2+": 2, "3+": 3, "ND": 4}
_ND = 4
Pattern = tuple[tuple[int | None, ...], int | None, int]  # votes per rater, consensus, cores


def _fleiss(patterns: list[Pattern]) -> dict[str, Any]:
    by_size: Counter[int] = Counter()
    for votes, _, count in patterns:
        by_size[sum(v is not None for v in votes)] += count
    n_voted = sum(by_size.values())
    candidates = {n: k for n, k in by_size.items() if n >= 2}
    if not candidates:
        return {"kappa": None, "n_subjects": 0, "n_raters": 0, "n_skipped": n_voted}
    m = max(candidates, key=lambda n: (candidates[n], n))
    used, sq, totals = 0, 0.0, np.zeros(len(_CATEGORY))
    for votes, _, count in patterns:
        cats = [v for v in votes if v is not None]
        if len(cats) != m:
            continue
        per = np.bincount(cats, minlength=len(_CATEGORY))
        used += count
        sq += count * float((per * per).sum())
        totals += count * per
    p_cat = totals / totals.sum()
    p_mean = (sq - used * m) / (used * m * (m - 1.0))
    p_exp = float((p_cat * p_cat).sum())
    kappa = None if p_exp == 1.0 else float((p_mean - p_exp) / (1.0 - p_exp))
    return {"kappa": kappa, "n_subjects": used, "n_raters": m, "n_skipped": n_voted - used}


def _weighted_kappa(patterns: list[Pattern], a: int, b: int) -> dict[str, Any]:
    """Quadratic-weighted Cohen's kappa of raters ``a`` and ``b`` over the cores both scored
    (ND dropped), as ``platform.stats.cohen_kappa`` with labels 0..3."""
    table = np.zeros((4, 4))
    for votes, _, count in patterns:
        x, y = votes[a], votes[b]
        if x is not None and y is not None and x != _ND and y != _ND:
            table[x, y] += count
    n = int(table.sum())
    if n == 0:
        return {"kappa": None, "n": 0}
    expected = np.outer(table.sum(axis=1), table.sum(axis=0)) / n
    grid = np.broadcast_to(np.arange(4, dtype=np.float64), (4, 4))
    w = (grid - grid.T) ** 2
    denominator = float((w * expected).sum())
    kappa = None if denominator == 0.0 else float(1.0 - (w * table).sum() / denominator)
    return {"kappa": kappa, "n": n}


def _agreement_row(patterns: list[Pattern], r: int) -> dict[str, Any]:
    """One rater against the consensus over the labelled cores they voted on (ND: wrong)."""
    n = agree = near = 0
    for votes, truth, count in patterns:
        v = votes[r]
        if v is None or truth is None:
            continue
        n += count
        if v != _ND:
            agree += count if v == truth else 0
            near += count if abs(v - truth) <= 1 else 0
    return {
        "n": n,
        "agree": agree,
        "rate": agree / n if n else None,
        "within_one_rate": near / n if n else None,
    }


def split_balance(*, actor: str | None, split: str) -> dict[str, Any]:
    """Sizes and class balance per partition of ``split``, by patient and by labelled core.

    The figures of ``her2ops split show`` (``platform.splits.show_split``: a patient's class is
    its highest current training label; a test checks the two agree), counted with GROUP BYs in
    the database and laid out by the same ``partition_balance``.
    """
    from her2ops.platform.schema import SplitAssignment
    from her2ops.platform.split_rules import partition_balance

    with get_runtime().session() as s:
        _reader(s, actor, "curation")
        sp = split_service.get_split(s, split)
        labelled = (
            select(Core.patient_id, Core.id.label("core_id"), ConsensusLabel.score)
            .join(ConsensusLabel, ConsensusLabel.core_id == Core.id)
            .where(
                ConsensusLabel.is_current.is_(True),
                ConsensusLabel.status.in_(LABELLED_STATUSES),
                ConsensusLabel.score.is_not(None),
            )
            .subquery()
        )
        top = (
            select(labelled.c.patient_id, func.max(labelled.c.score).label("score"))
            .group_by(labelled.c.patient_id)
            .subquery()
        )
        assigned = select(SplitAssignment.patient_id, SplitAssignment.partition).where(
            SplitAssignment.split_id == sp.id
        )
        a = assigned.subquery()
        by_patient = s.execute(
            select(a.c.partition, top.c.score, func.count())
            .select_from(a)
            .outerjoin(top, top.c.patient_id == a.c.patient_id)
            .group_by(a.c.partition, top.c.score)
        ).all()
        by_core = s.execute(
            select(a.c.partition, labelled.c.score, func.count())
            .select_from(a)
            .join(labelled, labelled.c.patient_id == a.c.patient_id)
            .group_by(a.c.partition, labelled.c.score)
        ).all()
        n_patients = int(s.scalar(select(func.count()).select_from(Patient)) or 0)
        ratios = dict(sp.ratios)
        info = {
            "name": sp.name,
            "seed": sp.seed,
            "ratios": sp.ratios,
            "created_at": sp.created_at.isoformat(),
            "frozen": sp.frozen_at is not None,
            "frozen_reason": sp.frozen_reason,
            "balanced_test": split_service.split_balanced_test(s, sp),
        }
    patients = sum(int(n) for _, _, n in by_patient)
    core_units = _units(by_core)
    return {
        **info,
        "patients": patients,
        "unassigned_patients": n_patients - patients,
        "by_patient": partition_balance(*_units(by_patient)),
        "by_core": partition_balance(*core_units) if by_core else None,
        "class_counts": split_service.class_counts(*core_units, ratios),
    }


def _units(counts: Any) -> tuple[dict[str, str], dict[str, int | None]]:
    """(partition, class, count) rows as the per-unit mappings ``partition_balance`` and
    ``class_counts`` take (numbered units stand in for the counted ones)."""
    assignment: dict[str, str] = {}
    strata: dict[str, int | None] = {}
    for partition, cls, n in counts:
        for i in range(int(n)):
            unit = f"{partition}/{cls}/{i}"
            assignment[unit] = partition
            strata[unit] = None if cls is None else int(cls)
    return assignment, strata


def label_export_csv(*, actor: str | None, split: str | None = None) -> str:
    """The label export (one row per core) as CSV text, for a download."""
    from her2ops.pipelines.curation import render_export

    with get_runtime().session() as s:
        _reader(s, actor, "curation")
        rows = labels_service.export_rows(s, actor=actor, split=split)
    return render_export(rows, "csv")


# --- cores ------------------------------------------------------------------------------------


def core_detail(*, actor: str | None, core: str, thumbnail: bool = True) -> dict[str, Any]:
    """One core in full: patient, status, votes, label history, predictions and a whole-core
    view (the store's top pyramid level, at most 512 px on a side) as an RGB array."""
    with get_runtime().session() as s:
        _reader(s, actor, "cores")
        row = s.execute(
            select(Core, Patient.code)
            .join(Patient, Patient.id == Core.patient_id)
            .where(Core.code == core)
        ).first()
        if row is None:
            raise NotFound(f"unknown core {core!r}")
        c, patient = row
        votes = [
            {"pathologist": u, "score": sc, "round": r, "comment": cm or "", "at": at.isoformat()}
            for u, sc, r, cm, at in s.execute(
                select(User.username, Vote.score, Vote.round, Vote.comment, Vote.created_at)
                .join(User, User.id == Vote.user_id)
                .where(Vote.core_id == c.id)
                .order_by(Vote.id)
            )
        ]
        history = [
            {
                "version": lab.version,
                "status": lab.status,
                "score": SCORE_LABELS[lab.score] if lab.score is not None else None,
                "votes": lab.n_votes,
                "current": lab.is_current,
            }
            for lab in s.scalars(
                select(ConsensusLabel)
                .where(ConsensusLabel.core_id == c.id)
                .order_by(ConsensusLabel.version)
            )
        ]
        preds = [
            {
                "version": v,
                "n_sets": p.n_sets,
                "top_k": p.top_k,
                "seed": p.seed,
                "score": SCORE_LABELS[p.final_score],
                "probabilities": [round(float(x), 4) for x in p.kcs_probs],
            }
            for p, v in s.execute(
                select(Prediction, ModelVersion.version)
                .join(ModelVersion, ModelVersion.id == Prediction.model_version_id)
                .where(Prediction.core_id == c.id)
                .order_by(ModelVersion.version)
            )
        ]
        out: dict[str, Any] = {
            "core": c.code,
            "patient": patient,
            "status": c.status,
            "failure_reason": c.failure_reason,
            "width": c.width,
            "height": c.height,
            "votes": votes,
            "labels": history,
            "predictions": preds,
            "image": None,
        }
        sha, page = c.sha256, c.page
    if thumbnail:
        store = get_runtime().store
        if store.has(sha, page):
            with store.open(sha, page, core=core) as img:
                out["image"] = img.read_level(len(img.level_shapes) - 1)
    return out


# --- models -----------------------------------------------------------------------------------


def model_overview(*, actor: str | None) -> list[dict[str, Any]]:
    """Registered versions (newest first) with lineage, headline metrics, and the evaluation
    the ``evaluate`` use case left on disk (full metrics, confusion matrix, plot files)."""
    import json

    from her2ops.platform.registry import list_versions

    rt = get_runtime()
    name = rt.settings.registered_model_name
    with rt.session() as s:
        _reader(s, actor, "models")
        versions = list_versions(s, name=name)
    for v in versions:
        folder = rt.settings.data_dir / "evaluations" / f"{name}-v{v['version']}"
        evaluation: dict[str, Any] | None = None
        metrics_file = folder / "test_metrics.json"
        if metrics_file.is_file():
            data = json.loads(metrics_file.read_text())
            evaluation = {
                "partition": data.get("partition"),
                "cores": data.get("cores"),
                "n_sets": data.get("n_sets"),
                "top_k": data.get("top_k"),
                "table": data.get("table", []),
                "confusion_matrix": (data.get("metrics") or {}).get("confusion_matrix"),
            }
        v["evaluation"] = evaluation
        v["plots"] = {
            kind: str(folder / f)
            for kind, f in (
                ("confusion", "test_confusion.png"),
                ("roc", "test_roc.png"),
                ("study", "study.png"),
            )
            if (folder / f).is_file()
        }
    return versions


def ensembles(*, actor: str | None) -> list[dict[str, Any]]:
    """Trained ensembles (succeeded ``ensemble`` jobs): id, split, profile, member versions."""
    from her2ops.platform.schema import Job

    with get_runtime().session() as s:
        _reader(s, actor, "models")
        return [
            {
                "ensemble": job.id,
                "split": (job.params or {}).get("split"),
                "profile": (job.params or {}).get("profile"),
                "members": _members(job.result),
                "finished": job.finished_at.isoformat() if job.finished_at else None,
            }
            for job in s.scalars(
                select(Job)
                .where(Job.kind == "ensemble", Job.status == "succeeded")
                .order_by(Job.id.desc())
            )
        ]


def _members(result: dict[str, Any] | None) -> list[int]:
    members = (result or {}).get("members") or []
    return [int(m["version"]) for m in members]


def _protocol_of(session: Session, mv: ModelVersion) -> tuple[int, int, int, str] | None:
    """The (N, k, seed, confidence) under which ``mv`` scored the most cores, or None."""
    row = session.execute(
        select(
            Prediction.n_sets,
            Prediction.top_k,
            Prediction.seed,
            Prediction.confidence,
            func.count(),
        )
        .where(Prediction.model_version_id == mv.id)
        .group_by(Prediction.n_sets, Prediction.top_k, Prediction.seed, Prediction.confidence)
        .order_by(func.count().desc())
        .limit(1)
    ).first()
    return None if row is None else (int(row[0]), int(row[1]), int(row[2]), str(row[3]))


def mcnemar(a_correct: np.ndarray, b_correct: np.ndarray) -> dict[str, Any]:
    """McNemar's paired test of two classifiers on the same cases.

    ``b`` counts cases only A got right, ``c`` those only B got right. The p-value is the exact
    two-sided binomial test of b against Binomial(b + c, 1/2) (exact at any size); the
    continuity-corrected chi-square statistic is reported beside it.
    """
    from scipy.stats import binomtest

    a = np.asarray(a_correct, dtype=bool)
    b_ = np.asarray(b_correct, dtype=bool)
    if a.shape != b_.shape:
        raise InvalidRequest("McNemar's test needs the same cases for both models")
    only_a = int(np.sum(a & ~b_))
    only_b = int(np.sum(~a & b_))
    n = only_a + only_b
    p = 1.0 if n == 0 else float(binomtest(only_a, n, 0.5).pvalue)
    chi2 = 0.0 if n == 0 else (abs(only_a - only_b) - 1) ** 2 / n
    return {"only_a_correct": only_a, "only_b_correct": only_b, "chi2": chi2, "p_value": p}


def compare_models(*, actor: str | None, a: str, b: str, partition: str = "test") -> dict[str, Any]:
    """Two versions side by side on the same partition of the same (frozen) split.

    Both must have been trained on one split; each is read under the protocol it scored most
    cores with (``her2ops evaluate`` writes those predictions). The truth is the current
    consensus of the partition's labelled cores; only cores both versions scored are compared.
    Returns each version's accuracy, McNemar's test and the cores where the two differ.
    """
    from her2ops.platform.registry import resolve_ref

    rt = get_runtime()
    name = rt.settings.registered_model_name
    with rt.session() as s:
        _reader(s, actor, "models")
        mva = resolve_ref(s, a, name=name)
        mvb = resolve_ref(s, b, name=name)
        if mva.id == mvb.id:
            raise InvalidRequest(f"pick two different versions (both are v{mva.version})")
        if mva.split_id != mvb.split_id:
            raise InvalidRequest(
                f"v{mva.version} and v{mvb.version} were trained on different splits; they can "
                "only be compared on the same frozen test partition"
            )
        split = s.get(Split, mva.split_id)
        assert split is not None
        items, snapshot_hash = labels_service.label_snapshot(s, split.name)
        truth = {i.core: i.label for i in items if i.partition == partition}
        if not truth:
            raise InvalidRequest(f"split {split.name!r} has no labelled {partition} cores")
        preds: list[dict[str, int]] = []
        protocols: list[tuple[int, int, int, str] | None] = []
        for mv in (mva, mvb):
            proto = _protocol_of(s, mv)
            protocols.append(proto)
            if proto is None:
                raise InvalidRequest(
                    f"v{mv.version} has scored no cores: run 'her2ops evaluate {mv.version} "
                    f"--split {split.name}' first"
                )
            n, k, seed, conf = proto
            preds.append(
                {
                    code: int(final)
                    for code, final in s.execute(
                        select(Core.code, Prediction.final_score)
                        .join(Core, Core.id == Prediction.core_id)
                        .where(
                            Prediction.model_version_id == mv.id,
                            Prediction.n_sets == n,
                            Prediction.top_k == k,
                            Prediction.seed == seed,
                            Prediction.confidence == conf,
                        )
                    )
                    if code in truth
                }
            )
        frozen = split.frozen_at is not None
        va, vb = mva.version, mvb.version
        snap_a, snap_b = mva.label_snapshot_hash, mvb.label_snapshot_hash
    common = sorted(set(preds[0]) & set(preds[1]))
    if not common:
        raise InvalidRequest(
            f"no {partition} core was scored by both v{va} and v{vb}: evaluate both first"
        )
    y = np.array([truth[c] for c in common])
    pa = np.array([preds[0][c] for c in common])
    pb = np.array([preds[1][c] for c in common])
    differ = [
        {
            "core": c,
            "label": SCORE_LABELS[truth[c]],
            f"v{va}": SCORE_LABELS[preds[0][c]],
            f"v{vb}": SCORE_LABELS[preds[1][c]],
            "right": (
                f"v{va}"
                if preds[0][c] == truth[c]
                else f"v{vb}"
                if preds[1][c] == truth[c]
                else "neither"
            ),
        }
        for c in common
        if preds[0][c] != preds[1][c]
    ]
    return {
        "split": split.name,
        "partition": partition,
        "frozen": frozen,
        "labels_now": snapshot_hash,
        "versions": [
            {
                "version": v,
                "protocol": dict(zip(("n_sets", "top_k", "seed", "confidence"), p, strict=True))
                if p
                else None,
                "accuracy": float(np.mean(pred == y)),
                "trained_on_labels_now": snap == snapshot_hash,
            }
            for v, p, pred, snap in ((va, protocols[0], pa, snap_a), (vb, protocols[1], pb, snap_b))
        ],
        "cores": len(common),
        "not_scored_by_both": len(truth) - len(common),
        "mcnemar": mcnemar(pa == y, pb == y),
        "differ": differ,
    }
