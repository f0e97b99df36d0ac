"""torch.distributed plumbing for training: which rank this process is, and collectives."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from her2ops.models.network import pick_device


@dataclass(frozen=True)
class DistContext:
    """This process's place in a torch.distributed job (world size 1 when not distributed)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def all_reduce(self, values: list[float], op: Any = None) -> list[float]:
        """Reduce a few floats over all ranks (sum unless ``op`` says otherwise)."""
        if not self.enabled:
            return values
        t = torch.tensor(values, dtype=torch.float64)
        if dist.get_backend() == "nccl":
            t = t.cuda()
        dist.all_reduce(t, op=op or dist.ReduceOp.SUM)
        return [float(v) for v in t.cpu()]

    def broadcast_buffers(self, module: torch.nn.Module) -> None:
        """Give every rank rank 0's buffers (BatchNorm running statistics drift apart: each
        rank updates them from its own batches)."""
        if not self.enabled:
            return
        for buf in module.buffers():
            dist.broadcast(buf, src=0)


def setup_distributed(device_pref: str | None) -> tuple[DistContext, torch.device]:
    """Join the process group that ``torchrun`` describes in the environment, if any."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    device = pick_device(device_pref)
    if world <= 1 or "RANK" not in os.environ:
        return DistContext(), device
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    owns = False
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
        owns = True
    return DistContext(rank, world, local, owns), device
