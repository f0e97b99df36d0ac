"""Scoring with an ensemble: every member's prediction, then the ensemble's, under one rule.

An ensemble is a succeeded ``ensemble`` job; its result names the member versions. Each member
scores the cores through the ordinary scoring use case (``predictions`` rows, idempotent, so a
member that already scored them is not run again); the members' stored set outputs are then
combined with an explicit rule (``her2ops.models.ensemble``) into ``ensemble_predictions``,
one row per (core, ensemble, rule, protocol).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sqlalchemy import select

from her2ops.errors import Conflict, InvalidRequest, NotFound
from her2ops.pipelines.runtime import get_runtime
from her2ops.platform.access import require
from her2ops.platform.predictions import (
    PredictionKey,
    cores_by_code,
    partition_cores,
    prediction_rows,
)
from her2ops.platform.registry import resolve_ref
from her2ops.platform.schema import EnsemblePrediction, Job
from her2ops.profiles import get_profile
from her2ops.progress import Progress, no_progress


@dataclass
class EnsembleScoreReport:
    ensemble: int
    rule: str
    members: list[int]
    n_sets: int
    top_k: int
    scored: int = 0
    already_scored: int = 0
    rows: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def ensemble_versions(session: Any, ensemble: int) -> list[int]:
    """The member versions of a succeeded ensemble job."""
    job = session.get(Job, ensemble)
    if job is None or job.kind != "ensemble":
        raise NotFound(f"unknown ensemble {ensemble} (the id of an 'ensemble' job)")
    if job.status != "succeeded":
        raise Conflict(f"ensemble {ensemble} is {job.status}; its members are not all trained")
    return [int(m["version"]) for m in (job.result or {}).get("members", [])]


def score_ensemble(
    *,
    actor: str | None,
    ensemble: int,
    cores: Iterable[str] | None = None,
    split: str | None = None,
    partition: str | None = None,
    n_sets: int | None = None,
    top_k: int | None = None,
    seed: int = 0,
    confidence: str = "margin",
    rule: str = "pooled_kcs",
    device: str | None = None,
    progress: Progress = no_progress,
) -> EnsembleScoreReport:
    """Score the cores with every member, then record the ensemble's decision under ``rule``."""
    from her2ops.models.ensemble import COMBINE_RULES, combine_members
    from her2ops.pipelines.score import score_cores

    if rule not in COMBINE_RULES:
        raise InvalidRequest(
            f"unknown combine rule {rule!r}; use one of {', '.join(COMBINE_RULES)}"
        )
    rt = get_runtime()
    name = rt.settings.registered_model_name
    with rt.session() as s:
        require(s, actor, "models.score")
        versions = ensemble_versions(s, ensemble)
        mvs = [resolve_ref(s, str(v), name=name) for v in versions]
        profile = get_profile(mvs[0].profile)
        n = profile.n_sets if n_sets is None else n_sets
        k = profile.top_k if top_k is None else top_k
        if cores:
            targets = cores_by_code(s, cores)
        elif split and partition:
            targets = partition_cores(s, split, partition)
        else:
            raise InvalidRequest("give cores or split + partition")
        mv_ids = [mv.id for mv in mvs]
    codes = [t.code for t in targets]
    for version in versions:  # each member's own predictions (skips what it already scored)
        score_cores(
            actor=actor,
            model_ref=str(version),
            cores=codes,
            n_sets=n,
            top_k=k,
            seed=seed,
            confidence=confidence,
            device=device,
            progress=progress,
        )
    report = EnsembleScoreReport(ensemble, rule, versions, n, k)
    with rt.session() as s:
        outputs = [
            {
                r["core_id"]: r["set_probs"]
                for r in prediction_rows(s, PredictionKey(i, n, k, seed, confidence))
            }
            for i in mv_ids
        ]
        done = set(
            s.scalars(
                select(EnsemblePrediction.core_id).where(
                    EnsemblePrediction.ensemble_job_id == ensemble,
                    EnsemblePrediction.rule == rule,
                    EnsemblePrediction.n_sets == n,
                    EnsemblePrediction.top_k == k,
                    EnsemblePrediction.seed == seed,
                    EnsemblePrediction.confidence == confidence,
                )
            )
        )
        for t in targets:
            if t.id in done:
                report.already_scored += 1
                continue
            if any(t.id not in out for out in outputs):
                continue  # a member could not score it (unreadable image): no ensemble decision
            d = combine_members(
                [np.asarray(out[t.id]) for out in outputs],
                top_k=k,
                rule=rule,
                confidence=confidence,
            )
            s.add(
                EnsemblePrediction(
                    core_id=t.id,
                    ensemble_job_id=ensemble,
                    rule=rule,
                    n_sets=n,
                    top_k=k,
                    seed=seed,
                    confidence=confidence,
                    final_score=int(d.final),
                    probs=[float(p) for p in d.probs],
                    member_finals=list(d.member_finals),
                )
            )
            report.scored += 1
            report.rows.append(
                {"core": t.code, "final": int(d.final), "members": list(d.member_finals)}
            )
    return report


def evaluate_ensemble(
    *,
    actor: str | None,
    ensemble: int,
    split: str,
    partition: str = "test",
    rule: str = "pooled_kcs",
    n_sets: int | None = None,
    top_k: int | None = None,
    seed: int = 0,
    confidence: str = "margin",
    device: str | None = None,
    progress: Progress = no_progress,
) -> dict[str, Any]:
    """The paper's metrics of the ensemble and of each member, on the same labelled cores."""
    from her2ops.models.evaluation import compute_metrics
    from her2ops.platform.labels import label_snapshot
    from her2ops.platform.predictions import final_scores
    from her2ops.platform.schema import Core

    rt = get_runtime()
    with rt.session() as s:
        require(s, actor, "models.score")
        snapshot, snapshot_hash = label_snapshot(s, split)
    items = [i for i in snapshot if i.partition == partition]
    if not items:
        raise InvalidRequest(f"split {split!r} has no labelled cores in partition {partition!r}")
    rep = score_ensemble(
        actor=actor,
        ensemble=ensemble,
        cores=[i.core for i in items],
        n_sets=n_sets,
        top_k=top_k,
        seed=seed,
        confidence=confidence,
        rule=rule,
        device=device,
        progress=progress,
    )
    n, k = rep.n_sets, rep.top_k
    codes = [i.core for i in items]
    with rt.session() as s:
        decided = {
            code: (final, probs)
            for code, final, probs in s.execute(
                select(Core.code, EnsemblePrediction.final_score, EnsemblePrediction.probs)
                .join(Core, Core.id == EnsemblePrediction.core_id)
                .where(
                    EnsemblePrediction.ensemble_job_id == ensemble,
                    EnsemblePrediction.rule == rule,
                    EnsemblePrediction.n_sets == n,
                    EnsemblePrediction.top_k == k,
                    EnsemblePrediction.seed == seed,
                    EnsemblePrediction.confidence == confidence,
                    Core.code.in_(codes),
                )
            )
        }
        name = rt.settings.registered_model_name
        members = {
            v: final_scores(
                s,
                PredictionKey(resolve_ref(s, str(v), name=name).id, n, k, seed, confidence),
                codes,
            )
            for v in rep.members
        }
    scored = [i for i in items if i.core in decided and all(i.core in m for m in members.values())]
    if not scored:
        raise InvalidRequest(f"no core of {split}/{partition} could be scored by every member")
    y_true = np.array([i.label for i in scored])

    def metrics_of(preds: dict[str, tuple[int, list[float]]]) -> dict[str, Any]:
        y_pred = np.array([preds[i.core][0] for i in scored])
        probs = np.array([preds[i.core][1] for i in scored], dtype=np.float64)
        return dict(compute_metrics(y_true, y_pred, probs))

    from her2ops.models.evaluation import metrics_table

    ensemble_metrics = metrics_of(decided)
    member_metrics = {v: metrics_of(m) for v, m in members.items()}
    # one row per metric: the ensemble's value, then each member's (same cores, same protocol)
    columns = {"ensemble": metrics_table(ensemble_metrics)} | {
        f"v{v}": metrics_table(m) for v, m in member_metrics.items()
    }
    table = [
        {"metric": row["metric"], **{name: rows[i]["value"] for name, rows in columns.items()}}
        for i, row in enumerate(columns["ensemble"])
    ]
    return {
        "ensemble": ensemble,
        "rule": rule,
        "split": split,
        "partition": partition,
        "n_sets": n,
        "top_k": k,
        "seed": seed,
        "confidence": confidence,
        "labels_now": snapshot_hash,
        "cores": len(scored),
        "metrics": ensemble_metrics,
        "members": [{"version": v, "metrics": m} for v, m in member_metrics.items()],
        "table": table,
    }
