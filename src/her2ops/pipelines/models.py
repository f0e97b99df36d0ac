"""Model registry use cases: list versions, promote (move an alias).

Promotion changes two systems, MLflow's registry and the ``model_versions`` table. It is never
done inside an open database transaction: the MLflow alias moves first; then the table is
updated in its own transaction; if that fails, the MLflow alias is moved back to where it was.
If the MLflow step fails, the table is untouched.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from her2ops.errors import InvalidRequest
from her2ops.pipelines.runtime import get_runtime
from her2ops.platform import audit
from her2ops.platform.access import require
from her2ops.platform.registry import ALIASES, list_versions, record_alias, resolve_ref


def list_models(*, actor: str | None) -> list[dict[str, Any]]:
    """Registered versions with lineage and headline metrics, newest first."""
    rt = get_runtime()
    with rt.session() as s:
        require(s, actor, "models.read")
        return list_versions(s, name=rt.settings.registered_model_name)


def promote_model(
    *,
    actor: str | None,
    ref: str,
    alias: str = "champion",
    reason: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Give ``alias`` (default champion) to the version ``ref`` names, in MLflow and the table.

    ``reason`` (the dashboards' written reason and whether it was forced) is audited as a
    ``models.promote_reason`` event in the same transaction as the alias move's own event, so a
    promotion is never recorded without its reason.
    """
    if alias not in ALIASES:
        raise InvalidRequest(f"unknown alias {alias!r}; aliases: {', '.join(ALIASES)}")
    rt = get_runtime()
    name = rt.settings.registered_model_name
    with rt.session() as s:  # check role and reference before changing anything
        require(s, actor, "models.promote")
        version = resolve_ref(s, ref, name=name).version
    previous = rt.tracking.alias_version(alias)
    rt.tracking.set_alias(alias, version)
    try:
        with rt.session() as s:
            record_alias(s, actor=actor, ref=str(version), name=name, alias=alias)
            if reason is not None:
                audit.record(
                    s,
                    actor=require(s, actor, "models.promote"),
                    action="models.promote_reason",
                    entity="model_version",
                    key=f"{name}/{version}",
                    details={"alias": alias, **reason, "previous": previous},
                )
    except BaseException:
        rt.tracking.set_alias(alias, previous)
        raise
    return {"name": name, "version": version, "alias": alias, "previous": previous}
