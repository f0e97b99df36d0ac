"""Review use cases: build the queue from stored predictions, claim, renew, vote, show.

Each function takes plain values and the acting user, opens one transaction, and returns plain
values (dicts) for any adapter to render. Flags are computed here with the pure functions of
:mod:`her2ops.models.flags` over stored predictions; the platform's review service stores the
items, serves claims and decides what a reviewer may see (blinding).

Label suspects (``label_suspect``) come only from out-of-sample predictions: cores whose patient
the model did not train or validate on. By default the plain "confident and different" rule
scores them (``p(predicted) - p(label)``); with ``label_method="cleanlab"`` (and at least
``CLEANLAB_MIN_CORES`` such cores) confident learning decides which are suspects. The rule is the
default because it found more true errors in ``benchmarks/bench_active_learning.py``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from her2ops.errors import InvalidRequest, PermissionDenied
from her2ops.models import flags as F
from her2ops.pipelines.runtime import get_runtime
from her2ops.platform import review as R
from her2ops.platform import review_claims as C
from her2ops.platform import review_view as V
from her2ops.platform.registry import resolve_ref

CLEANLAB_MIN_CORES = 20
#: reasons kept on an item: flags scoring at least this (the strongest is always kept)
REASON_MIN_SCORE = 0.2
LABEL_METHODS = ("rule", "cleanlab")


def _flag_cores(
    session: Any,
    model_version_ids: Sequence[int],
    names: dict[int, str],
    *,
    weights: dict[str, float] | None,
    label_method: str,
) -> list[R.FlaggedCore]:
    preds = V.latest_predictions(session, model_version_ids)
    primary = model_version_ids[0]
    cores = sorted(preds[primary])
    labels = R.current_labels(session, cores)
    oos = {m: V.out_of_sample_cores(session, m, cores) for m in model_version_ids}

    # label suspects over every out-of-sample core of the primary model's predictions at once
    suspect: dict[int, float] = {}
    held_out = [c for c in cores if c in oos[primary] and _label(labels, c) is not None]
    if held_out:
        probs = np.array([preds[primary][c].kcs_probs for c in held_out])
        y = np.array([_label(labels, c) for c in held_out])
        scores = (
            F.cleanlab_suspects(probs, y)
            if label_method == "cleanlab" and len(held_out) >= CLEANLAB_MIN_CORES
            else F.confident_and_different(probs, y)
        )
        suspect = dict(zip(held_out, scores.tolist(), strict=True))

    out: list[R.FlaggedCore] = []
    for c in cores:
        p = preds[primary][c]
        flags = [
            F.kcs_disagreement(p.set_probs, p.kcs_indices, p.final_score),
            F.low_confidence(
                p.kcs_probs, p.final_score, set_probs=p.set_probs, kcs_indices=p.kcs_indices
            ),
        ]
        members = [m for m in model_version_ids if c in preds[m]]
        if len(members) > 1:
            flags.append(
                F.committee_disagreement(
                    [preds[m][c].kcs_probs for m in members], members=[names[m] for m in members]
                )
            )
        if c in suspect:
            rule = F.label_suspect(p.kcs_probs, _label(labels, c))
            flags.append(F.Flag("label_suspect", float(suspect[c]), rule.reason))
        scores_by_name = {f.name: f.score for f in flags}
        prio = F.priority(scores_by_name, weights)
        if prio <= 0:
            continue
        ranked = sorted(flags, key=lambda f: -f.score)
        kept = [f for f in ranked if f.score >= REASON_MIN_SCORE] or ranked[:1]
        out.append(
            R.FlaggedCore(
                core_id=c,
                priority=prio,
                reasons=[f.to_dict() for f in kept],
                model_version_ids=list(members),
                prediction_id=p.id,
            )
        )
    return out


def _label(labels: dict[int, tuple[str, int | None]], core: int) -> int | None:
    status, score = labels.get(core, ("", None))
    return score if status in ("agreed", "adjudicated") else None


def build_queue(
    *,
    actor: str | None,
    model_ref: str | Sequence[str],
    top: int | None = None,
    mode: str = "blinded",
    votes_needed: int = 1,
    label_method: str = "rule",
    weights: dict[str, float] | None = None,
) -> dict[str, Any]:
    """Flag the cores scored by ``model_ref`` (several refs: the first is primary, all of them
    a committee), rank them by priority and queue the ``top`` best not already queued."""
    if label_method not in LABEL_METHODS:
        raise InvalidRequest(
            f"bad label method {label_method!r}: expected one of {', '.join(LABEL_METHODS)}"
        )
    refs = [model_ref] if isinstance(model_ref, str) else list(model_ref)
    if not refs:
        raise InvalidRequest("name at least one model (--model REF)")
    rt = get_runtime()
    settings = rt.settings
    with rt.session() as s:
        from her2ops.platform.access import require

        require(s, actor, "review.enqueue")
        mvs = [resolve_ref(s, r, name=settings.registered_model_name) for r in refs]
        ids = list(dict.fromkeys(mv.id for mv in mvs))
        names = {mv.id: f"v{mv.version}" for mv in mvs}
        flagged = _flag_cores(s, ids, names, weights=weights, label_method=label_method)
        report = R.queue_flagged(
            s, actor=actor, flagged=flagged, top=top, mode=mode, votes_needed=votes_needed
        )
        out = report.to_dict()
        out["flagged"] = len(flagged)
        out["models"] = [names[i] for i in ids]
        out["top"] = R.list_items(s, status="open", limit=10)
    return out


def add_items(
    *,
    actor: str | None,
    cores: Sequence[str],
    reason: str,
    mode: str = "blinded",
    votes_needed: int = 1,
) -> dict[str, Any]:
    """Queue cores by hand (lab managers)."""
    with get_runtime().session() as s:
        report = R.add_items(
            s, actor=actor, cores=cores, reason=reason, mode=mode, votes_needed=votes_needed
        )
        return report.to_dict() | {"already_queued_cores": report.already_queued}


def next_item(*, actor: str | None, lease_s: int | None = None) -> dict[str, Any] | None:
    """Claim (or return the live claim of) the acting pathologist; what they may see of it."""
    with get_runtime().session() as s:
        item = C.next_item(s, actor=actor, lease_s=lease_s)
        return None if item is None else V.item_view(s, actor=actor, item_id=item.id)


def renew(
    *, actor: str | None, item: int, token: int | None = None, lease_s: int | None = None
) -> dict[str, Any]:
    with get_runtime().session() as s:
        it = C.renew(s, actor=actor, item_id=item, token=token, lease_s=lease_s)
        return {
            "item": it.id,
            "token": it.fencing_token,
            "lease_expires_at": R.aware(it.lease_expires_at),
        }


def submit(
    *,
    actor: str | None,
    item: int,
    score: str,
    comment: str | None = None,
    token: int | None = None,
) -> dict[str, Any]:
    with get_runtime().session() as s:
        return C.submit(
            s, actor=actor, item_id=item, score=score, comment=comment, token=token
        ).to_dict()


def skip(*, actor: str | None, item: int, token: int | None = None) -> dict[str, Any]:
    with get_runtime().session() as s:
        it = C.skip(s, actor=actor, item_id=item, token=token)
        return {"item": it.id, "status": it.status}


def release(*, actor: str | None, item: int, token: int | None = None) -> dict[str, Any]:
    with get_runtime().session() as s:
        it = C.release(s, actor=actor, item_id=item, token=token)
        return {"item": it.id, "status": it.status}


def list_items(*, actor: str | None, status: str | None = None, limit: int = 100) -> dict[str, Any]:
    """Items (lapsed leases shown as expired) and counts per status. Pathologists see the queue
    without reasons or priorities (those are model output)."""
    from her2ops.platform.access import get_user

    with get_runtime().session() as s:
        user = get_user(s, actor)
        C.expire_leases(s)
        items = R.list_items(s, status=status, limit=limit)
        if user.role == "pathologist":
            for it in items:
                it.pop("reasons"), it.pop("priority")
        return {"counts": R.queue_counts(s), "items": items}


def show_item(
    *, actor: str | None, item: int, png: Path | None = None, k: int | None = None
) -> dict[str, Any]:
    """What the acting user may see of an item; with ``png``, a sheet of the patches of the
    ``k`` most confident sets (default: all of the KCS) with each set's class and confidence."""
    with get_runtime().session() as s:
        view = V.item_view(s, actor=actor, item_id=item)
    if png is None:
        return view
    if view["blinded"]:
        raise PermissionDenied(
            f"review item {item} is blinded: its model output is not shown to a reviewer"
        )
    model = view.get("model")
    if not model:
        raise InvalidRequest(f"review item {item} was queued by hand: it has no prediction")
    sets = model["kcs_sets"][: k or len(model["kcs_sets"])]
    image = view["image"]
    view["png"] = str(
        draw_kcs_sets(view["core"], image["sha256"], model, sets, png, page=image["page"])
    )
    return view


def draw_kcs_sets(
    core: str,
    sha256: str,
    model: dict[str, Any],
    sets: list[dict[str, Any]],
    out: Path,
    *,
    page: int = 0,
) -> Path:
    """Redraw the exact KCS sets (sampler key = core code, scoring seed, set index) of the core
    stored as image ``page`` of the file ``sha256`` and lay their patches out, one contact sheet
    per set, stacked, titled with class and confidence."""
    from PIL import Image

    from her2ops.imaging.pss import sample_sets
    from her2ops.imaging.sheet import contact_sheet
    from her2ops.profiles import get_profile

    cfg = get_profile(model["profile"]).pss
    store = get_runtime().store
    sheets = []
    with store.open(sha256, page, core=core) as img:
        arrays = sample_sets(
            img,
            cfg,
            key=model["sampler"]["key"],
            seed=model["sampler"]["seed"],
            indices=[st["index"] for st in sets],
        )
        for st, arr in zip(sets, arrays, strict=True):
            title = (
                f"{core}  set {st['index']} (seed {st['seed']}): {st['class']}, "
                f"confidence {st['confidence']:.2f}  |  {model['model']} final "
                f"{model['final_score']}"
            )
            sheets.append(contact_sheet(arr, cfg, thumb=96, title=title))
    width = max(sh.width for sh in sheets)
    canvas = Image.new("RGB", (width, sum(sh.height for sh in sheets)), (32, 32, 32))
    y = 0
    for sh in sheets:
        canvas.paste(sh, (0, y))
        y += sh.height
    out.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(out)
    return out


def core_pixels(
    *,
    actor: str | None,
    item: int,
    level: int | None = None,
    x: float = 0.5,
    y: float = 0.5,
    size: int = 512,
) -> dict[str, Any]:
    """Pixels of an item's core for whoever may see the item: the whole core (the store's top
    pyramid level, ``level`` None) or a ``size`` px region of pyramid ``level`` (0 = full
    resolution) centred at the relative position (``x``, ``y``) — the zoom of the review page."""
    if not (0.0 <= x <= 1.0 and 0.0 <= y <= 1.0):
        raise InvalidRequest("x and y are relative positions between 0 and 1")
    if not 64 <= size <= 2048:
        raise InvalidRequest("size must be between 64 and 2048 px")
    rt = get_runtime()
    with rt.session() as s:
        view = V.item_view(s, actor=actor, item_id=item)  # refuses who may not see the item
    sha, page, code = view["image"]["sha256"], view["image"]["page"], view["core"]
    if not rt.store.has(sha, page):
        raise InvalidRequest(f"core {code}: image not in the store")
    with rt.store.open(sha, page, core=code) as img:
        levels = len(img.level_shapes)
        if level is None:
            top = levels - 1
            return {"levels": levels, "level": top, "image": img.read_level(top)}
        if not 0 <= level < levels:
            raise InvalidRequest(f"level must be between 0 and {levels - 1}")
        h, w = img.level_shapes[level]
        top_y = int(min(max(0, y * h - size / 2), max(0, h - size)))
        left_x = int(min(max(0, x * w - size / 2), max(0, w - size)))
        region = img.read_region(level, top_y, left_x, min(size, h), min(size, w))
    return {"levels": levels, "level": level, "image": np.asarray(region), "at": (top_y, left_x)}


def adjudication_list(*, actor: str | None, limit: int = 200) -> list[dict[str, Any]]:
    """Cores whose panel disagrees (``needs_adjudication``) that the acting pathologist may
    adjudicate (not on the core's panel when the lab policy requires it), with every vote."""
    from sqlalchemy import select

    from her2ops.platform.access import require
    from her2ops.platform.schema import ConsensusLabel, Core, User, Vote

    rt = get_runtime()
    outside = rt.settings.adjudicator_outside_panel
    with rt.session() as s:
        me = require(s, actor, "votes.cast")
        rows = s.execute(
            select(Core.id, Core.code)
            .join(ConsensusLabel, ConsensusLabel.core_id == Core.id)
            .where(
                ConsensusLabel.is_current.is_(True),
                ConsensusLabel.status == "needs_adjudication",
            )
            .order_by(Core.code)
            .limit(limit)
        ).all()
        votes: dict[int, list[dict[str, Any]]] = {cid: [] for cid, _ in rows}
        for core_id, who, score, rnd, comment in s.execute(
            select(Vote.core_id, User.username, Vote.score, Vote.round, Vote.comment)
            .join(User, User.id == Vote.user_id)
            .where(Vote.core_id.in_(list(votes)))
            .order_by(Vote.core_id, Vote.id)
        ):
            votes[core_id].append(
                {"pathologist": who, "score": score, "round": rnd, "comment": comment}
            )
    return [
        {"core": code, "votes": votes[cid]}
        for cid, code in rows
        if not (outside and any(v["pathologist"] == me.username for v in votes[cid]))
    ]
