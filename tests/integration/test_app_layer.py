"""The application layer's guarantees, on both dialects with a real MLflow store and torch:

- scoring commits per core: an interrupted run keeps what it finished and a re-run does the rest;
- promotion changes MLflow and the table together or not at all, whichever step fails.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from sqlalchemy import func, select
from sqlalchemy.exc import StatementError

from her2ops.pipelines import models as models_uc
from her2ops.pipelines import train as train_mod
from her2ops.pipelines.runtime import get_runtime
from her2ops.pipelines.score import score_cores
from her2ops.platform.db import session_scope
from her2ops.platform.schema import AuditEvent, ModelVersion, Prediction
from her2ops.tracking import Tracking
from tests.factories import curate_synthetic


class Interrupted(Exception):
    pass


def _aliases() -> dict[int, list[str]]:
    with session_scope() as s:
        return {mv.version: list(mv.aliases or []) for mv in s.scalars(select(ModelVersion))}


def test_interrupted_scoring_keeps_work_and_promotion_is_all_or_nothing(
    db_url: str, synthetic: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    torch.set_num_threads(1)
    curate_synthetic(synthetic)
    out = train_mod.train_model(actor="eng", split="main", profile_name="test", epochs=1)

    # --- scoring: stop after 3 cores, as a kill would; the 3 are committed, the rest follow
    def stop_after_three(done: int, total: int | None, message: str) -> None:
        if done == 3:
            raise Interrupted

    kw = {"actor": "eng", "model_ref": "challenger", "split": "main", "partition": "test"}
    with pytest.raises(Interrupted):
        score_cores(**kw, n_sets=4, top_k=2, loader_workers=0, progress=stop_after_three)
    with session_scope() as s:
        assert s.scalar(select(func.count()).select_from(Prediction)) == 3
    rest = score_cores(**kw, n_sets=4, top_k=2, loader_workers=1)
    assert rest.already_scored == 3 and rest.scored > 0 and not rest.failed
    with session_scope() as s:
        total = s.scalar(select(func.count()).select_from(Prediction))
        distinct = s.scalar(select(func.count(func.distinct(Prediction.core_id))))
    assert total == distinct == 3 + rest.scored

    # --- promotion: the MLflow step fails -> the table is untouched
    tracking = get_runtime().tracking
    assert tracking.alias_version("champion") is None
    real_set_alias = Tracking.set_alias

    def mlflow_down(self: Tracking, alias: str, version: int | None) -> None:
        raise ConnectionError("MLflow is down")

    monkeypatch.setattr(Tracking, "set_alias", mlflow_down)
    with pytest.raises(ConnectionError):
        models_uc.promote_model(actor="eng", ref=str(out.version))
    assert "champion" not in _aliases()[out.version]
    monkeypatch.setattr(Tracking, "set_alias", real_set_alias)
    assert tracking.alias_version("champion") is None

    # --- the database step fails -> the MLflow alias is moved back
    def db_fails(*_a: object, **_k: object) -> int:
        raise RuntimeError("database went away")

    monkeypatch.setattr(models_uc, "record_alias", db_fails)
    with pytest.raises(RuntimeError):
        models_uc.promote_model(actor="eng", ref=str(out.version))
    assert tracking.alias_version("champion") is None
    assert "champion" not in _aliases()[out.version]
    monkeypatch.undo()

    # --- the reason cannot be audited -> neither the alias move nor its event is kept
    # not JSON: fails when the reason's event is written (wrapped by SQLAlchemy on SQLite)
    with pytest.raises((TypeError, StatementError), match="not JSON serializable"):
        models_uc.promote_model(actor="eng", ref=str(out.version), reason={"reason": object()})
    assert tracking.alias_version("champion") is None
    assert "champion" not in _aliases()[out.version]
    with session_scope() as s:
        actions = set(s.scalars(select(AuditEvent.action)))
    assert not {"models.promote", "models.promote_reason"} & actions

    # --- and when both succeed, both agree
    res = models_uc.promote_model(actor="eng", ref="challenger")
    assert res["version"] == out.version and res["previous"] is None
    assert tracking.alias_version("champion") == out.version
    assert _aliases()[out.version] == ["challenger", "champion"]


def test_refused_requests_write_nothing(db_url: str, synthetic: Path) -> None:
    """Bad arguments are refused before any write: no frozen split, no MLflow run, no rows."""
    from her2ops.errors import InvalidRequest, NotFound

    curate_synthetic(synthetic)
    for kw in ({"epochs": 0}, {"epochs": 10**6}):
        with pytest.raises(InvalidRequest, match="--epochs must be between 1 and"):
            train_mod.train_model(actor="eng", split="main", profile_name="test", **kw)
    with pytest.raises(NotFound, match="no MLflow run"):
        train_mod.train_model(
            actor="eng", split="main", profile_name="test", epochs=1, resume_run="nope"
        )
    for kw, refusal in (
        ({"resample": "jackknife"}, "unknown resample 'jackknife'"),
        ({"resample": "bootstrap", "member": 2, "members": 2}, "member=2 is out of range"),
        ({"resample": "kfold", "member": 0, "members": 40}, "needs at least 40 training pat"),
    ):
        with pytest.raises(InvalidRequest, match=refusal):
            train_mod.train_model(actor="eng", split="main", profile_name="test", epochs=1, **kw)
    with session_scope() as s:
        from her2ops.platform.schema import Split

        split = s.scalar(select(Split).where(Split.name == "main"))
        assert split is not None and split.frozen_at is None
    exp = get_runtime().tracking.client.get_experiment_by_name("her2ops")
    if exp is not None:
        assert get_runtime().tracking.client.search_runs([exp.experiment_id]) == []
    with pytest.raises(InvalidRequest, match="valid partitions: train, val, test"):
        score_cores(actor="eng", model_ref="champion", split="main", partition="holdout")
    with pytest.raises(NotFound, match="unknown model reference"):
        score_cores(actor="eng", model_ref="champion", split="main", partition="test")
    from her2ops.pipelines.splits import create_split as create_split_uc

    with pytest.raises(InvalidRequest, match="confirm with --yes"):
        create_split_uc(actor="lab", name="main", seed=5, replace=True)
    assert create_split_uc(actor="lab", name="main", seed=5, replace=True, yes=True)["seed"] == 5
