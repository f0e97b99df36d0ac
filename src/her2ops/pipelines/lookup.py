"""Small cross-layer look-ups used by several entry points."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import select

from her2ops.config import get_settings
from her2ops.platform.db import session_scope
from her2ops.platform.errors import NotFound
from her2ops.platform.schema import Core


def core_location(code: str) -> tuple[str, Path]:
    """(sha256, store root) of an ingested core, by core code."""
    settings = get_settings()
    with session_scope() as session:
        sha = session.scalar(select(Core.sha256).where(Core.code == code))
    if sha is None:
        raise NotFound(f"unknown core {code!r}")
    return sha, settings.resolved_store_dir
