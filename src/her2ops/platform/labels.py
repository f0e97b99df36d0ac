"""Reading labels out: the export table, training snapshots and the agreement statistics.

Reads check the acting user too (``access.PERMISSIONS``): every active user sees the consensus,
but only lab managers, engineers and admins see every pathologist's votes; a pathologist sees
their own votes only, so an export cannot unblind a review.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from her2ops.platform.access import can, require
from her2ops.platform.consensus import label_history
from her2ops.platform.csvio import spreadsheet_safe
from her2ops.platform.schema import LABELLED_STATUSES, ConsensusLabel, Core, Patient, User, Vote
from her2ops.platform.splits import get_split, patient_partitions, show_split
from her2ops.platform.stats import summarize
from her2ops.scores import SCORE_LABELS, parse_vote

EXPORT_COLUMNS = ("core", "patient", "partition", "score", "status", "votes", "agreement")


def export_rows(
    session: Session, *, actor: str | None, split: str | None = None
) -> list[dict[str, Any]]:
    """One row per core: its current consensus, votes (``user:score@round``) and partition.

    A pathologist's export lists their own votes only.
    """
    user = require(session, actor, "labels.read")
    own_votes_only = not can(user, "votes.read_all")
    parts = patient_partitions(session, split) if split else {}
    labels = {
        core_id: (status, score, agreement)
        for core_id, status, score, agreement in session.execute(
            select(
                ConsensusLabel.core_id,
                ConsensusLabel.status,
                ConsensusLabel.score,
                ConsensusLabel.agreement,
            ).where(ConsensusLabel.is_current.is_(True))
        )
    }
    votes: dict[int, list[str]] = defaultdict(list)
    vote_q = (
        select(Vote.core_id, User.username, Vote.score, Vote.round)
        .join(User, User.id == Vote.user_id)
        .order_by(Vote.id)
    )
    if own_votes_only:
        vote_q = vote_q.where(Vote.user_id == user.id)
    for vcore, username, vscore, rnd in session.execute(vote_q):
        votes[vcore].append(f"{username}:{vscore}" + ("" if rnd == "initial" else f"@{rnd}"))
    rows = []
    for core_id, code, patient_id, patient in session.execute(
        select(Core.id, Core.code, Core.patient_id, Patient.code)
        .join(Patient, Patient.id == Core.patient_id)
        .order_by(Core.code)
    ):
        status, score, agreement = labels.get(core_id) or ("unlabelled", None, None)
        rows.append(
            {
                "core": code,
                "patient": patient,
                "partition": parts.get(patient_id, "") if split else "",
                "score": SCORE_LABELS[score] if score is not None else "",
                "status": status,
                "votes": ";".join(votes.get(core_id, [])),
                "agreement": round(agreement, 4) if agreement is not None else "",
            }
        )
    return rows


def export_csv(rows: list[dict[str, Any]]) -> str:
    """The export as CSV text; a cell a spreadsheet would run as a formula (``=``, ``+``, ``-``,
    ``@`` first) gets a leading apostrophe."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(EXPORT_COLUMNS), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: spreadsheet_safe(v) for k, v in row.items()})
    return buf.getvalue()


def history(session: Session, *, actor: str | None, core: str) -> list[Any]:
    """Every version of a core's label, oldest first (any active user)."""
    require(session, actor, "labels.read")
    return label_history(session, core)


def split_summary(session: Session, *, actor: str | None, name: str) -> dict[str, Any]:
    """``splits.show_split`` for any active user."""
    require(session, actor, "splits.read")
    return show_split(session, name)


@dataclass(frozen=True)
class SnapshotItem:
    core: str
    sha256: str
    store_location: str
    label: int
    partition: str
    width: int = 0
    height: int = 0
    patient: str = ""  # the patient's code (ensembles resample training patients)
    page: int = 0  # which image of the file ``sha256`` (0: its only or first one)


def label_snapshot(session: Session, split: str) -> tuple[list[SnapshotItem], str]:
    """The labelled cores of a split with their partition, and a hash of exactly that set.

    The hash identifies what a model was trained and judged on: same hash, same labels.
    """
    get_split(session, split)
    parts = patient_partitions(session, split)
    q = (
        select(
            Core.code,
            Core.sha256,
            Core.store_location,
            Core.patient_id,
            ConsensusLabel.score,
            Core.width,
            Core.height,
            Patient.code,
            Core.page,
        )
        .join(ConsensusLabel, ConsensusLabel.core_id == Core.id)
        .join(Patient, Patient.id == Core.patient_id)
        .where(
            ConsensusLabel.is_current.is_(True),
            ConsensusLabel.status.in_(LABELLED_STATUSES),
        )
        .order_by(Core.code)
    )
    items = [
        SnapshotItem(code, sha, loc or "", int(score), parts[pid], w, h, patient, page)
        for code, sha, loc, pid, score, w, h, patient, page in session.execute(q)
        if pid in parts and score is not None
    ]
    # The page joins a row only when it is not 0, so the hash of a snapshot without multi-page
    # files is the one recorded before pages existed (lineage and retrain checks compare it).
    digest = hashlib.sha256(
        json.dumps(
            [[i.core, i.sha256, i.label, i.partition, *([i.page] if i.page else [])] for i in items]
        ).encode()
    ).hexdigest()
    return items, digest


def stats_summary(session: Session, *, actor: str | None) -> dict[str, Any]:
    """Agreement statistics over the initial votes (each pathologist's latest initial vote).

    Per-pathologist figures: lab managers, engineers and admins only.
    """
    require(session, actor, "stats.read")
    votes: dict[str, dict[str, int | None]] = defaultdict(dict)
    q = (
        select(Core.code, User.username, Vote.score)
        .join(Core, Core.id == Vote.core_id)
        .join(User, User.id == Vote.user_id)
        .where(Vote.round == "initial")
        .order_by(Vote.id)
    )
    for code, username, vote_text in session.execute(q):
        parsed = parse_vote(vote_text)
        votes[code][username] = None if parsed is None else int(parsed)
    consensus: dict[str, int] = {}
    status_counts: Counter[str] = Counter()
    for code, status, score in session.execute(
        select(Core.code, ConsensusLabel.status, ConsensusLabel.score)
        .join(ConsensusLabel, ConsensusLabel.core_id == Core.id)
        .where(ConsensusLabel.is_current.is_(True))
    ):
        status_counts[status] += 1
        if status in LABELLED_STATUSES and score is not None:
            consensus[code] = int(score)
    n_cores = session.scalar(select(func.count()).select_from(Core))
    summary = summarize(votes, consensus, dict(status_counts))
    summary["n_cores"] = int(n_cores or 0)
    summary["status_counts"]["unlabelled"] = int(n_cores or 0) - sum(status_counts.values())
    return summary
