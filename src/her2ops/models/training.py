"""Training: ``fit(cfg, train_ds, val_ds)`` with the paper's recipe, resumable after a kill.

Recipe (from the profile): AdamW, learning rate reduced when the validation loss plateaus,
class-weighted cross-entropy (weights inversely proportional to class frequency in the training
partition), flips and 90-degree rotations (in the dataset), early stopping on validation loss.
On CUDA the forward pass runs under bf16 autocast with channels_last tensors.

The class-weighted loss is the paper's: for a batch of m sets, L = -(1/m) sum_i w_{y_i} log
p_{i, y_i} (:class:`PaperWeightedCE`), i.e. the weighted sum divided by the batch size m, not
PyTorch's weighted mean (``CrossEntropyLoss(weight=w)``), which divides by sum_i w_{y_i}. With
PyTorch's mean every batch has the same total weight, so a batch full of a rare class counts no
more than one of a frequent class; with the paper's the rare class's larger weights scale its
gradients up. The validation loss uses the same normalisation (sum over sets / sets).

Validation. The validation loss drives the plateau schedule, early stopping and the choice of
``best.pt``; with one random PSS per core it is dominated by sampling noise on a small partition.
The ``paper`` profile therefore scores ``val_sets_per_core = 5`` sets per validation core (the
other profiles keep their own value); ``HER2OPS_VAL_SETS_PER_CORE`` overrides it
(:func:`validation_sets_per_core`), and :func:`fit` logs the number it used.

Checkpoints: ``out_dir/last.pt`` after every epoch and every ``checkpoint_every_steps`` steps
(model, optimizer, scheduler, epoch, step within the epoch, running sums, early-stopping state,
torch RNG states), ``out_dir/best.pt`` (weights only) whenever the validation loss improves. Every
data-side random choice is a function of ``(seed, epoch, core)`` and the batch order of
``(seed, epoch)`` (:class:`~her2ops.models.data.EpochBatchSampler`), so ``resume=True`` after a
SIGKILL skips the batches already done and ends with the same weights as an uninterrupted run
(bitwise on CPU; on CUDA up to cuDNN's non-deterministic kernels, which ``cudnn.benchmark``
picks for speed). The checkpoint itself is :mod:`her2ops.models.checkpoints`.

Multi-GPU: launched by ``torchrun`` (``RANK``/``WORLD_SIZE`` set), ``fit`` joins a process group
(NCCL on CUDA, gloo on CPU), wraps the model in DDP and gives each rank its share of every epoch;
only rank 0 writes checkpoints and calls ``on_epoch_end``. ``batch_size`` is per process.

History: one dict per epoch with ``train_loss`` (mean class-weighted CE over the epoch's sets),
``val_loss`` (class-weighted CE over the validation sets, summed and divided by their number;
what the plateau scheduler and early stopping watch), ``val_acc`` (per set, not the N/k
protocol), ``lr`` (the rate the epoch ran at), ``skipped`` (unreadable cores, train +
validation) and ``seconds``. The final short batch of an epoch is dropped, and a batch left with
fewer than two readable sets is passed over.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from her2ops.models.checkpoints import EpochStats, TrainProgress, load_progress, save_progress
from her2ops.models.data import (
    EpochBatchSampler,
    PSSDataset,
    check_label_coverage,
    class_weights,
    make_loader,
)
from her2ops.models.distributed import DistContext, setup_distributed
from her2ops.models.network import (
    autocast,
    batch_to_device,
    build_network,
    save_weights,
    to_device,
)
from her2ops.profiles import Profile
from her2ops.progress import Progress, no_progress

log = logging.getLogger(__name__)


class PaperWeightedCE(nn.Module):
    """The paper's class-weighted cross-entropy: ``sum_i w[y_i] * CE_i / m`` over a batch of
    ``m`` sets (PyTorch's weighted mean would divide by ``sum_i w[y_i]``)."""

    weight: torch.Tensor

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("weight", weight.float())

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        total = nn.functional.cross_entropy(logits, target, weight=self.weight, reduction="sum")
        return total / target.shape[0]


#: the paper profile's minimum number of validation sets per core (see the module docstring)
PAPER_VAL_SETS_PER_CORE = 5


def validation_sets_per_core(profile: Profile, override: int | None = None) -> int:
    """PSSs per validation core: ``override`` (``HER2OPS_VAL_SETS_PER_CORE``) if given, else
    the profile's ``val_sets_per_core`` (5 for ``paper``)."""
    n = profile.recipe.val_sets_per_core if override is None else int(override)
    if n < 1:
        raise ValueError(f"validation sets per core must be at least 1, not {n}")
    if profile.name == "paper" and n < PAPER_VAL_SETS_PER_CORE:
        log.warning(
            "paper profile: %d validation set(s) per core; the validation loss that picks the "
            "checkpoint is then dominated by sampling noise (%d recommended)",
            n,
            PAPER_VAL_SETS_PER_CORE,
        )
    return n


@dataclass
class FitConfig:
    """What one training run needs; ``None`` fields take the profile's recipe value."""

    profile: Profile
    out_dir: Path
    epochs: int | None = None
    seed: int = 0
    device: str | None = None
    resume: bool = False
    batch_size: int | None = None
    lr: float | None = None
    num_workers: int | None = None
    early_stopping_patience: int | None = None
    checkpoint_every_steps: int | None = None
    init_checkpoint: Path | None = None
    memory_efficient: bool = False
    progress: Progress | None = None

    def __post_init__(self) -> None:
        self.out_dir = Path(self.out_dir)
        r = self.profile.recipe
        self.epochs = r.epochs if self.epochs is None else self.epochs
        self.batch_size = r.batch_size if self.batch_size is None else self.batch_size
        self.lr = r.lr if self.lr is None else self.lr
        self.num_workers = r.num_workers if self.num_workers is None else self.num_workers
        if self.early_stopping_patience is None:
            self.early_stopping_patience = r.early_stopping_patience
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError("epochs and batch_size must be at least 1")

    @property
    def last_checkpoint(self) -> Path:
        return self.out_dir / "last.pt"

    @property
    def best_checkpoint(self) -> Path:
        return self.out_dir / "best.pt"


@dataclass
class FitResult:
    """What ``fit`` returns; ``history`` has one dict per epoch."""

    best_checkpoint: Path
    last_checkpoint: Path
    history: list[dict[str, float]]
    epochs_run: int
    stopped_early: bool
    skipped: int
    best_epoch: int
    best_val_loss: float


@dataclass
class FitState:
    """Handed to ``on_epoch_end`` (rank 0 only) after the epoch's checkpoints are written."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    epoch: int
    is_best: bool
    best_epoch: int
    best_val_loss: float
    best_checkpoint: Path
    last_checkpoint: Path


EpochCallback = Callable[[int, dict[str, float], FitState], None]


def train_one_epoch(
    model: nn.Module,
    loader: DataLoader[Any],
    optimizer: torch.optim.Optimizer,
    criterion: nn.Module,
    device: torch.device,
    *,
    ctx: DistContext | None = None,
    stats: EpochStats | None = None,
    start_step: int = 0,
    on_step: Callable[[int, EpochStats], None] | None = None,
    desc: str = "train",
    progress: Progress | None = None,
) -> EpochStats:
    """One pass over ``loader``; ``stats`` carries sums over from before a resume.

    A batch with fewer than two usable sets (all skipped, or a lone set BatchNorm cannot
    normalise) is passed over by every rank together.
    """
    ctx = ctx or DistContext()
    stats = stats or EpochStats()
    model.train()
    step = start_step
    report = progress if (progress is not None and ctx.is_main) else no_progress
    total = start_step + len(loader)
    report(step, total, desc)
    for batch in loader:
        skipped = len(batch.skipped)
        usable = batch.x is not None and batch.x.shape[0] >= 2
        if ctx.enabled:  # all ranks must take (or pass over) the step together
            usable = ctx.all_reduce([float(usable)], dist.ReduceOp.MIN)[0] > 0
        loss_sum, n = 0.0, 0.0
        if usable and batch.x is not None and batch.y is not None:
            x = batch_to_device(batch.x, device)
            y = batch.y.to(device, non_blocking=True)
            with autocast(device):
                logits = model(x)
            loss = criterion(logits.float(), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            n = float(y.shape[0])
            loss_sum = float(loss.detach()) * n
        loss_sum, n, skipped_f = ctx.all_reduce([loss_sum, n, float(skipped)])
        stats.loss_sum += loss_sum
        stats.samples += n
        stats.skipped += int(skipped_f)
        if batch.skipped:
            log.warning("skipped unreadable cores: %s", ", ".join(batch.skipped))
        step += 1
        stats.steps = step
        report(step, total, desc)
        if on_step is not None:
            on_step(step, stats)
    return stats


@torch.inference_mode()
def evaluate_loss(
    model: nn.Module,
    loader: DataLoader[Any],
    criterion_weight: torch.Tensor | None,
    device: torch.device,
    *,
    ctx: DistContext | None = None,
    progress: Progress | None = None,
) -> dict[str, float]:
    """Class-weighted cross-entropy (sum / sets, as :class:`PaperWeightedCE`) and accuracy per
    set: ``val_loss``, ``val_acc``, ``n``, ``skipped`` (sums over ranks)."""
    ctx = ctx or DistContext()
    model.eval()
    weight = criterion_weight.to(device) if criterion_weight is not None else None
    loss_sum = correct = n = skipped = 0.0
    report = progress if (progress is not None and ctx.is_main) else no_progress
    report(0, len(loader), "validation")
    for i, batch in enumerate(loader, 1):
        report(i, len(loader), "validation")
        skipped += len(batch.skipped)
        if batch.x is None or batch.y is None:
            continue
        x = batch_to_device(batch.x, device)
        y = batch.y.to(device)
        with autocast(device):
            logits = model(x)
        logits = logits.float()
        # the paper's normalisation: weighted sum over sets / number of sets (PaperWeightedCE)
        loss_sum += float(nn.functional.cross_entropy(logits, y, weight=weight, reduction="sum"))
        correct += float((logits.argmax(1) == y).sum())
        n += float(y.shape[0])
    loss_sum, correct, n, skipped = ctx.all_reduce([loss_sum, correct, n, skipped])
    return {
        "val_loss": loss_sum / n if n else math.nan,
        "val_acc": correct / n if n else math.nan,
        "n": n,
        "skipped": skipped,
    }


def fit(
    cfg: FitConfig,
    train_ds: PSSDataset,
    val_ds: PSSDataset,
    *,
    on_epoch_end: EpochCallback | None = None,
) -> FitResult:
    """Train the profile's network; see the module docstring for checkpoints and resumption."""
    check_label_coverage([it.label for it in train_ds.items])
    if len(val_ds) == 0:
        raise ValueError("the validation partition is empty")
    ctx, device = setup_distributed(cfg.device)
    try:
        return _fit(cfg, train_ds, val_ds, ctx, device, on_epoch_end)
    finally:
        if ctx.owns_group:
            dist.destroy_process_group()


def _fit(
    cfg: FitConfig,
    train_ds: PSSDataset,
    val_ds: PSSDataset,
    ctx: DistContext,
    device: torch.device,
    on_epoch_end: EpochCallback | None,
) -> FitResult:
    profile, recipe = cfg.profile, cfg.profile.recipe
    assert cfg.epochs is not None and cfg.batch_size is not None and cfg.lr is not None
    assert cfg.num_workers is not None
    cfg.out_dir.mkdir(parents=True, exist_ok=True)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input shapes: let cuDNN pick kernels
    torch.manual_seed(cfg.seed)
    net = build_network(
        profile, init_checkpoint=cfg.init_checkpoint, memory_efficient=cfg.memory_efficient
    )
    model: nn.Module = to_device(net, device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=recipe.weight_decay)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode="min", factor=recipe.plateau_factor, patience=recipe.plateau_patience
    )
    weight = class_weights([it.label for it in train_ds.items]).to(device)
    criterion = PaperWeightedCE(weight)
    log.info(
        "validation loss over %d set(s) per core on %d core(s)",
        val_ds.sets_per_core,
        len(val_ds.items),
    )
    prog = TrainProgress()
    if cfg.resume and cfg.last_checkpoint.exists():
        prog = load_progress(
            cfg.last_checkpoint,
            profile=profile,
            seed=cfg.seed,
            world_size=ctx.world_size,
            model=net,
            optimizer=optimizer,
            scheduler=scheduler,
        )
        log.info("resuming at epoch %d step %d", prog.epoch, prog.step)
    if prog.stopped_early or prog.epoch >= cfg.epochs:
        return _result(cfg, prog)  # nothing left to do (asking for more epochs continues)
    if ctx.enabled:
        model = DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )

    def save_last() -> None:
        if ctx.is_main:
            save_progress(
                cfg.last_checkpoint,
                prog,
                profile=profile,
                seed=cfg.seed,
                world_size=ctx.world_size,
                model=net,
                optimizer=optimizer,
                scheduler=scheduler,
            )

    every = cfg.checkpoint_every_steps
    pin = device.type == "cuda"
    for epoch in range(prog.epoch, cfg.epochs):
        started = time.perf_counter()
        train_ds.set_epoch(epoch)
        sampler = EpochBatchSampler(
            len(train_ds),
            cfg.batch_size,
            shuffle=True,
            seed=cfg.seed,
            epoch=epoch,
            rank=ctx.rank,
            world_size=ctx.world_size,
            drop_last=True,
            start_step=prog.step,
        )
        loader = make_loader(train_ds, sampler, num_workers=cfg.num_workers, pin_memory=pin)
        lr = float(optimizer.param_groups[0]["lr"])

        def on_step(step: int, stats: EpochStats) -> None:
            prog.step, prog.accum = step, stats
            if every and step % every == 0:
                save_last()

        stats = train_one_epoch(
            model,
            loader,
            optimizer,
            criterion,
            device,
            ctx=ctx,
            stats=prog.accum,
            start_step=prog.step,
            on_step=on_step,
            desc=f"epoch {epoch + 1}/{cfg.epochs}",
            progress=cfg.progress,
        )
        val_sampler = EpochBatchSampler(
            len(val_ds),
            cfg.batch_size,
            shuffle=False,
            rank=ctx.rank,
            world_size=ctx.world_size,
            pad=False,
        )
        val_loader = make_loader(val_ds, val_sampler, num_workers=cfg.num_workers, pin_memory=pin)
        # Evaluate the bare network: a DDP forward may issue collectives, and ranks can hold
        # different numbers of validation batches. Rank 0's buffers make the ranks agree.
        ctx.broadcast_buffers(net)
        val = evaluate_loss(net, val_loader, weight, device, ctx=ctx, progress=cfg.progress)
        scheduler.step(val["val_loss"])
        is_best = val["val_loss"] < prog.best_val_loss
        if is_best:
            prog.best_val_loss, prog.best_epoch, prog.bad_epochs = val["val_loss"], epoch, 0
        else:
            prog.bad_epochs += 1
        skipped = stats.skipped + int(val["skipped"])
        prog.skipped_total += skipped
        metrics = {
            "epoch": float(epoch),
            "train_loss": stats.mean_loss,
            "val_loss": val["val_loss"],
            "val_acc": val["val_acc"],
            "lr": lr,
            "skipped": float(skipped),
            "seconds": time.perf_counter() - started,
        }
        prog.history.append(metrics)
        prog.epoch, prog.step, prog.accum = epoch + 1, 0, EpochStats()
        assert cfg.early_stopping_patience is not None
        prog.stopped_early = prog.bad_epochs >= cfg.early_stopping_patience
        prog.finished = prog.stopped_early or prog.epoch >= cfg.epochs
        if ctx.is_main:
            if is_best:
                save_weights(
                    net,
                    cfg.best_checkpoint,
                    profile,
                    epoch=epoch,
                    val_loss=val["val_loss"],
                    val_acc=val["val_acc"],
                )
            save_last()
            if on_epoch_end is not None:
                on_epoch_end(
                    epoch,
                    dict(metrics),
                    FitState(
                        model=net,
                        optimizer=optimizer,
                        epoch=epoch,
                        is_best=is_best,
                        best_epoch=prog.best_epoch,
                        best_val_loss=prog.best_val_loss,
                        best_checkpoint=cfg.best_checkpoint,
                        last_checkpoint=cfg.last_checkpoint,
                    ),
                )
        log.info("epoch %d: %s", epoch, metrics)
        if prog.stopped_early:
            log.info("early stop: no val-loss improvement for %d epochs", prog.bad_epochs)
            break
    if ctx.enabled:
        dist.barrier()  # rank 0's last checkpoint is on disk before anyone returns
    return _result(cfg, prog)


def _result(cfg: FitConfig, prog: TrainProgress) -> FitResult:
    return FitResult(
        best_checkpoint=cfg.best_checkpoint,
        last_checkpoint=cfg.last_checkpoint,
        history=prog.history,
        epochs_run=len(prog.history),
        stopped_early=prog.stopped_early,
        skipped=prog.skipped_total,
        best_epoch=prog.best_epoch,
        best_val_loss=prog.best_val_loss,
    )
