"""Model versions: our table mirrors MLflow's registry and adds lineage; aliases; references.

A model reference is ``champion``, ``challenger`` (aliases), a version number, or an MLflow
run id. Promotion moves an alias in MLflow and then in the table (audited); the MLflow side lives
in ``her2ops.tracking`` and the use case that orders the two steps in ``pipelines.models``.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from her2ops.platform import audit
from her2ops.platform.access import require
from her2ops.platform.errors import InvalidRequest, NotFound
from her2ops.platform.schema import ModelVersion, Split

ALIASES = ("champion", "challenger")


def resolve_ref(session: Session, ref: str, *, name: str) -> ModelVersion:
    """The model version ``ref`` names; NotFound with the known versions otherwise."""
    ref = ref.strip()
    q = select(ModelVersion).where(ModelVersion.name == name)
    mv: ModelVersion | None = None
    if ref in ALIASES or ref.startswith("@"):
        alias = ref.lstrip("@")
        for cand in session.scalars(q.order_by(ModelVersion.version.desc())):
            if alias in (cand.aliases or []):
                mv = cand
                break
    elif ref.isdigit():
        mv = session.scalar(q.where(ModelVersion.version == int(ref)))
    else:
        mv = session.scalar(q.where(ModelVersion.run_id == ref))
    if mv is None:
        known = [
            f"v{v.version}" + (f" ({', '.join(v.aliases)})" if v.aliases else "")
            for v in session.scalars(q.order_by(ModelVersion.version))
        ]
        raise NotFound(
            f"unknown model reference {ref!r} for {name!r}; known: "
            + (", ".join(known) if known else "none (train one with: her2ops train)")
        )
    return mv


def set_alias(session: Session, mv: ModelVersion, alias: str) -> None:
    """Move ``alias`` to ``mv`` in the table (the caller moves it in MLflow too)."""
    for other in session.scalars(select(ModelVersion).where(ModelVersion.name == mv.name)):
        if alias in (other.aliases or []) and other.id != mv.id:
            other.aliases = [a for a in other.aliases if a != alias]
    if alias not in (mv.aliases or []):
        mv.aliases = [*(mv.aliases or []), alias]


def record_alias(session: Session, *, actor: str | None, ref: str, name: str, alias: str) -> int:
    """Move ``alias`` to the version ``ref`` names in the table, audited; the version number.

    Only the database step: the caller moves the alias in MLflow first and moves it back if
    this step fails (see ``pipelines.models.promote_model``).
    """
    user = require(session, actor, "models.promote")
    if alias not in ALIASES:
        raise InvalidRequest(f"unknown alias {alias!r}; aliases: {', '.join(ALIASES)}")
    mv = resolve_ref(session, ref, name=name)
    previous = [
        v.version
        for v in session.scalars(select(ModelVersion).where(ModelVersion.name == name))
        if alias in (v.aliases or [])
    ]
    set_alias(session, mv, alias)
    session.flush()
    audit.record(
        session,
        actor=user,
        action="models.promote",
        entity="model_version",
        key=f"{name}/{mv.version}",
        details={"alias": alias, "previous": previous},
    )
    return mv.version


def list_versions(session: Session, *, name: str) -> list[dict[str, Any]]:
    """Every version with lineage and headline metrics, newest first."""
    rows = session.execute(
        select(ModelVersion, Split.name)
        .join(Split, Split.id == ModelVersion.split_id)
        .where(ModelVersion.name == name)
        .order_by(ModelVersion.version.desc())
    ).all()
    return [
        {
            "version": mv.version,
            "aliases": mv.aliases or [],
            "run_id": mv.run_id,
            "profile": mv.profile,
            "split": split_name,
            "label_snapshot_hash": mv.label_snapshot_hash,
            "code_version": mv.code_version,
            "metrics": mv.metrics or {},
            "created_at": mv.created_at.isoformat(),
        }
        for mv, split_name in rows
    ]
