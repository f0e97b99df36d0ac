"""Multi-process training through torch.distributed: 2 CPU processes (gloo) under torchrun."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import torch

import her2ops
from her2ops.models.network import build_network
from her2ops.profiles import get_profile
from tests.factories import free_port

_WORKER = """
import os, sys, torch
torch.set_num_threads(1)
from pathlib import Path
from her2ops.models.data import PSSDataset
from her2ops.models.network import unwrap
from her2ops.models.toyset import ToySampler, toy_items
from her2ops.models.training import FitConfig, fit
from her2ops.profiles import get_profile
import her2ops.models.training as training

out = Path(sys.argv[1])
p = get_profile("test")
toy = ToySampler.for_profile(p)
train = PSSDataset(toy_items(10, prefix="t"), toy, train=True, seed=1)
# one validation core: rank 1 gets no validation batch at all, and must not hang
val = PSSDataset(toy_items(1, prefix="v"), toy, train=False, seed=1)
calls = []
captured = {}
real_ddp = training.DistributedDataParallel

def spy(model, *a, **kw):  # keep a handle on each rank's model
    wrapped = real_ddp(model, *a, **kw)
    captured["model"] = model
    return wrapped

training.DistributedDataParallel = spy
res = fit(FitConfig(profile=p, out_dir=out, epochs=2, batch_size=2, seed=0),
          train, val, on_epoch_end=lambda e, m, s: calls.append(e))
rank = int(os.environ["RANK"])
torch.save({"state": unwrap(captured["model"]).backbone.state_dict(), "calls": calls,
            "history": res.history}, out / f"rank{rank}.pt")
"""


def test_two_gloo_processes_train_identical_weights(tmp_path: Path) -> None:
    script = tmp_path / "worker.py"
    script.write_text(textwrap.dedent(_WORKER))
    env = dict(os.environ, PYTHONPATH=str(Path(her2ops.__file__).parents[1]), OMP_NUM_THREADS="1")
    env.pop("CUDA_VISIBLE_DEVICES", None)
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        "2",
        "--master-addr",
        "127.0.0.1",
        "--master-port",
        str(free_port()),
        str(script),
        str(tmp_path / "out"),
    ]
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stderr[-3000:]
    r0 = torch.load(tmp_path / "out" / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "out" / "rank1.pt", weights_only=True)
    for key, value in r0["state"].items():
        assert torch.equal(value, r1["state"][key]), key
    assert r0["calls"] == [0, 1] and r1["calls"] == []  # only rank 0 runs callbacks
    drop = ("seconds",)  # wall time differs per process; losses are reduced over both ranks
    assert [{k: v for k, v in h.items() if k not in drop} for h in r0["history"]] == [
        {k: v for k, v in h.items() if k not in drop} for h in r1["history"]
    ]
    ckpt = torch.load(tmp_path / "out" / "last.pt", weights_only=True)
    assert ckpt["world_size"] == 2 and ckpt["finished"]
    for key, value in ckpt["model"].items():
        assert torch.equal(value, r0["state"][key]), key
    # training moved the weights away from the seeded initial ones
    torch.manual_seed(0)
    init = build_network(get_profile("test")).backbone.state_dict()
    assert not torch.equal(init["classifier.weight"], r0["state"]["classifier.weight"])
