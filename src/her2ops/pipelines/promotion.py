"""Promotion with a reason: the dashboards' promote, on top of ``pipelines.models.promote_model``.

An engineer gives ``champion`` to a version with a written reason. The candidate must have been
trained (and so evaluated) on the same split, hence the same frozen test partition, as the
current champion; otherwise the promotion is refused unless forced, and a forced promotion says
so in its audit event. The alias move itself (MLflow first, then the table, undone in MLflow if
the table fails) are ``promote_model``'s, which audits the reason as a ``models.promote_reason``
event in the same transaction as the alias move's ``models.promote`` event.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from her2ops.errors import Conflict, InvalidRequest
from her2ops.pipelines.models import promote_model
from her2ops.pipelines.runtime import get_runtime
from her2ops.platform.access import require
from her2ops.platform.registry import resolve_ref
from her2ops.platform.schema import ModelVersion, Split

MAX_REASON = 2000


def promote_with_reason(
    *, actor: str | None, ref: str, reason: str, force: bool = False, alias: str = "champion"
) -> dict[str, Any]:
    """Move ``alias`` to ``ref`` with ``reason`` (required), audited; see the module docstring."""
    reason = reason.strip()
    if not reason:
        raise InvalidRequest("a promotion needs a reason")
    if len(reason) > MAX_REASON:
        raise InvalidRequest(f"a reason has at most {MAX_REASON} characters")
    rt = get_runtime()
    name = rt.settings.registered_model_name
    with rt.session() as s:
        require(s, actor, "models.promote")
        candidate = resolve_ref(s, ref, name=name)
        current: ModelVersion | None = None
        for mv in s.scalars(select(ModelVersion).where(ModelVersion.name == name)):
            if alias in (mv.aliases or []):
                current = mv
        if current is not None and current.id == candidate.id:
            raise Conflict(f"v{candidate.version} is already {alias}")
        other_split = current is not None and current.split_id != candidate.split_id
        if other_split and current is not None:
            cand_split = s.get(Split, candidate.split_id)
            cur_split = s.get(Split, current.split_id)
            if not force:
                raise Conflict(
                    f"v{candidate.version} was evaluated on split "
                    f"{cand_split.name if cand_split else '?'}, the {alias} "
                    f"v{current.version} on {cur_split.name if cur_split else '?'}: their test "
                    "partitions differ, so their figures are not comparable; force it with a "
                    "reason if you mean it"
                )
        version = candidate.version
    forced = bool(force and other_split)
    result = promote_model(
        actor=actor,
        ref=str(version),
        alias=alias,
        reason={"reason": reason, "forced": forced},
    )
    return {**result, "reason": reason, "forced": forced}
