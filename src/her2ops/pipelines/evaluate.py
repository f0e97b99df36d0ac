"""Evaluate a model version on a split's partition with the paper's protocol, and the N/k study.

Scores the partition's labelled cores (reusing ``predictions`` already written for the same
N, k and seed), computes the paper's metrics from the final scores and the averaged KCS
probabilities, logs them to the model's MLflow run (metrics, PNG plots, a JSON table) and
records the headline figures on the ``model_versions`` row.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from her2ops.errors import InvalidRequest
from her2ops.pipelines.progress import Progress, no_progress, track
from her2ops.pipelines.runtime import Runtime, get_runtime
from her2ops.platform.access import require
from her2ops.platform.labels import label_snapshot
from her2ops.platform.predictions import PredictionKey, final_scores
from her2ops.platform.registry import resolve_ref
from her2ops.platform.schema import PARTITIONS, ModelVersion
from her2ops.profiles import get_profile

#: Bounds of the study's arguments (each set output costs a forward pass).
MAX_STUDY_SETS = 2000
MAX_STUDY_DRAWS = 100_000


def evaluate_model(
    *,
    actor: str | None,
    model_ref: str,
    split: str,
    partition: str = "test",
    n_sets: int | None = None,
    top_k: int | None = None,
    seed: int = 0,
    confidence: str = "margin",
    device: str | None = None,
    study: bool = False,
    study_sets: int = 300,
    study_draws: int = 10_000,
    study_n: list[int] | None = None,
    study_k: list[int] | None = None,
    study_replace: bool = False,
    progress: Progress = no_progress,
) -> dict[str, Any]:
    """Metrics of ``model_ref`` on ``split``/``partition``; see the module docstring."""
    from her2ops.models.evaluation import compute_metrics, metrics_table, plot_confusion, plot_roc
    from her2ops.pipelines.score import check_protocol, score_cores

    rt = get_runtime()
    settings = rt.settings
    if partition not in PARTITIONS:
        raise InvalidRequest(
            f"unknown partition {partition!r}; valid partitions: {', '.join(PARTITIONS)}"
        )
    if study and not 1 <= study_sets <= MAX_STUDY_SETS:
        raise InvalidRequest(f"--study-sets must be between 1 and {MAX_STUDY_SETS}")
    if study and not 1 <= study_draws <= MAX_STUDY_DRAWS:
        raise InvalidRequest(f"--draws must be between 1 and {MAX_STUDY_DRAWS}")
    with rt.session() as s:
        require(s, actor, "models.score")
        mv = resolve_ref(s, model_ref, name=settings.registered_model_name)
        s.expunge(mv)
        snapshot, snapshot_hash = label_snapshot(s, split)
    items = [i for i in snapshot if i.partition == partition]
    if not items:
        raise InvalidRequest(f"split {split!r} has no labelled cores in partition {partition!r}")
    profile = get_profile(mv.profile)
    n = profile.n_sets if n_sets is None else n_sets
    k = profile.top_k if top_k is None else top_k
    check_protocol(n, k, confidence)
    score_cores(
        actor=actor,
        model_ref=str(mv.version),
        cores=[i.core for i in items],
        n_sets=n,
        top_k=k,
        seed=seed,
        confidence=confidence,
        device=device,
        progress=progress,
    )
    with rt.session() as s:
        preds = final_scores(
            s, PredictionKey(mv.id, n, k, seed, confidence), [i.core for i in items]
        )
    scored = [i for i in items if i.core in preds]
    y_true = np.array([i.label for i in scored])
    y_pred = np.array([preds[i.core][0] for i in scored])
    probs = np.array([preds[i.core][1] for i in scored], dtype=np.float64)
    metrics = compute_metrics(y_true, y_pred, probs)
    result: dict[str, Any] = {
        "model": mv.name,
        "version": mv.version,
        "run_id": mv.run_id,
        "split": split,
        "partition": partition,
        "n_sets": n,
        "top_k": k,
        "seed": seed,
        "confidence": confidence,
        "labels_now": snapshot_hash,
        "cores": len(scored),
        "not_scored": len(items) - len(scored),
        "metrics": metrics,
        "table": metrics_table(metrics),
    }

    prefix = f"{partition}_"
    flat = {
        prefix
        + r["metric"]
        .replace(" ", "_")
        .replace("/", "_")
        .replace("+", "p")
        .replace("{", "")
        .replace("}", "")
        .replace(",", ""): float(r["value"])
        for r in result["table"]
        if r["value"] is not None
    }
    rt.tracking.log_metrics(mv.run_id, flat)
    out_dir = settings.data_dir / "evaluations" / f"{mv.name}-v{mv.version}"
    out_dir.mkdir(parents=True, exist_ok=True)
    written = [
        plot_confusion(
            np.array(metrics["confusion_matrix"]),
            out_dir / f"{partition}_confusion.png",
            title=f"{partition}: N={n}, k={k}",
        ),
        plot_roc(y_true, probs, out_dir / f"{partition}_roc.png"),
        out_dir / f"{partition}_metrics.json",
    ]
    written[2].write_text(json.dumps(result, indent=2, default=float))
    for f in written:
        rt.tracking.log_artifact(mv.run_id, f, "evaluation")
    result["plots"] = str(out_dir)
    with rt.session() as s:
        row = s.get(ModelVersion, mv.id)
        assert row is not None
        row.metrics = {**(row.metrics or {}), **flat}

    if study:
        result["study"] = run_study_for(
            rt,
            mv=mv,
            items=scored,
            partition=partition,
            confidence=confidence,
            study_sets=study_sets,
            draws=study_draws,
            n_values=study_n,
            k_values=study_k,
            out_dir=out_dir,
            device=device,
            progress=progress,
            # issue 13: headline at the evaluated (N, k), the scored draw placed in it
            n=n,
            k=k,
            replace=study_replace,
            single_accuracy=metrics["accuracy"],
            single_seed=seed,
        )
        for name in ("study.png", "study.json"):
            rt.tracking.log_artifact(mv.run_id, out_dir / name, "evaluation")
        # issue 13: the paper's headline is the study's median at (N, k), not the single draw
        from her2ops.models.study import headline_metrics

        result["headline"] = result["study"]["headline"]
        rt.tracking.log_metrics(mv.run_id, headline_metrics(result["headline"], prefix))
    return result


def run_study_for(
    rt: Runtime,
    *,
    mv: ModelVersion,
    items: list[Any],
    partition: str,
    confidence: str,
    study_sets: int,
    draws: int,
    n_values: list[int] | None,
    k_values: list[int] | None,
    out_dir: Path,
    device: str | None,
    progress: Progress,
    n: int = 20,
    k: int = 5,
    replace: bool = False,
    single_accuracy: float | None = None,
    single_seed: int | None = None,
) -> dict[str, Any]:
    """Cache ``study_sets`` set outputs per core (OUTPUTS.npz) and run the N/k study on it,
    with the paper's headline at (n, k) and the confidence-measure table."""
    from her2ops.models.inference import predict_sets
    from her2ops.models.study import evaluation_study
    from her2ops.pipelines.score import load_model, trained_profile

    profile = trained_profile(rt, mv)
    cache = out_dir / f"outputs_{partition}_M{study_sets}.npz"
    if cache.exists():
        data = np.load(cache)
        probs, labels = data["probs"], data["labels"]
    else:
        from her2ops.pipelines.sampling import set_chunks

        net, dev = load_model(rt, mv, device)
        sampler = rt.sampler(profile.pss)
        # A core's M sets under one plan (each tile decoded once for all of them), a batch at a
        # time into one reused buffer: memory is one batch, not M sets.
        batch = profile.recipe.batch_size
        chunks = set_chunks(study_sets, batch)
        buffer = sampler.batch_buffer(len(chunks[0]))
        all_probs = []
        for item in track(items, progress, f"caching {study_sets} set outputs per core"):
            # seed 1 keeps these sets apart from the scoring sets (seed 0)
            batches = sampler.core_batches(
                item.sha256, item.core, 1, chunks, page=item.page, out=buffer
            )
            outs = [predict_sets(net, sets, device=dev, batch_size=batch) for sets in batches]
            all_probs.append(np.concatenate(outs))
        sampler.close()
        probs = np.stack(all_probs).astype(np.float32)
        labels = np.array([i.label for i in items])
        np.savez_compressed(cache, probs=probs, labels=labels)
    m = probs.shape[1]
    n_vals = n_values or [n for n in [*range(1, 21), 30, 50, 100, 150, 200] if n <= m]
    k_vals = k_values or [k for k in [*range(1, 21), 30, 50, 100] if k <= m]
    n_at = min(200, max(n_vals))
    res, summary = evaluation_study(
        probs,
        labels,
        n=n,
        k=k,
        n_values=n_vals,
        k_values=k_vals,
        n_at=n_at,
        k_at=min(5, n_at),
        draws=draws,
        confidence=confidence,
        replace=replace,
        single_accuracy=single_accuracy,
        single_seed=single_seed,
    )
    res.plot(out_dir / "study.png")
    (out_dir / "study.json").write_text(json.dumps(summary, indent=2, default=float))
    summary["outputs"] = str(cache)
    return summary
