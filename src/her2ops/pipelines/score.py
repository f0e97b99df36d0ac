"""Score cores with a registered model and the paper's protocol; write ``predictions`` rows.

Idempotent on (core, model version, N, k, seed): a core already scored with those is skipped.
Weights come from the run's weights-only artefact (``torch.load(weights_only=True)``), so scoring
never unpickles code from the tracking store.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import select
from tqdm import tqdm

from her2ops.config import get_settings
from her2ops.platform.access import require
from her2ops.platform.db import session_scope
from her2ops.platform.errors import NotFound
from her2ops.platform.registry import resolve_ref
from her2ops.platform.schema import Core, ModelVersion, Prediction
from her2ops.platform.splits import patient_partitions
from her2ops.profiles import get_profile


@dataclass
class ScoreReport:
    model: str
    version: int
    scored: int = 0
    already_scored: int = 0
    failed: list[str] = field(default_factory=list)
    seconds_per_core: float | None = None
    rows: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def weights_path(mv: ModelVersion) -> Path:
    """Local path of the version's weights file (downloaded from the run's artefacts once)."""
    import mlflow

    from her2ops.pipelines.tracking import configure

    settings = get_settings()
    cache = settings.data_dir / "models" / mv.name / str(mv.version)
    target = cache / "best.pt"
    if not target.exists():
        configure(settings)
        cache.mkdir(parents=True, exist_ok=True)
        local = mlflow.artifacts.download_artifacts(
            run_id=mv.run_id, artifact_path="weights/best.pt", dst_path=str(cache / "dl")
        )
        Path(local).replace(target)
    return target


def load_model(mv: ModelVersion, device: str | None = None) -> tuple[Any, Any]:
    from her2ops.models.network import load_network, pick_device

    dev = pick_device(device)
    net, _ = load_network(weights_path(mv), get_profile(mv.profile), device=dev)
    net.eval()
    return net, dev


def select_cores(
    *, cores: Iterable[str] | None = None, split: str | None = None, partition: str | None = None
) -> list[tuple[int, str, str]]:
    """(core id, code, sha256) for explicit codes or for a split's partition."""
    with session_scope() as s:
        if cores:
            codes = list(cores)
            rows = s.execute(
                select(Core.id, Core.code, Core.sha256).where(Core.code.in_(codes))
            ).all()
            missing = sorted(set(codes) - {r[1] for r in rows})
            if missing:
                raise NotFound(f"unknown core(s): {', '.join(missing)}")
            return [(r[0], r[1], r[2]) for r in rows]
        if not split or not partition:
            raise ValueError("give --core CODE... or --split NAME --partition P")
        parts = patient_partitions(s, split)
        in_split = s.execute(
            select(Core.id, Core.code, Core.sha256, Core.patient_id)
            .where(Core.status == "ingested")
            .order_by(Core.code)
        ).all()
        return [(r[0], r[1], r[2]) for r in in_split if parts.get(r[3]) == partition]


def score_cores(
    *,
    actor: str | None,
    model_ref: str,
    cores: Iterable[str] | None = None,
    split: str | None = None,
    partition: str | None = None,
    n_sets: int | None = None,
    top_k: int | None = None,
    seed: int = 0,
    confidence: str = "margin",
    device: str | None = None,
    progress: bool = True,
) -> ScoreReport:
    """Score the chosen cores; returns what was written and what was already there."""
    from her2ops.models.inference import CONFIDENCES, score_core
    from her2ops.pipelines.sampling import StoreSampler

    settings = get_settings()
    device = device or settings.device
    with session_scope() as s:
        require(s, actor, "models.score")
        mv = resolve_ref(s, model_ref, name=settings.registered_model_name)
        s.expunge(mv)
    profile = get_profile(mv.profile)
    n = n_sets or profile.n_sets
    k = top_k or profile.top_k
    if confidence not in CONFIDENCES:
        raise ValueError(f"unknown confidence {confidence!r}; use one of {', '.join(CONFIDENCES)}")
    if not 1 <= k <= n:
        raise ValueError(f"--top-k {k} must be between 1 and --sets {n}")
    targets = select_cores(cores=cores, split=split, partition=partition)
    with session_scope() as s:
        done = set(
            s.scalars(
                select(Prediction.core_id).where(
                    Prediction.model_version_id == mv.id,
                    Prediction.n_sets == n,
                    Prediction.top_k == k,
                    Prediction.seed == seed,
                    Prediction.confidence == confidence,
                )
            )
        )
    report = ScoreReport(
        model=mv.name, version=mv.version, already_scored=sum(1 for t in targets if t[0] in done)
    )
    todo = [t for t in targets if t[0] not in done]
    if not todo:
        return report
    net, dev = load_model(mv, device)
    sampler = StoreSampler(settings.resolved_store_dir, profile.pss)
    total = 0.0
    rows: list[dict[str, Any]] = []
    for core_id, code, sha in tqdm(
        todo, desc=f"scoring with v{mv.version}", unit="core", disable=not progress
    ):
        t0 = time.perf_counter()
        try:
            sc = score_core(
                net,
                sampler.for_core(sha, code),
                n_sets=n,
                top_k=k,
                seed=seed,
                device=dev,
                confidence=confidence,
                batch_size=profile.recipe.batch_size,
            )
        except OSError as exc:
            report.failed.append(f"{code}: {exc}")
            continue
        dt = time.perf_counter() - t0
        total += dt
        rows.append(
            {
                "core_id": core_id,
                "model_version_id": mv.id,
                "n_sets": n,
                "top_k": k,
                "seed": seed,
                "confidence": confidence,
                "final_score": int(sc.final),
                "kcs_probs": [float(x) for x in sc.kcs_mean_probs],
                "set_probs": [[float(x) for x in r] for r in sc.set_probs],
                "kcs_indices": [int(i) for i in sc.kcs_indices],
                "seconds": dt,
            }
        )
        report.rows.append(
            {
                "core": code,
                "final": int(sc.final),
                "kcs_probs": [round(float(x), 4) for x in sc.kcs_mean_probs],
            }
        )
    sampler.close()
    if rows:
        with session_scope() as s:
            s.add_all(Prediction(**r) for r in rows)
    report.scored = len(rows)
    report.seconds_per_core = total / len(rows) if rows else None
    return report
