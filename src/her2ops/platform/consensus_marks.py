"""The "needs consensus" mark of a core, safe under concurrent votes and consensus runs.

Every vote bumps the core's ``votes_version`` as it sets ``needs_consensus``. A consensus run
reads each core's counter *before* it reads the core's votes, and clears the mark only where the
counter is still the one it read (compare-and-clear): a vote that arrived during the run (committed
or not; PostgreSQL re-checks the condition against the newest row version and waits for an
uncommitted writer) leaves the mark set, so the next run resolves it. Nothing is lost, nothing
is locked for the duration of a run.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from sqlalchemy import text, tuple_, update
from sqlalchemy.orm import Session

from her2ops.platform.schema import Core

CHUNK = 5000


def mark_needs_consensus(session: Session, core_ids: Iterable[int]) -> None:
    """Flag cores whose votes changed (and bump their counter), in primary-key order."""
    ordered = sorted(set(core_ids))
    for i in range(0, len(ordered), CHUNK):
        session.execute(
            update(Core)
            .where(Core.id.in_(ordered[i : i + CHUNK]))
            .values(needs_consensus=True, votes_version=Core.votes_version + 1)
        )


def clear_needs_consensus(session: Session, seen: Mapping[int, int]) -> None:
    """Clear the mark of each core whose counter is still ``seen[core_id]``.

    PostgreSQL: one ``UPDATE ... FROM unnest(ids, versions)`` per chunk (two array parameters,
    as fast as the plain clear); elsewhere ``WHERE (id, votes_version) IN (...)`` row values.
    """
    pairs = sorted(seen.items())
    postgres = session.get_bind().dialect.name == "postgresql"
    for i in range(0, len(pairs), CHUNK):
        chunk = pairs[i : i + CHUNK]
        if postgres:
            session.execute(
                text(
                    "UPDATE cores SET needs_consensus = false "
                    "FROM unnest(CAST(:ids AS bigint[]), CAST(:versions AS integer[])) "
                    "AS seen(id, version) "
                    "WHERE cores.id = seen.id AND cores.votes_version = seen.version"
                ),
                {"ids": [c for c, _ in chunk], "versions": [v for _, v in chunk]},
            )
        else:
            session.execute(
                update(Core)
                .where(tuple_(Core.id, Core.votes_version).in_(chunk))
                .values(needs_consensus=False)
                .execution_options(synchronize_session=False)
            )
