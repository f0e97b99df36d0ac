"""Vote import and casting. Votes are append-only: nothing here updates or deletes a vote.

A CSV import is one transaction (all rows or none, every bad row listed) and re-running the same
file is a no-op: an initial or adjudication vote identical to the recorded one is "unchanged",
and a review vote is recognised by its source (file digest and line), since review votes may
legitimately repeat.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import insert, select, update
from sqlalchemy.orm import Session

from her2ops.errors import InvalidRequest
from her2ops.imaging.readers import file_sha256
from her2ops.platform import audit
from her2ops.platform.access import require
from her2ops.platform.consensus import check_adjudication, gate_adjudications
from her2ops.platform.csvio import read_csv
from her2ops.platform.errors import Conflict, ImportRejected, NotFound, RowError
from her2ops.platform.schema import VOTE_ROUNDS, Core, User, Vote, utcnow
from her2ops.scores import parse_vote, vote_to_text

VOTER_ROLES = ("pathologist", "admin")
CHUNK = 5000


@dataclass
class VoteImportReport:
    source: str
    added: int = 0
    unchanged: int = 0
    skipped: list[RowError] = field(default_factory=list)
    cores_touched: int = 0

    def to_dict(self) -> dict[str, object]:
        return {
            "source": self.source,
            "added": self.added,
            "unchanged": self.unchanged,
            "cores_touched": self.cores_touched,
            "skipped": [{"line": e.line, "key": e.key, "reason": e.reason} for e in self.skipped],
        }


def _id_map(session: Session, codes: set[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    ordered = sorted(codes)
    for i in range(0, len(ordered), CHUNK):
        chunk = ordered[i : i + CHUNK]
        out.update(
            dict(session.execute(select(Core.code, Core.id).where(Core.code.in_(chunk))).all())
        )
    return out


def import_votes(
    session: Session, *, actor: str | None, path: Path, skip_invalid: bool = False
) -> VoteImportReport:
    """Import ``core, pathologist, score[, round, comment]`` rows as votes (bulk statements)."""
    actor_user = require(session, actor, "votes.import")
    path = path.resolve()
    rows = read_csv(path, required=("core", "pathologist", "score"), optional=("round", "comment"))
    digest = file_sha256(path)
    report = VoteImportReport(source=str(path))
    errors: list[RowError] = []

    core_ids = _id_map(session, {r.get("core") for r in rows})
    users = {u.username: (u.id, u.role, u.active) for u in session.scalars(select(User))}

    # What is already recorded for these cores: (core, user, round) -> score for the rounds that
    # allow one vote, the highest review seq per (core, user), and the sources already imported.
    recorded: dict[tuple[int, int, str], tuple[str, str | None]] = {}
    review_seq: dict[tuple[int, int], int] = defaultdict(int)
    sources: set[str] = set()
    ids = sorted(set(core_ids.values()))
    for i in range(0, len(ids), CHUNK):
        q = select(
            Vote.core_id, Vote.user_id, Vote.round, Vote.seq, Vote.score, Vote.comment, Vote.source
        ).where(Vote.core_id.in_(ids[i : i + CHUNK]))
        for cid, uid, rnd, seq, prior_score, comment, source in session.execute(q):
            if rnd == "review":
                review_seq[(cid, uid)] = max(review_seq[(cid, uid)], seq)
            else:
                recorded[(cid, uid, rnd)] = (prior_score, comment)
            if source:
                sources.add(source)

    new_rows: list[dict[str, object]] = []
    row_lines: list[int] = []
    row_keys: list[str] = []
    in_file: dict[tuple[int, int, str], int] = {}
    now = utcnow()
    for row in rows:
        code, who = row.get("core"), row.get("pathologist")
        key = f"{code}/{who}"
        rnd = (row.get("round") or "initial").lower()
        comment = row.get("comment") or None
        problems = []
        try:
            score = vote_to_text(parse_vote(row.get("score")))
        except ValueError as exc:
            problems.append(str(exc))
            score = ""
        if rnd not in VOTE_ROUNDS:
            problems.append(f"bad round {rnd!r}: expected one of {', '.join(VOTE_ROUNDS)}")
        core_id = core_ids.get(code)
        if core_id is None:
            problems.append(f"unknown core {code!r}")
        user = users.get(who)
        if user is None:
            problems.append(f"unknown pathologist {who!r}")
        elif user[1] not in VOTER_ROLES or not user[2]:
            problems.append(f"user {who!r} is a {user[1]}, not a pathologist")
        if problems:
            errors.append(RowError(row.line, "; ".join(problems), key))
            continue
        assert core_id is not None and user is not None
        source = f"csv:{digest[:16]}:L{row.line}"
        if rnd == "review":
            if source in sources:
                report.unchanged += 1
                continue
            review_seq[(core_id, user[0])] += 1
            seq = review_seq[(core_id, user[0])]
        else:
            vote_key = (core_id, user[0], rnd)
            if vote_key in in_file:
                errors.append(
                    RowError(
                        row.line,
                        f"duplicate vote: {who} already votes on {code} "
                        f"in round {rnd} on line {in_file[vote_key]}",
                        key,
                    )
                )
                continue
            in_file[vote_key] = row.line
            prior = recorded.get(vote_key)
            if prior is not None:
                if prior[0] == score:
                    report.unchanged += 1
                    continue
                errors.append(
                    RowError(
                        row.line,
                        f"duplicate vote: {who} already voted {prior[0]} on {code} in round {rnd}; "
                        "votes are never overwritten (a changed opinion is a 'review' vote)",
                        key,
                    )
                )
                continue
            seq = 0
        new_rows.append(
            {
                "core_id": core_id,
                "user_id": user[0],
                "score": score,
                "round": rnd,
                "seq": seq,
                "comment": comment,
                "source": source,
                "created_at": now,
            }
        )
        row_lines.append(row.line)
        row_keys.append(key)

    # label policy: who may adjudicate, and which cores (platform.consensus)
    kept, refused = gate_adjudications(session, new_rows, row_lines, row_keys)
    errors = sorted(errors + refused, key=lambda e: e.line)
    new_rows, touched = list(kept), {int(r["core_id"]) for r in kept}
    if errors and not skip_invalid:
        raise ImportRejected(str(path), errors)
    report.skipped = errors
    if new_rows:
        session.execute(insert(Vote), new_rows)
        _mark_dirty(session, touched)
        audit.record(
            session,
            actor=actor_user,
            action="votes.import",
            entity="votes",
            key=str(path),
            details={
                "sha256": digest,
                "added": len(new_rows),
                "unchanged": report.unchanged,
                "skipped": len(errors),
                "cores": len(touched),
            },
        )
    report.added = len(new_rows)
    report.cores_touched = len(touched)
    return report


def _mark_dirty(session: Session, core_ids: set[int]) -> None:
    ordered = sorted(core_ids)
    for i in range(0, len(ordered), CHUNK):
        session.execute(
            update(Core).where(Core.id.in_(ordered[i : i + CHUNK])).values(needs_consensus=True)
        )


def cast_vote(
    session: Session,
    *,
    actor: str | None,
    core: str,
    score: str,
    round: str = "review",
    comment: str | None = None,
    source: str | None = None,
) -> Vote:
    """One pathologist's vote on one core (the review queue uses round ``review``)."""
    user = require(session, actor, "votes.cast")
    core_row = session.scalar(select(Core).where(Core.code == core))
    if core_row is None:
        raise NotFound(f"unknown core {core!r}")
    text = vote_to_text(parse_vote(score))
    if round not in VOTE_ROUNDS:
        raise InvalidRequest(f"bad round {round!r}: expected one of {', '.join(VOTE_ROUNDS)}")
    if round == "adjudication":
        check_adjudication(session, core_id=core_row.id, core=core, voter=user.username)
    seq = 0
    if round == "review":
        prev = session.scalars(
            select(Vote.seq).where(
                Vote.core_id == core_row.id, Vote.user_id == user.id, Vote.round == "review"
            )
        ).all()
        seq = max(prev, default=0) + 1
    else:
        existing = session.scalar(
            select(Vote).where(
                Vote.core_id == core_row.id, Vote.user_id == user.id, Vote.round == round
            )
        )
        if existing is not None:
            raise Conflict(
                f"{user.username} already voted {existing.score} on {core} in round "
                f"{round}; votes are never overwritten (cast a 'review' vote)"
            )
    vote = Vote(
        core_id=core_row.id,
        user_id=user.id,
        score=text,
        round=round,
        seq=seq,
        comment=comment,
        source=source,
    )
    session.add(vote)
    _mark_dirty(session, {core_row.id})
    session.flush()
    audit.record(
        session,
        actor=user,
        action="votes.cast",
        entity="core",
        key=core,
        details={"score": text, "round": round, "vote_id": vote.id},
    )
    return vote
