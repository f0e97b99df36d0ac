"""What a reviewer is shown of a review item, and the prediction queries the queue reads.

Blinding is decided here, in the service, for every adapter (CLI ``--json``, dashboard): a
pathologist on a ``blinded`` item sees the core and nothing else; adjudication mode (the item's
mode) and the other roles see every vote, the consensus, the flags and the model's KCS sets, with
the seed and set indices that redraw the exact patches (the sampler is keyed by core code, seed
and set index).

The prediction queries live here until ``platform/predictions.py`` owns them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from her2ops.platform.access import get_user
from her2ops.platform.errors import NotFound
from her2ops.platform.review import aware, current_labels, get_item, holder
from her2ops.platform.schema import Core, ModelVersion, Prediction, SplitAssignment, User, Vote
from her2ops.scores import NUM_CLASSES, SCORE_LABELS

# --- predictions (read here until platform/predictions.py owns these queries) ------------------


@dataclass(frozen=True)
class StoredPrediction:
    """One ``predictions`` row, as the flags need it."""

    id: int
    core_id: int
    model_version_id: int
    final_score: int
    kcs_probs: list[float]
    set_probs: list[list[float]]
    kcs_indices: list[int]
    seed: int
    n_sets: int
    top_k: int
    confidence: str


def latest_predictions(
    session: Session, model_version_ids: Sequence[int]
) -> dict[int, dict[int, StoredPrediction]]:
    """model version id -> core id -> that version's newest prediction of the core."""
    out: dict[int, dict[int, StoredPrediction]] = {m: {} for m in model_version_ids}
    q = (
        select(Prediction)
        .where(Prediction.model_version_id.in_(list(model_version_ids)))
        .order_by(Prediction.created_at, Prediction.id)
    )
    for p in session.scalars(q):
        out[p.model_version_id][p.core_id] = StoredPrediction(
            p.id,
            p.core_id,
            p.model_version_id,
            p.final_score,
            list(p.kcs_probs),
            [list(r) for r in p.set_probs],
            list(p.kcs_indices),
            p.seed,
            p.n_sets,
            p.top_k,
            p.confidence,
        )
    return out


def out_of_sample_cores(
    session: Session, model_version_id: int, core_ids: Sequence[int]
) -> set[int]:
    """Cores whose patient the version did not train or validate on (test or unassigned)."""
    split_id = session.scalar(
        select(ModelVersion.split_id).where(ModelVersion.id == model_version_id)
    )
    seen = set(
        session.scalars(
            select(SplitAssignment.patient_id).where(
                SplitAssignment.split_id == split_id,
                SplitAssignment.partition.in_(("train", "val")),
            )
        )
    )
    rows = session.execute(
        select(Core.id, Core.patient_id).where(Core.id.in_(sorted(set(core_ids))))
    ).all()
    return {c for c, p in rows if p not in seen}


# --- what a reviewer sees -------------------------------------------------------------------------


def _set_confidence(p: list[float], kind: str) -> float:
    """The inference protocol's confidence of one set (``models.inference.confidence_scores``)."""
    if kind == "max":
        return max(p)
    if kind == "entropy":
        return sum(x * math.log(x) for x in p if x > 0)
    top = sorted(p)[-2:]
    return top[1] - top[0]


def prediction_view(session: Session, prediction_id: int) -> dict[str, Any]:
    """The model's decision and the KCS sets that drove it, with what redraws them exactly:
    the sampler key (the core code), the scoring seed and each set's index."""
    p = session.get(Prediction, prediction_id)
    if p is None:
        raise NotFound(f"unknown prediction {prediction_id}")
    mv = session.get(ModelVersion, p.model_version_id)
    code = session.scalar(select(Core.code).where(Core.id == p.core_id))
    sets = [
        {
            "index": int(i),
            "seed": p.seed,
            "class": SCORE_LABELS[max(range(NUM_CLASSES), key=lambda c: p.set_probs[i][c])],
            "confidence": round(_set_confidence(p.set_probs[i], p.confidence), 4),
            "probs": [round(x, 4) for x in p.set_probs[i]],
        }
        for i in p.kcs_indices
    ]
    return {
        "prediction": p.id,
        "model": f"{mv.name} v{mv.version}" if mv else None,
        "profile": mv.profile if mv else None,
        "final_score": SCORE_LABELS[p.final_score],
        "kcs_probs": [round(x, 4) for x in p.kcs_probs],
        "n_sets": p.n_sets,
        "top_k": p.top_k,
        "confidence": p.confidence,
        "sampler": {"key": code, "seed": p.seed},
        "kcs_sets": sets,
        "set_probs": p.set_probs,
    }


def item_view(
    session: Session, *, actor: str | None, item_id: int, adjudication: bool | None = None
) -> dict[str, Any]:
    """What the acting user is shown of an item. A pathologist on a ``blinded`` item sees the
    core only: no other pathologist's vote, no consensus, no flags, no model output. In
    ``adjudication`` mode (the item's mode, or ``adjudication=True`` for a non-pathologist role)
    and for lab managers, engineers and admins: every vote, the consensus, the reasons and the
    model's KCS sets."""
    user = get_user(session, actor)
    item = get_item(session, item_id)
    core = session.get(Core, item.core_id)
    assert core is not None
    blinded = item.mode == "blinded" and user.role == "pathologist"
    if adjudication is False:
        blinded = True
    view: dict[str, Any] = {
        "item": item.id,
        "core": core.code,
        "round": item.round,
        "status": item.status,
        "mode": item.mode,
        "blinded": blinded,
        "image": {
            "sha256": core.sha256,
            "page": core.page,
            "width": core.width,
            "height": core.height,
        },
        "votes_needed": item.votes_needed,
        "votes_done": item.votes_done,
    }
    if item.claimed_by_id == user.id and item.status == "claimed":
        view["claim"] = {
            "token": item.fencing_token,
            "lease_expires_at": aware(item.lease_expires_at),
        }
    if blinded:
        return view
    votes = session.execute(
        select(User.username, Vote.round, Vote.score, Vote.comment, Vote.created_at)
        .join(User, User.id == Vote.user_id)
        .where(Vote.core_id == item.core_id)
        .order_by(Vote.created_at, Vote.id)
    ).all()
    label = current_labels(session, [item.core_id]).get(item.core_id)
    view.update(
        {
            "priority": round(item.priority, 4),
            "reasons": item.reasons,
            "claimed_by": holder(session, item),
            "votes": [
                {"pathologist": u, "round": r, "score": sc, "comment": c, "at": aware(at)}
                for u, r, sc, c, at in votes
            ],
            "consensus": None
            if label is None
            else {
                "status": label[0],
                "score": None if label[1] is None else SCORE_LABELS[label[1]],
            },
            "model": None
            if item.prediction_id is None
            else prediction_view(session, item.prediction_id),
        }
    )
    return view
