"""Predictions: the protocol key, look-ups, idempotent per-core writes, per-split queries.

A prediction is one core scored by one model version under one protocol: N sets, the k most
confident, the sampling seed and the confidence measure. That tuple is the key (a unique
constraint in the table); scoring, evaluation and the review queue all go through this module.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

from sqlalchemy import ColumnElement, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from her2ops.errors import InvalidRequest, NotFound
from her2ops.platform.schema import PARTITIONS, Core, Prediction
from her2ops.platform.splits import get_split, patient_partitions


@dataclass(frozen=True)
class PredictionKey:
    """Which model version, under which protocol (N, k, seed, confidence measure)."""

    model_version_id: int
    n_sets: int
    top_k: int
    seed: int
    confidence: str

    def clauses(self) -> list[ColumnElement[bool]]:
        return [
            Prediction.model_version_id == self.model_version_id,
            Prediction.n_sets == self.n_sets,
            Prediction.top_k == self.top_k,
            Prediction.seed == self.seed,
            Prediction.confidence == self.confidence,
        ]


@dataclass(frozen=True)
class CoreRef:
    """A core to score: database id, code, and its image in the store (``page`` of the file
    ``sha256``)."""

    id: int
    code: str
    sha256: str
    page: int = 0


def scored_core_ids(session: Session, key: PredictionKey) -> set[int]:
    """Ids of the cores that already have a prediction under ``key``."""
    return set(session.scalars(select(Prediction.core_id).where(*key.clauses())))


def save_prediction(
    session: Session,
    key: PredictionKey,
    core_id: int,
    *,
    final_score: int,
    kcs_probs: list[float],
    set_probs: list[list[float]],
    kcs_indices: list[int],
    seconds: float | None,
) -> bool:
    """Write one core's prediction unless it is already there (True if written).

    Runs in a savepoint, so a concurrent writer of the same key (another worker that got the
    same message) loses quietly instead of failing the caller's transaction.
    """
    exists = session.scalar(
        select(Prediction.id).where(Prediction.core_id == core_id, *key.clauses())
    )
    if exists is not None:
        return False
    try:
        with session.begin_nested():
            session.add(
                Prediction(
                    core_id=core_id,
                    **asdict(key),
                    final_score=final_score,
                    kcs_probs=kcs_probs,
                    set_probs=set_probs,
                    kcs_indices=kcs_indices,
                    seconds=seconds,
                )
            )
    except IntegrityError:
        return False
    return True


def cores_by_code(session: Session, codes: Iterable[str]) -> list[CoreRef]:
    """The cores named by ``codes`` (in the given order); NotFound lists the unknown ones."""
    wanted = list(dict.fromkeys(codes))
    rows = {
        r.code: CoreRef(r.id, r.code, r.sha256, r.page)
        for r in session.execute(
            select(Core.id, Core.code, Core.sha256, Core.page).where(Core.code.in_(wanted))
        )
    }
    missing = [c for c in wanted if c not in rows]
    if missing:
        shown = ", ".join(missing[:10]) + (
            f" and {len(missing) - 10} more" if len(missing) > 10 else ""
        )
        raise NotFound(f"unknown core(s): {shown}")
    return [rows[c] for c in wanted]


def partition_cores(session: Session, split: str, partition: str) -> list[CoreRef]:
    """The ingested cores of a split's partition, by code."""
    if partition not in PARTITIONS:
        raise InvalidRequest(
            f"unknown partition {partition!r}; valid partitions: {', '.join(PARTITIONS)}"
        )
    get_split(session, split)
    parts = patient_partitions(session, split)
    rows = session.execute(
        select(Core.id, Core.code, Core.sha256, Core.page, Core.patient_id)
        .where(Core.status == "ingested")
        .order_by(Core.code)
    ).all()
    return [CoreRef(r[0], r[1], r[2], r[3]) for r in rows if parts.get(r[4]) == partition]


def final_scores(
    session: Session, key: PredictionKey, codes: Iterable[str]
) -> dict[str, tuple[int, list[float]]]:
    """core code -> (final score, averaged KCS probabilities) for the given cores under key."""
    codes = list(codes)
    out: dict[str, tuple[int, list[float]]] = {}
    for start in range(0, len(codes), 500):
        chunk = codes[start : start + 500]
        for code, final, probs in session.execute(
            select(Core.code, Prediction.final_score, Prediction.kcs_probs)
            .join(Core, Core.id == Prediction.core_id)
            .where(*key.clauses(), Core.code.in_(chunk))
        ):
            out[code] = (int(final), [float(p) for p in probs])
    return out


def prediction_rows(session: Session, key: PredictionKey) -> list[dict[str, Any]]:
    """Every prediction under ``key`` with its raw material (for flags and the review queue)."""
    return [
        {
            "core_id": p.core_id,
            "core": code,
            "final_score": p.final_score,
            "kcs_probs": p.kcs_probs,
            "set_probs": p.set_probs,
            "kcs_indices": p.kcs_indices,
        }
        for p, code in session.execute(
            select(Prediction, Core.code)
            .join(Core, Core.id == Prediction.core_id)
            .where(*key.clauses())
            .order_by(Core.code)
        )
    ]
