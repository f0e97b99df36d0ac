"""Patient-level splits in the database: create, extend, show, freeze.

The assignment itself is :mod:`her2ops.platform.split_rules` (pure). A patient's stratum is the
highest current consensus score among their labelled cores (``None`` when none is labelled yet).
A split that a model has trained on is frozen: recreating it is refused and ``extend`` only adds
patients that are not in it yet; nobody ever moves. ``extend`` follows the rule the split was
created with: a ``--balanced-test`` split keeps its test partition class-balanced by core.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

from sqlalchemy import delete, insert, select
from sqlalchemy.orm import Session

from her2ops.platform import audit
from her2ops.platform.access import require
from her2ops.platform.errors import Conflict, InvalidRequest, NotFound
from her2ops.platform.schema import (
    LABELLED_STATUSES,
    AuditEvent,
    ConsensusLabel,
    Core,
    Patient,
    Split,
    SplitAssignment,
    utcnow,
)
from her2ops.platform.split_rules import (
    PARTITIONS,
    assign_balanced_test,
    assign_patients,
    extend_assignment,
    extend_balanced_test,
    partition_balance,
    validate_ratios,
)
from her2ops.scores import SCORE_LABELS

#: Split names (the schema allows 64 characters; no spaces, line breaks or formula prefixes).
SPLIT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def labelled_core_scores(session: Session) -> dict[int, list[tuple[int, int]]]:
    """patient id -> [(core id, score)] for every core with a current training label."""
    q = (
        select(Core.patient_id, Core.id, ConsensusLabel.score)
        .join(ConsensusLabel, ConsensusLabel.core_id == Core.id)
        .where(ConsensusLabel.is_current.is_(True), ConsensusLabel.status.in_(LABELLED_STATUSES))
    )
    out: dict[int, list[tuple[int, int]]] = defaultdict(list)
    for patient_id, core_id, score in session.execute(q):
        if score is not None:
            out[patient_id].append((core_id, int(score)))
    return out


def _strata(
    session: Session, labelled: dict[int, list[tuple[int, int]]] | None = None
) -> tuple[dict[str, int | None], dict[str, list[int]], dict[str, int]]:
    """Each patient's stratum (highest labelled score), labelled scores, and id, by code."""
    patients = dict(session.execute(select(Patient.code, Patient.id)).all())
    if labelled is None:
        labelled = labelled_core_scores(session)
    strata: dict[str, int | None] = {}
    core_scores: dict[str, list[int]] = {}
    for code, pid in patients.items():
        scores = [s for _, s in labelled.get(pid, [])]
        strata[code] = max(scores) if scores else None
        core_scores[code] = scores
    return strata, core_scores, patients


def get_split(session: Session, name: str) -> Split:
    split = session.scalar(select(Split).where(Split.name == name))
    if split is None:
        raise NotFound(f"unknown split {name!r}")
    return split


def create_split(
    session: Session,
    *,
    actor: str | None,
    name: str,
    seed: int,
    ratios: dict[str, float],
    replace: bool = False,
    balanced_test: bool = False,
) -> Split:
    """Assign every patient to a partition. Refused for a frozen split; an unfrozen one is
    replaced only with ``replace``. ``balanced_test``: the test partition is class-balanced by
    core, as the paper's (:func:`~her2ops.platform.split_rules.assign_balanced_test`), and
    ``extend`` keeps it so (recorded in the ``splits.create`` audit event)."""
    user = require(session, actor, "splits.write")
    validate_ratios(ratios)
    if not SPLIT_NAME.match(name):
        raise InvalidRequest(
            f"bad split name {name[:70]!r}: 1-64 letters, digits, '.', '_' or '-', starting "
            "with a letter or digit"
        )
    existing = session.scalar(select(Split).where(Split.name == name))
    if existing is not None:
        if existing.frozen_at is not None:
            raise Conflict(
                f"split {name!r} is frozen ({existing.frozen_reason}); it cannot be "
                "recreated or changed, only extended (her2ops split extend)"
            )
        if not replace:
            raise Conflict(f"split {name!r} exists; pass --replace to recreate it")
        session.execute(delete(SplitAssignment).where(SplitAssignment.split_id == existing.id))
        session.delete(existing)
        session.flush()
    strata, core_scores, ids = _strata(session)
    if balanced_test:
        try:
            assignment = assign_balanced_test(strata, core_scores, ratios, seed)
        except ValueError as exc:
            raise InvalidRequest(str(exc)) from None
    else:
        assignment = assign_patients(strata, ratios, seed, core_scores=core_scores)
    split = Split(name=name, seed=seed, ratios=dict(ratios), created_by_id=user.id)
    session.add(split)
    session.flush()
    rows = [
        {"split_id": split.id, "patient_id": ids[code], "partition": part, "stratum": strata[code]}
        for code, part in assignment.items()
    ]
    if rows:
        session.execute(insert(SplitAssignment), rows)
    audit.record(
        session,
        actor=user,
        action="splits.create",
        entity="split",
        key=name,
        details={
            "seed": seed,
            "ratios": ratios,
            "patients": len(rows),
            "replaced": existing is not None,
            "balanced_test": balanced_test,
        },
    )
    return split


def split_balanced_test(session: Session, split: Split) -> bool:
    """Whether ``split`` was created with a class-balanced test partition.

    Read from the split's latest ``splits.create`` audit event, written in the transaction that
    created this split row (a replaced split's events are older; audit events are append-only).
    Splits created before the flag was audited count as proportional.
    """
    details = session.scalar(
        select(AuditEvent.details)
        .where(
            AuditEvent.action == "splits.create",
            AuditEvent.entity == "split",
            AuditEvent.entity_key == split.name,
        )
        .order_by(AuditEvent.id.desc())
        .limit(1)
    )
    return bool((details or {}).get("balanced_test", False))


def extend_split(session: Session, *, actor: str | None, name: str) -> dict[str, str]:
    """Assign the patients not yet in the split; never moves anyone. Allowed when frozen.

    A split created with ``balanced_test`` is extended by the same rule
    (:func:`~her2ops.platform.split_rules.extend_balanced_test`): newcomers join the test
    partition only while it stays class-balanced by core, the others go to train and val.
    """
    user = require(session, actor, "splits.extend")
    split = get_split(session, name)
    balanced_test = split_balanced_test(session, split)
    strata, core_scores, ids = _strata(session)
    code_of = {v: k for k, v in ids.items()}
    existing = {
        code_of[pid]: part
        for pid, part in session.execute(
            select(SplitAssignment.patient_id, SplitAssignment.partition).where(
                SplitAssignment.split_id == split.id
            )
        )
    }
    new = {c: s for c, s in strata.items() if c not in existing}
    existing_strata = {c: strata[c] for c in existing}
    if balanced_test:
        try:
            added = extend_balanced_test(
                existing,
                new,
                split.ratios,
                split.seed,
                core_scores=core_scores,
                existing_strata=existing_strata,
            )
        except ValueError as exc:
            raise InvalidRequest(str(exc)) from None
    else:
        added = extend_assignment(
            existing,
            new,
            split.ratios,
            split.seed,
            existing_strata=existing_strata,
            core_scores=core_scores,
        )
    if added:
        session.execute(
            insert(SplitAssignment),
            [
                {"split_id": split.id, "patient_id": ids[c], "partition": p, "stratum": strata[c]}
                for c, p in added.items()
            ],
        )
        audit.record(
            session,
            actor=user,
            action="splits.extend",
            entity="split",
            key=name,
            details={"added": len(added), "balanced_test": balanced_test},
        )
    return added


def freeze_split(session: Session, *, name: str, reason: str) -> Split:
    """Mark a split as used by a model (called by the training pipeline)."""
    split = get_split(session, name)
    if split.frozen_at is None:
        split.frozen_at = utcnow()
        split.frozen_reason = reason
        audit.record(
            session,
            actor=None,
            action="splits.freeze",
            entity="split",
            key=name,
            details={"reason": reason},
        )
    return split


def patient_partitions(session: Session, name: str) -> dict[int, str]:
    """patient id -> partition for a split."""
    split = get_split(session, name)
    return dict(
        session.execute(
            select(SplitAssignment.patient_id, SplitAssignment.partition).where(
                SplitAssignment.split_id == split.id
            )
        ).all()
    )


def show_split(session: Session, name: str) -> dict[str, Any]:
    """Sizes and class balance of a split, by patient and by labelled core."""
    split = get_split(session, name)
    labelled = labelled_core_scores(session)
    strata, _, ids = _strata(session, labelled)
    code_of = {v: k for k, v in ids.items()}
    parts = patient_partitions(session, name)
    by_patient = {code_of[pid]: part for pid, part in parts.items()}
    core_assign: dict[str, str] = {}
    core_strata: dict[str, int | None] = {}
    for pid, cores in labelled.items():
        if pid in parts:
            for core_id, score in cores:
                core_assign[str(core_id)] = parts[pid]
                core_strata[str(core_id)] = score
    unassigned = sorted(c for c in strata if c not in by_patient)
    return {
        "name": split.name,
        "seed": split.seed,
        "ratios": split.ratios,
        "created_at": split.created_at.isoformat(),
        "frozen": split.frozen_at is not None,
        "frozen_reason": split.frozen_reason,
        "balanced_test": split_balanced_test(session, split),
        "patients": len(by_patient),
        "unassigned_patients": len(unassigned),
        "by_patient": partition_balance(by_patient, {c: strata[c] for c in by_patient}),
        "by_core": partition_balance(core_assign, core_strata) if core_assign else None,
        "class_counts": class_counts(core_assign, core_strata, split.ratios),
    }


def class_counts(
    core_partitions: dict[str, str],
    core_scores: dict[str, int | None],
    partitions: Iterable[str] = PARTITIONS,
) -> dict[str, dict[str, int]]:
    """Labelled cores per class (all four) in each of ``partitions`` and any other partition a
    core is in, e.g. the paper's test partition is ``{"0": 131, "1+": 131, "2+": 126, "3+":
    135}``."""
    names = set(partitions) | set(core_partitions.values())
    order = [p for p in PARTITIONS if p in names] + sorted(names - set(PARTITIONS))
    out: dict[str, dict[str, int]] = {}
    for part in order:
        scores = [core_scores[c] for c, p in core_partitions.items() if p == part]
        out[part] = {label: scores.count(k) for k, label in enumerate(SCORE_LABELS)}
    return out
