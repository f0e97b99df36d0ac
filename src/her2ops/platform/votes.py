"""Vote import and casting. Votes are append-only: nothing here updates or deletes a vote.

A CSV import is one transaction (all rows or none, every bad row listed). Re-importing is a no-op
*by content*, not by the file's bytes, so a file saved again with other line endings, column
order, blank lines or repeated rows changes nothing:

- an ``initial`` or ``adjudication`` vote is one per (core, pathologist, round): the same score
  again is "unchanged", another score is refused (a changed opinion is a ``review`` vote);
- ``review`` votes may repeat, so their order matters. A pathologist's review rows on a core, in
  file order (repeats of the same score and comment in a row collapsed), form a sequence; each
  vote's ``import_key`` is a hash of the sequence up to it. A sequence or a beginning of it that
  is already recorded is not appended again; only what follows it is. (So a file that only
  repeats an *earlier* review opinion of a pathologist records nothing: cast it instead. And a
  review row skipped with ``--skip-invalid``, fixed and imported again, changes that sequence:
  the review rows after it on the same core by the same pathologist are appended again.)

Rows that carry no order in time (initial and adjudication votes) are written in a canonical
order before the review rows, so reordering them changes nothing either.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import insert, select
from sqlalchemy.orm import Session

from her2ops.imaging.readers import file_sha256
from her2ops.platform import audit
from her2ops.platform.access import require
from her2ops.platform.consensus import check_adjudication, gate_adjudications
from her2ops.platform.consensus_marks import mark_needs_consensus
from her2ops.platform.csvio import read_csv, text_problem
from her2ops.platform.errors import Conflict, ImportRejected, InvalidRequest, NotFound, RowError
from her2ops.platform.schema import VOTE_ROUNDS, Core, User, Vote, utcnow
from her2ops.scores import parse_vote, vote_to_text

VOTER_ROLES = ("pathologist", "admin")
CHUNK = 5000
MAX_COMMENT = 2000


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


def review_key(core: str, pathologist: str, sequence: list[tuple[str, str]]) -> str:
    """Content key of the last review vote of ``sequence`` ((score, comment) pairs in order)."""
    h = hashlib.sha256()
    for part in (core, pathologist):
        h.update(part.encode("utf-8") + b"\x00")
    for score, comment in sequence:
        h.update(score.encode("utf-8") + b"\x1f" + comment.encode("utf-8") + b"\x1e")
    return h.hexdigest()


@dataclass
class _Parsed:
    line: int
    core: str
    who: str
    core_id: int
    user_id: int
    round: str
    score: str
    comment: str | None


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

    core_ids = _id_map(session, {r.get("core") for r in rows if len(r.get("core")) <= 128})
    users = {u.username: (u.id, u.role, u.active) for u in session.scalars(select(User))}

    parsed: list[_Parsed] = []
    for row in rows:
        code, who = row.get("core"), row.get("pathologist")
        key = f"{code[:40]}/{who[:40]}"
        if row.problem:
            errors.append(RowError(row.line, row.problem, key))
            continue
        rnd = (row.get("round") or "initial").lower()
        comment = row.get("comment") or None
        problems = []
        try:
            score = vote_to_text(parse_vote(row.get("score")))
        except ValueError as exc:
            problems.append(str(exc))
            score = ""
        if rnd not in VOTE_ROUNDS:
            problems.append(f"bad round {rnd[:40]!r}: expected one of {', '.join(VOTE_ROUNDS)}")
        if comment is not None and (bad := text_problem("comment", comment, MAX_COMMENT)):
            problems.append(bad)
        core_id = core_ids.get(code)
        if core_id is None:
            problems.append(f"unknown core {code[:128]!r}")
        user = users.get(who)
        if user is None:
            problems.append(f"unknown pathologist {who[:64]!r}")
        elif user[1] not in VOTER_ROLES or not user[2]:
            problems.append(f"user {who!r} is a {user[1]}, not a pathologist")
        if problems:
            errors.append(RowError(row.line, "; ".join(problems), key))
            continue
        assert core_id is not None and user is not None
        parsed.append(_Parsed(row.line, code, who, core_id, user[0], rnd, score, comment))

    # What is already recorded for these cores: (core, user, round) -> score for the rounds that
    # allow one vote, the highest review seq per (core, user), and the review content keys.
    ids = sorted({p.core_id for p in parsed})
    recorded: dict[tuple[int, int, str], str] = {}
    review_seq: dict[tuple[int, int], int] = defaultdict(int)
    keys: set[tuple[int, str]] = set()
    for i in range(0, len(ids), CHUNK):
        q = select(
            Vote.core_id, Vote.user_id, Vote.round, Vote.seq, Vote.score, Vote.import_key
        ).where(Vote.core_id.in_(ids[i : i + CHUNK]))
        for cid, uid, rnd, seq, prior_score, import_key in session.execute(q):
            if rnd == "review":
                review_seq[(cid, uid)] = max(review_seq[(cid, uid)], seq)
            else:
                recorded[(cid, uid, rnd)] = prior_score
            if import_key:
                keys.add((cid, import_key))

    once: list[_Parsed] = []  # initial / adjudication: no order in time
    in_file: dict[tuple[int, int, str], _Parsed] = {}
    sequences: dict[tuple[int, int], list[tuple[str, str]]] = defaultdict(list)
    review: list[tuple[_Parsed, str]] = []  # in file order, with content keys
    for p in parsed:
        if p.round == "review":
            sequence = sequences[(p.core_id, p.user_id)]
            item = (p.score, p.comment or "")
            if sequence and sequence[-1] == item:
                report.unchanged += 1  # the same opinion repeated: nothing new
                continue
            sequence.append(item)
            review.append((p, review_key(p.core, p.who, sequence)))
            continue
        vote_key = (p.core_id, p.user_id, p.round)
        first = in_file.get(vote_key)
        if first is not None:
            if first.score == p.score and first.comment == p.comment:
                report.unchanged += 1  # a repeated row
            else:
                errors.append(
                    RowError(
                        p.line,
                        f"duplicate vote: {p.who} already votes {first.score} on {p.core} "
                        f"in round {p.round} on line {first.line}",
                        f"{p.core}/{p.who}",
                    )
                )
            continue
        in_file[vote_key] = p
        prior = recorded.get(vote_key)
        if prior is not None:
            if prior == p.score:
                report.unchanged += 1
                continue
            errors.append(
                RowError(
                    p.line,
                    f"duplicate vote: {p.who} already voted {prior} on {p.core} in round "
                    f"{p.round}; votes are never overwritten (a changed opinion is a 'review' "
                    "vote)",
                    f"{p.core}/{p.who}",
                )
            )
            continue
        once.append(p)

    now = utcnow()
    new_rows: list[dict[str, object]] = []
    row_lines: list[int] = []
    row_keys: list[str] = []

    def row_of(p: _Parsed, seq: int, import_key: str | None) -> dict[str, object]:
        row_lines.append(p.line)
        row_keys.append(f"{p.core[:40]}/{p.who[:40]}")
        return {
            "core_id": p.core_id,
            "user_id": p.user_id,
            "score": p.score,
            "round": p.round,
            "seq": seq,
            "comment": p.comment,
            "source": f"csv:{digest[:16]}:L{p.line}",
            "import_key": import_key,
            "created_at": now,
        }

    for p in sorted(once, key=lambda p: (p.core_id, p.user_id, p.round)):
        new_rows.append(row_of(p, 0, None))
    for p, key in review:
        if (p.core_id, key) in keys:
            report.unchanged += 1
            continue
        review_seq[(p.core_id, p.user_id)] += 1
        new_rows.append(row_of(p, review_seq[(p.core_id, p.user_id)], key))

    # label policy: who may adjudicate, and which cores (platform.consensus)
    kept, refused = gate_adjudications(session, new_rows, row_lines, row_keys)
    errors = sorted(errors + refused, key=lambda e: e.line)
    if errors and not skip_invalid:
        raise ImportRejected(str(path), errors)
    report.skipped = errors
    new_rows = list(kept)
    touched = {int(r["core_id"]) for r in new_rows}  # type: ignore[call-overload]

    if new_rows:
        for i in range(0, len(new_rows), CHUNK):
            session.execute(insert(Vote), new_rows[i : i + CHUNK])
        mark_needs_consensus(session, touched)
        audit.record(
            session,
            actor=actor_user,
            action="votes.import",
            entity="votes",
            key=str(path)[-256:],
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
    try:
        text = vote_to_text(parse_vote(score))
    except ValueError as exc:
        raise InvalidRequest(str(exc)) from None
    if round not in VOTE_ROUNDS:
        raise InvalidRequest(f"bad round {round!r}: expected one of {', '.join(VOTE_ROUNDS)}")
    if comment is not None and (bad := text_problem("comment", comment, MAX_COMMENT)):
        raise InvalidRequest(bad)
    if bad := text_problem("core", core, 128):
        raise InvalidRequest(bad)
    core_row = session.scalar(select(Core).where(Core.code == core))
    if core_row is None:
        raise NotFound(f"unknown core {core!r}")
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
    mark_needs_consensus(session, {core_row.id})
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
