"""Curation use cases: users, ingest, votes, consensus, labels, stats.

Each function takes plain values and the acting user, opens its own unit of work on the
runtime's database and returns a plain result (a report with ``to_dict()``, a dict or a list of
dicts) that every adapter can render or serialise.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from her2ops.errors import InvalidRequest, NotFound
from her2ops.pipelines import admin
from her2ops.pipelines.progress import Progress, no_progress, track
from her2ops.pipelines.runtime import get_runtime
from her2ops.platform import consensus as consensus_service
from her2ops.platform import curation as curation_service
from her2ops.platform import labels as labels_service
from her2ops.platform import votes as votes_service
from her2ops.platform.consensus import ConsensusReport
from her2ops.platform.curation import IngestReport
from her2ops.platform.votes import VoteImportReport
from her2ops.scores import SCORE_LABELS

EXPORT_FORMATS = ("csv", "json")


def add_user(
    *, actor: str | None, username: str, role: str, password: str | None = None
) -> dict[str, Any]:
    """Add a user (the first one bootstraps; then only an admin adds users)."""
    with get_runtime().session() as s:
        user = admin.add_user(s, actor=actor, username=username, role=role, password=password)
        return {"username": user.username, "role": user.role}


def list_users(*, actor: str | None) -> list[dict[str, Any]]:
    """Every user with role and whether the account is active (any active user)."""
    with get_runtime().session() as s:
        return curation_service.list_users(s, actor=actor)


def ingest(
    *,
    actor: str | None,
    manifest: Path,
    skip_invalid: bool = False,
    progress: Progress = no_progress,
) -> IngestReport:
    """Validate a manifest's rows and images, store the images, record the cores (atomic)."""
    rt = get_runtime()
    report: IngestReport = rt.transaction(
        lambda s: curation_service.ingest_manifest(
            s,
            actor=actor,
            manifest=manifest,
            store=rt.store,
            max_pixels=rt.settings.max_image_pixels,
            skip_invalid=skip_invalid,
            progress=lambda items: track(items, progress, "validating and storing images"),
        ),
        what="ingest",
    )
    report.profile_fits = _profile_fits(report.added)
    return report


def _profile_fits(codes: list[str]) -> dict[str, list[str]]:
    """core code -> the profiles whose PSS geometry it fits (no degenerate or missing level)."""
    from sqlalchemy import select

    from her2ops.imaging.fit import fitting_profiles
    from her2ops.platform.schema import Core
    from her2ops.profiles import geometries

    if not codes:
        return {}
    geo = geometries()
    out: dict[str, list[str]] = {}
    with get_runtime().session() as s:
        for start in range(0, len(codes), 500):
            rows = s.execute(
                select(Core.code, Core.width, Core.height).where(
                    Core.code.in_(codes[start : start + 500])
                )
            )
            for code, w, h in rows:
                out[code] = fitting_profiles(int(w), int(h), geo) if w and h else []
    return out


def import_votes(*, actor: str | None, path: Path, skip_invalid: bool = False) -> VoteImportReport:
    """Append the votes of a CSV file (atomic; re-importing the same votes changes nothing)."""
    return get_runtime().transaction(
        lambda s: votes_service.import_votes(s, actor=actor, path=path, skip_invalid=skip_invalid),
        what="votes import",
    )


def cast_vote(
    *, actor: str | None, core: str, score: str, round: str = "review", comment: str | None = None
) -> dict[str, Any]:
    """One vote by the acting pathologist."""
    vote = get_runtime().transaction(
        lambda s: votes_service.cast_vote(
            s, actor=actor, core=core, score=score, round=round, comment=comment
        ),
        what="votes cast",
    )
    return {"core": core, "score": vote.score, "round": vote.round}


def run_consensus(
    *,
    actor: str | None,
    all_cores: bool = False,
    min_agreement: int | None = None,
    min_votes: int | None = None,
) -> ConsensusReport:
    """Apply the voting protocol to the cores whose votes changed (or all of them), with the
    lab's policy from settings (other parameters: admins only, audited)."""
    return get_runtime().transaction(
        lambda s: consensus_service.apply_consensus(
            s, actor=actor, all_cores=all_cores, min_agreement=min_agreement, min_votes=min_votes
        ),
        what="consensus",
    )


def reopen_core(*, actor: str | None, core: str, reason: str | None = None) -> dict[str, Any]:
    """Reopen a core for adjudication (lab managers; audited): its new label version."""
    with get_runtime().session() as s:
        label = consensus_service.reopen_core(s, actor=actor, core=core, reason=reason)
        return {"core": core, "version": label.version, "status": label.status}


def label_history(*, actor: str | None, core: str) -> list[dict[str, Any]]:
    """Every version of a core's consensus label, oldest first."""
    with get_runtime().session() as s:
        rows = [
            {
                "version": r.version,
                "status": r.status,
                "score": SCORE_LABELS[r.score] if r.score is not None else None,
                "n_votes": r.n_votes,
                "agreement": r.agreement,
                "current": r.is_current,
                "at": r.created_at.isoformat(),
            }
            for r in labels_service.history(s, actor=actor, core=core)
        ]
    if not rows:
        raise NotFound(f"no labels for core {core!r}")
    return rows


def export_labels(*, actor: str | None, split: str | None = None) -> list[dict[str, Any]]:
    """One row per core: core, patient, partition, score, status, votes, agreement."""
    with get_runtime().session() as s:
        return labels_service.export_rows(s, actor=actor, split=split)


def render_export(rows: list[dict[str, Any]], fmt: str) -> str:
    """The export as CSV or JSON text."""
    if fmt not in EXPORT_FORMATS:
        raise InvalidRequest(f"--format must be csv or json, not {fmt!r}")
    if fmt == "json":
        return json.dumps(rows, indent=2) + "\n"
    return labels_service.export_csv(rows)  # formula-like cells escaped


def agreement_stats(*, actor: str | None) -> dict[str, Any]:
    """Fleiss' kappa, pairwise weighted kappa, agreement with consensus, counts."""
    with get_runtime().session() as s:
        return labels_service.stats_summary(s, actor=actor)
