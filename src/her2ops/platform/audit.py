"""Append-only audit events, written in the same transaction as the change they record."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from her2ops.platform.schema import AuditEvent, User


def record(
    session: Session,
    *,
    actor: User | None,
    action: str,
    entity: str,
    key: str | None = None,
    details: dict[str, Any] | None = None,
) -> AuditEvent:
    """Add one audit event (flushed with the caller's transaction)."""
    event = AuditEvent(
        actor_id=actor.id if actor else None,
        action=action,
        entity=entity,
        entity_key=key,
        details=details,
    )
    session.add(event)
    return event
