"""A prediction written inside a transaction that then fails is not kept (both dialects).

``save_prediction`` writes in a SAVEPOINT. With Python's sqlite3 driver a SAVEPOINT issued
outside a transaction *starts* one, and its RELEASE commits it: the prediction would survive the
rollback of the caller's unit of work. This pins the nesting on both dialects.
"""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from her2ops.platform.db import session_scope
from her2ops.platform.predictions import PredictionKey, save_prediction
from her2ops.platform.schema import Core, ModelVersion, Prediction, Split
from tests.factories import insert_labelled_cores


class _Abort(Exception):
    pass


def _version() -> tuple[int, int]:
    with session_scope() as s:
        split = Split(name="main", seed=0, ratios={"train": 1.0})
        s.add(split)
        s.flush()
        mv = ModelVersion(
            name="her2-pss",
            version=1,
            run_id="run-1",
            profile="tiny",
            split_id=split.id,
            label_snapshot_hash="0" * 64,
            code_version="test",
            aliases=[],
        )
        s.add(mv)
        s.flush()
        core_id = s.scalars(select(Core.id).order_by(Core.id)).first()
        assert core_id is not None
        return mv.id, core_id


def _save(s, mv_id: int, core_id: int) -> bool:  # type: ignore[no-untyped-def]
    return save_prediction(
        s,
        PredictionKey(mv_id, n_sets=2, top_k=1, seed=0, confidence="margin"),
        core_id,
        final_score=2,
        kcs_probs=[0.1, 0.2, 0.6, 0.1],
        set_probs=[[0.1, 0.2, 0.6, 0.1]] * 2,
        kcs_indices=[0],
        seconds=0.1,
    )


def test_a_prediction_saved_in_a_failed_unit_of_work_is_rolled_back(db_url: str) -> None:
    insert_labelled_cores(1)
    mv_id, core_id = _version()
    with pytest.raises(_Abort), session_scope() as s:
        assert _save(s, mv_id, core_id)
        raise _Abort
    with session_scope() as s:
        assert s.scalar(select(func.count()).select_from(Prediction)) == 0
    # and the same write in a unit of work that succeeds is kept, once
    with session_scope() as s:
        assert _save(s, mv_id, core_id)
        assert not _save(s, mv_id, core_id)
    with session_scope() as s:
        assert s.scalar(select(func.count()).select_from(Prediction)) == 1
