"""Train a DenseNet PSS model on a split, track it in MLflow and register the version.

Flow: label snapshot of the split (train + val partitions) -> the training patients (all of them,
or an ensemble member's bootstrap / k-fold resample, ``pipelines.resample``) -> split frozen ->
MLflow run with params (profile, PSS geometry, recipe, split, snapshot hash, resample, code
version) -> ``fit`` with
per-epoch metrics logged in one batch per epoch -> curves and validation confusion matrix as
PNG artefacts -> the weights-only file logged once (``weights/best.pt`` with its ``MLmodel``),
registered from that folder with alias ``challenger`` -> a ``model_versions`` row with the lineage.

Registration is all or nothing: if the database row cannot be written, the MLflow model version
is deleted again, so there is never a half-registered model.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch.distributed as dist

from her2ops.errors import InvalidRequest
from her2ops.models.distributed import setup_distributed
from her2ops.pipelines.progress import Progress, no_progress, track
from her2ops.pipelines.resample import TrainingSample, check_resample, resample_training
from her2ops.pipelines.runtime import Runtime, get_runtime
from her2ops.platform import audit
from her2ops.platform.access import require
from her2ops.platform.labels import SnapshotItem, label_snapshot
from her2ops.platform.registry import set_alias
from her2ops.platform.schema import ModelVersion
from her2ops.platform.splits import freeze_split, get_split
from her2ops.profiles import Profile, get_profile, with_padding
from her2ops.tracking import code_version

#: Upper bound of --epochs (a typo must not mean weeks of GPU time).
MAX_EPOCHS = 1000

log = logging.getLogger(__name__)


@dataclass
class TrainOutcome:
    run_id: str
    version: int
    name: str
    label_snapshot_hash: str
    n_train: int
    n_val: int
    epochs_run: int
    best_epoch: int
    best_val_loss: float
    skipped: int
    seconds: float
    history: list[dict[str, float]]
    resample: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def check_geometry(profile: Profile, items: list[SnapshotItem]) -> None:
    """Refuse, before any training, cores too small for the profile's PSS geometry."""
    pss = profile.pss
    if pss.pad_small:
        return
    deepest = max(pss.patches_per_level)
    need = pss.patch_size * (2**deepest)
    small = [i for i in items if min(i.width, i.height) < need]
    if small:
        shown = ", ".join(f"{i.core} ({i.width}x{i.height})" for i in small[:5])
        more = f" and {len(small) - 5} more" if len(small) > 5 else ""
        raise InvalidRequest(
            f"profile {profile.name!r} samples {pss.patch_size} px patches at pyramid level "
            f"{deepest}, so cores must be at least {need}x{need} px; too small: {shown}{more}"
        )


def geometry_warnings(profile: Profile, items: list[SnapshotItem]) -> list[str]:
    """Lines for cores whose size makes a pyramid level degenerate (or padded) in ``profile``:
    the first few by name, then a count."""
    from her2ops.imaging.fit import profile_fit

    lines = [
        w
        for i in items
        if i.width and i.height
        for w in [profile_fit(profile.pss, i.width, i.height, name=profile.name).warning(i.core)]
        if w
    ]
    if len(lines) > 3:
        lines = [
            *lines[:3],
            f"... and {len(lines) - 3} more core(s) that do not fit {profile.name}",
        ]
    return lines


def _items(snapshot: list[SnapshotItem], partition: str) -> list[Any]:
    from her2ops.models.data import LabelledCore

    return [
        LabelledCore(i.core, i.sha256, i.label, page=i.page)
        for i in snapshot
        if i.partition == partition
    ]


def _training_items(sample: TrainingSample) -> list[Any]:
    from her2ops.models.data import LabelledCore

    return [LabelledCore(i.core, i.sha256, i.label, copy, page=i.page) for i, copy in sample.cores]


def train_model(
    *,
    actor: str | None,
    split: str,
    profile_name: str,
    epochs: int | None = None,
    resume_run: str | None = None,
    seed: int = 0,
    device: str | None = None,
    pad_small: bool = False,
    resample: str = "none",
    member: int = 0,
    members: int = 1,
    resample_seed: int | None = None,
    progress: Progress = no_progress,
) -> TrainOutcome:
    """Train, log, register. ``resume_run`` continues a killed run from its last checkpoint.

    ``resample`` (``none``, ``bootstrap`` or ``kfold``) picks the training patients of ensemble
    member ``member`` of ``members`` (``pipelines.resample``), drawn from ``resample_seed``
    (default ``seed``; an ensemble's members share it, so their k folds partition the patients).
    Every argument is checked before anything is written (no frozen split, no MLflow run for a
    request that is then refused).
    """
    from her2ops.models.data import check_label_coverage

    rt = get_runtime()
    device = device or rt.device
    profile: Profile = with_padding(get_profile(profile_name), pad_small)
    if epochs is not None and not 1 <= epochs <= MAX_EPOCHS:
        raise InvalidRequest(f"--epochs must be between 1 and {MAX_EPOCHS}, not {epochs}")
    plan = check_resample(
        resample, member, members, seed if resample_seed is None else resample_seed
    )
    with rt.session() as s:
        require(s, actor, "models.train")
        snapshot, snapshot_hash = label_snapshot(s, split)
    check_geometry(profile, [i for i in snapshot if i.partition in ("train", "val")])
    warnings = geometry_warnings(profile, [i for i in snapshot if i.partition in ("train", "val")])
    for line in warnings:
        log.warning("%s", line)
    sample = resample_training([i for i in snapshot if i.partition == "train"], plan)
    train_items, val_items = _training_items(sample), _items(snapshot, "val")
    try:
        check_label_coverage([i.label for i in train_items])
    except ValueError as exc:
        raise InvalidRequest(f"split {split!r}: {exc}") from None
    if not val_items:
        raise InvalidRequest(f"split {split!r} has no labelled cores in its val partition")
    if resume_run:
        params = rt.tracking.run_params(resume_run)
        if params.get("label_snapshot_hash") != snapshot_hash:
            raise InvalidRequest(
                f"run {resume_run} was trained on other labels (snapshot "
                f"{params.get('label_snapshot_hash')}, now {snapshot_hash})"
            )
        trained_on = params.get("train_patients_hash")
        if trained_on is not None and trained_on != sample.patients_hash:
            raise InvalidRequest(
                f"run {resume_run} was trained on other patients ({params.get('resample')} "
                f"resample); resume it with the resample it started with"
            )

    # Under torchrun every rank runs this function: rank 0 owns the MLflow run, the split
    # freeze and the registration; the others only train, in the run folder rank 0 names.
    ctx, _ = setup_distributed(device)
    try:
        outcome = _train(
            ctx,
            rt,
            profile,
            split,
            snapshot_hash,
            train_items,
            val_items,
            sample.record(),
            epochs=epochs,
            resume_run=resume_run,
            seed=seed,
            device=device,
            progress=progress,
            actor=actor,
        )
    finally:
        if ctx.owns_group:
            dist.destroy_process_group()
    outcome.warnings = warnings
    return outcome


def _train(
    ctx: Any,
    rt: Runtime,
    profile: Profile,
    split: str,
    snapshot_hash: str,
    train_items: list[Any],
    val_items: list[Any],
    resampled: dict[str, Any],
    *,
    epochs: int | None,
    resume_run: str | None,
    seed: int,
    device: str | None,
    progress: Progress,
    actor: str | None,
) -> TrainOutcome:
    from her2ops.models.data import PSSDataset
    from her2ops.models.training import FitConfig, fit, validation_sets_per_core

    settings = rt.settings
    tracking = rt.tracking if ctx.is_main else None
    run_id = resume_run or ""
    if tracking is not None:
        if resume_run:
            tracking.mark_running(resume_run)
        else:
            run_id = tracking.create_run(f"{profile.name}-{split}")
        with rt.session() as s:
            freeze_split(s, name=split, reason=f"trained on by MLflow run {run_id}")
    if ctx.enabled:
        box = [run_id]
        dist.broadcast_object_list(box, src=0)
        run_id = str(box[0])
    out_dir = settings.data_dir / "runs" / run_id

    sampler = rt.sampler(profile.pss)
    train_ds = PSSDataset(
        train_items,
        sampler,
        train=True,
        seed=seed,
        sets_per_core=profile.recipe.train_sets_per_core,
    )
    val_sets = validation_sets_per_core(profile, settings.val_sets_per_core)  # issue 13
    val_ds = PSSDataset(val_items, sampler, train=False, seed=seed, sets_per_core=val_sets)
    cfg = FitConfig(
        profile=profile,
        out_dir=out_dir,
        epochs=epochs,
        seed=seed,
        device=device,
        resume=bool(resume_run),
        progress=progress,
    )
    if tracking is not None and not resume_run:
        params = {
            "profile": profile.name,
            "arch": profile.arch,
            "split": split,
            "label_snapshot_hash": snapshot_hash,
            "code_version": code_version(),
            "pss": json.dumps(profile.pss.to_dict()),
            "patch_size": profile.pss.patch_size,
            "channels": profile.pss.channels,
            "lr": cfg.lr,
            "batch_size": cfg.batch_size,
            "epochs": cfg.epochs,
            "seed": seed,
            "n_sets": profile.n_sets,
            "top_k": profile.top_k,
            "n_train": len(train_items),
            "n_val": len(val_items),
            "weight_decay": profile.recipe.weight_decay,
            "plateau_patience": profile.recipe.plateau_patience,
            "early_stopping_patience": cfg.early_stopping_patience,
            "train_sets_per_core": profile.recipe.train_sets_per_core,
            "val_sets_per_core": val_sets,
            "resample": resampled["mode"],
            "resample_member": resampled["member"],
            "resample_members": resampled["members"],
            "resample_seed": resampled["seed"],
            "train_patients": resampled["patients"],
            "train_patients_distinct": resampled["distinct_patients"],
            "train_patients_hash": resampled["patients_hash"],
            "resample_attempts": resampled["attempts"],
        }
        tracking.log_params(run_id, params)

    def on_epoch_end(epoch: int, metrics: dict[str, float], _state: Any) -> None:
        assert tracking is not None  # fit calls this on rank 0 only
        tracking.log_metrics(run_id, metrics, step=epoch)

    t0 = time.perf_counter()
    try:
        result = fit(cfg, train_ds, val_ds, on_epoch_end=on_epoch_end)
    except BaseException:
        if tracking is not None:
            tracking.set_terminated(run_id, status="FAILED")
        raise
    finally:
        sampler.close()
    seconds = time.perf_counter() - t0
    if tracking is not None and resume_run:
        # A kill between an epoch's checkpoint and its metrics call loses those metrics:
        # the checkpoint's history has them, so log the epochs MLflow lacks.
        logged = tracking.logged_steps(run_id, "val_loss")
        for row in result.history:
            if int(row["epoch"]) not in logged:
                metrics = {k: v for k, v in row.items() if k != "epoch"}
                on_epoch_end(int(row["epoch"]), metrics, None)
    version = -1  # non-zero torchrun ranks register nothing
    if ctx.is_main:
        version = _register(
            rt,
            run_id=run_id,
            profile=profile,
            result=result,
            split=split,
            snapshot_hash=snapshot_hash,
            val_items=val_items,
            actor=actor,
            device=device,
            progress=progress,
        )
        # The run is registered: its weights live in MLflow now, and a finished run is never
        # resumed, so the local checkpoints (the resumable one holds optimizer state too) go.
        shutil.rmtree(out_dir, ignore_errors=True)
    return TrainOutcome(
        run_id=run_id,
        version=version,
        name=settings.registered_model_name,
        label_snapshot_hash=snapshot_hash,
        n_train=len(train_items),
        n_val=len(val_items),
        epochs_run=result.epochs_run,
        best_epoch=result.best_epoch,
        best_val_loss=result.best_val_loss,
        skipped=result.skipped,
        seconds=seconds,
        history=result.history,
        resample=resampled,
    )


def _register(
    rt: Runtime,
    *,
    run_id: str,
    profile: Profile,
    result: Any,
    split: str,
    snapshot_hash: str,
    val_items: list[Any],
    actor: str | None,
    device: str | None,
    progress: Progress,
) -> int:
    from her2ops.models.evaluation import compute_metrics, plot_confusion, plot_curves
    from her2ops.models.inference import score_batches
    from her2ops.models.network import load_network, pick_device
    from her2ops.pipelines.sampling import set_chunks

    tracking = rt.tracking
    name = rt.settings.registered_model_name
    dev = pick_device(device)
    net, _ = load_network(result.best_checkpoint, profile, device=dev)

    # Validation with the paper's protocol (N sets, top-k) on the best weights.
    sampler = rt.sampler(profile.pss)
    chunks = set_chunks(profile.n_sets, profile.recipe.batch_size)
    y_true, y_pred, probs = [], [], []
    for item in track(val_items, progress, "validation with the paper's protocol"):
        # one plan per core: each tile is decoded once for all its N sets, as scoring does
        sc = score_batches(
            net,
            sampler.core_batches(item.sha256, item.core, 0, chunks, page=item.page),
            top_k=profile.top_k,
            device=dev,
            batch_size=profile.recipe.batch_size,
        )
        y_true.append(item.label)
        y_pred.append(sc.final)
        probs.append(sc.kcs_mean_probs)
    sampler.close()
    val = compute_metrics(np.array(y_true), np.array(y_pred), np.array(probs))
    headline = {
        f"val_protocol_{k}": float(v)
        for k, v in val.items()
        if isinstance(v, int | float) and v is not None and np.isfinite(v)
    }
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        plot_curves(result.history, t / "curves.png")
        plot_confusion(
            np.array(val["confusion_matrix"]),
            t / "val_confusion.png",
            title=f"validation, N={profile.n_sets}, k={profile.top_k}",
        )
        (t / "val_metrics.json").write_text(json.dumps(val, indent=2, default=float))
        for f in ("curves.png", "val_confusion.png", "val_metrics.json"):
            tracking.log_artifact(run_id, t / f, "training")
    tracking.log_metrics(run_id, headline)

    # The one copy of the weights in MLflow: the version is registered from the run's file.
    version = tracking.register_model(run_id, Path(result.best_checkpoint), profile=profile.name)
    previous = tracking.alias_version("challenger")
    try:
        tracking.set_alias("challenger", version)
        with rt.session() as s:
            user = require(s, actor, "models.train")
            mv = ModelVersion(
                name=name,
                version=version,
                run_id=run_id,
                profile=profile.name,
                split_id=get_split(s, split).id,
                label_snapshot_hash=snapshot_hash,
                code_version=code_version(),
                aliases=[],
                metrics=headline,
                created_by_id=user.id,
            )
            s.add(mv)
            s.flush()
            set_alias(s, mv, "challenger")
            audit.record(
                s,
                actor=user,
                action="models.register",
                entity="model_version",
                key=f"{name}/{version}",
                details={"run_id": run_id, "split": split, "profile": profile.name},
            )
    except BaseException:
        log.error("registration of %s v%s failed; removing the MLflow version", name, version)
        tracking.set_alias("challenger", previous)
        tracking.delete_version(version)
        tracking.set_terminated(run_id, status="FAILED")
        raise
    tracking.set_terminated(run_id, status="FINISHED")
    return version
