"""The resumable training checkpoint: what a run has done so far, saved and restored exactly.

``last.pt`` holds the model, optimizer and scheduler states, the epoch and the step within it,
the epoch's running sums, the history, the early-stopping state and the torch RNG states. With
the data side seeded by ``(seed, epoch, core)`` that is everything a resumed run needs to end
with the same weights as an uninterrupted one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from her2ops.models.network import atomic_save, check_profile, unwrap
from her2ops.profiles import Profile


@dataclass
class EpochStats:
    """Running sums of one training epoch (global over ranks)."""

    loss_sum: float = 0.0
    samples: float = 0.0
    steps: int = 0
    skipped: int = 0

    @property
    def mean_loss(self) -> float:
        return self.loss_sum / self.samples if self.samples else math.nan


@dataclass
class TrainProgress:
    """Where a run is: epoch, step within it, running sums, history, early-stopping state."""

    epoch: int = 0
    step: int = 0
    accum: EpochStats = field(default_factory=EpochStats)
    history: list[dict[str, float]] = field(default_factory=list)
    best_val_loss: float = math.inf
    best_epoch: int = -1
    bad_epochs: int = 0
    skipped_total: int = 0
    finished: bool = False
    stopped_early: bool = False


def rng_state() -> dict[str, Any]:
    """The torch (and CUDA) generator states."""
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_progress(
    path: Path,
    prog: TrainProgress,
    *,
    profile: Profile,
    seed: int,
    world_size: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.ReduceLROnPlateau,
) -> None:
    """Write the resumable checkpoint (atomically: a kill leaves the previous one intact)."""
    payload = {
        "format": 1,
        "profile": profile.name,
        "profile_config": profile.to_dict(),
        "model": unwrap(model).backbone.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "epoch": prog.epoch,
        "step": prog.step,
        "accum": vars(prog.accum).copy(),
        "history": prog.history,
        "best_val_loss": prog.best_val_loss,
        "best_epoch": prog.best_epoch,
        "bad_epochs": prog.bad_epochs,
        "skipped_total": prog.skipped_total,
        "finished": prog.finished,
        "stopped_early": prog.stopped_early,
        "seed": seed,
        "world_size": world_size,
        "rng": rng_state(),
    }
    atomic_save(payload, path)


def load_progress(
    path: Path,
    *,
    profile: Profile,
    seed: int,
    world_size: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.ReduceLROnPlateau,
) -> TrainProgress:
    """Restore model, optimizer, scheduler and RNG states from ``path``; return the progress.

    Refuses a checkpoint of another profile or seed, and a mid-epoch one written by another
    number of processes (that epoch's batches were dealt for that many).
    """
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    check_profile(ckpt, profile, path)
    if ckpt.get("seed") != seed:
        raise ValueError(
            f"checkpoint {path} was trained with seed {ckpt.get('seed')}, "
            f"not {seed}; resuming would not reproduce the run"
        )
    if ckpt["step"] and ckpt.get("world_size") != world_size:
        raise ValueError(
            f"checkpoint {path} stopped mid-epoch with {ckpt.get('world_size')} processes; "
            f"resume it with the same number (not {world_size})"
        )
    unwrap(model).backbone.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    scheduler.load_state_dict(ckpt["scheduler"])
    set_rng_state(ckpt["rng"])
    return TrainProgress(
        epoch=int(ckpt["epoch"]),
        step=int(ckpt["step"]),
        accum=EpochStats(**ckpt["accum"]),
        history=list(ckpt["history"]),
        best_val_loss=float(ckpt["best_val_loss"]),
        best_epoch=int(ckpt["best_epoch"]),
        bad_epochs=int(ckpt["bad_epochs"]),
        skipped_total=int(ckpt["skipped_total"]),
        finished=bool(ckpt["finished"]),
        stopped_early=bool(ckpt["stopped_early"]),
    )
