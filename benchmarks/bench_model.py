"""Benchmark the PSS network: forward time per set and per core (N sets) for each profile.

CPU (default): every profile's forward pass on one set and on one core's N sets (batched as at
inference). The ``paper`` profile is ~106 GFLOP per set (~2.1 TFLOP per core at N = 20), so on a
CPU only one set is timed, once, and the per-core figure is that times N (marked ``est``).

CUDA (``--device cuda``): the same under bf16 autocast + channels_last, with warm-up and CUDA
synchronisation; ``--gpu-train`` adds the paper profile's training throughput (sets/s, AdamW,
batch from the recipe) and the end-to-end seconds per 10,000 x 10,000 px core at N = 20:
open the stored pyramid, sample the sets (``her2ops.imaging.pss.sample_sets``) and run the
protocol (``score_core``, which samples the next batch while the GPU runs the current one).
Target on one H100: at most 0.5 s per core. The end-to-end part needs the imaging package and
is skipped with a note when it is missing.

Usage: ``PYTHONPATH=src python benchmarks/bench_model.py [--device cuda] [--profiles test,demo]
[--gpu-train] [--n-sets 20] [--json]``
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from her2ops.models.inference import predict_sets, score_core
from her2ops.models.network import autocast, batch_to_device, build_network, to_device
from her2ops.profiles import PROFILES, Profile, get_profile

TARGET_E2E_S = 0.5


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable[[], Any], device: torch.device, repeats: int, warmup: int) -> float:
    """Median seconds of ``repeats`` calls after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def gflop_per_set(profile: Profile) -> float:
    """Forward GFLOP of one set, counted on the meta device (nothing is computed)."""
    with torch.device("meta"):
        net = build_network(profile).eval()
        x = torch.empty(1, profile.pss.channels, profile.pss.patch_size, profile.pss.patch_size)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        net(x)
    return counter.get_total_flops() / 1e9


def bench_forward(profile: Profile, device: torch.device, n_sets: int) -> dict[str, Any]:
    """Forward seconds per set (batch of 1) and per core (``n_sets`` sets, batched)."""
    torch.manual_seed(0)
    net = to_device(build_network(profile), device).eval()
    c, s = profile.pss.channels, profile.pss.patch_size
    heavy_on_cpu = device.type == "cpu" and profile.pss.patch_size >= 256
    one = np.random.default_rng(0).integers(0, 256, (1, c, s, s), dtype=np.uint8)
    row: dict[str, Any] = {
        "profile": profile.name,
        "arch": profile.arch,
        "channels": c,
        "patch": s,
        "gflop_per_set": round(gflop_per_set(profile), 2),
    }
    if heavy_on_cpu:
        row["set_s"] = _timed(lambda: predict_sets(net, one, device=device), device, 1, 0)
        row["core_s"] = row["set_s"] * n_sets
        row["core_note"] = "est (1 set x N)"
        return row
    bs = min(n_sets, max(profile.recipe.batch_size, 1))
    many = np.random.default_rng(1).integers(0, 256, (n_sets, c, s, s), dtype=np.uint8)
    repeats = 20 if device.type == "cuda" else 5
    row["set_s"] = _timed(lambda: predict_sets(net, one, device=device), device, repeats, 2)
    row["core_s"] = _timed(
        lambda: predict_sets(net, many, batch_size=bs, device=device), device, repeats, 2
    )
    row["core_note"] = f"N={n_sets}, batch {bs}"
    return row


def bench_train(profile: Profile, device: torch.device, steps: int = 10) -> dict[str, Any]:
    """Training sets/s: forward + class-weighted CE + backward + AdamW on random sets."""
    torch.manual_seed(0)
    net = to_device(build_network(profile), device).train()
    opt = torch.optim.AdamW(net.parameters(), lr=profile.recipe.lr)
    crit = torch.nn.CrossEntropyLoss(weight=torch.ones(4, device=device))
    bs, c, s = profile.recipe.batch_size, profile.pss.channels, profile.pss.patch_size
    x_cpu = torch.randint(0, 256, (bs, c, s, s), dtype=torch.uint8)
    y = torch.randint(0, 4, (bs,), device=device)

    def step() -> None:
        x = batch_to_device(x_cpu, device)  # include the host-to-device copy, as in training
        with autocast(device):
            logits = net(x)
        loss = crit(logits.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    sec = _timed(step, device, steps, 3)
    out: dict[str, Any] = {
        "profile": profile.name,
        "batch": bs,
        "step_s": sec,
        "sets_per_s": bs / sec,
    }
    if device.type == "cuda":
        out["peak_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    return out


def bench_end_to_end(
    profile: Profile,
    device: torch.device,
    n_sets: int,
    top_k: int,
    batch_size: int,
    cores: int = 3,
    size: int = 10_000,
) -> dict[str, Any]:
    """Seconds per stored ``size`` px core: open + sample N sets + network + KCS."""
    try:
        from her2ops.imaging.pss import sample_sets
        from her2ops.imaging.store import CoreStore
        from her2ops.synthetic.render import synth_core
    except ImportError as exc:  # the imaging layer is optional for this script
        return {"skipped": f"imaging layer unavailable: {exc}"}
    torch.manual_seed(0)
    net = to_device(build_network(profile), device).eval()
    with tempfile.TemporaryDirectory() as tmp:
        store = CoreStore(Path(tmp))
        t0 = time.perf_counter()
        rgb, _ = synth_core(2, size=size, rng=np.random.default_rng(0))
        sha = hashlib.sha256(rgb[::97, ::97].tobytes()).hexdigest()
        store.put_array(np.ascontiguousarray(rgb), sha256=sha)
        del rgb
        prep_s = time.perf_counter() - t0
        totals, sampling = [], []
        for seed in range(cores + 1):  # the first core warms up cuDNN and is not counted
            _sync(device)
            t0 = time.perf_counter()
            with store.open(sha) as img:

                def sample(sd: int, idx: Sequence[int], img: Any = img) -> np.ndarray:
                    return sample_sets(img, profile.pss, key=sha, seed=sd, indices=list(idx))

                score_core(
                    net,
                    sample,
                    n_sets=n_sets,
                    top_k=top_k,
                    seed=seed,
                    batch_size=batch_size,
                    device=device,
                )
            _sync(device)
            if seed:
                totals.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            with store.open(sha) as img:
                sample_sets(img, profile.pss, key=sha, seed=100 + seed, indices=range(n_sets))
            if seed:
                sampling.append(time.perf_counter() - t0)
    e2e = statistics.median(totals)
    return {
        "profile": profile.name,
        "core_px": size,
        "n_sets": n_sets,
        "batch": batch_size,
        "e2e_s_per_core": e2e,
        "sampling_only_s": statistics.median(sampling),
        "prepare_s": prep_s,
        "target_s": TARGET_E2E_S,
        "verdict": "PASS" if e2e <= TARGET_E2E_S else "FAIL",
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--profiles", default=",".join(PROFILES), help="comma list of profiles")
    ap.add_argument("--n-sets", type=int, default=20)
    ap.add_argument(
        "--gpu-train",
        action="store_true",
        help="paper profile: training sets/s and end-to-end s per 10k px core",
    )
    ap.add_argument("--e2e-batch", type=int, default=10, help="sets per batch end to end")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit("--device cuda: CUDA is not available here")
        torch.backends.cudnn.benchmark = True
    report: dict[str, Any] = {
        "device": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"cpu ({torch.get_num_threads()} threads)",
        "torch": torch.__version__,
        "forward": [],
    }
    print(f"device: {report['device']}, torch {torch.__version__}", flush=True)
    print(
        f"{'profile':8} {'arch':14} {'ch':>4} {'px':>4} {'GFLOP/set':>9} {'s/set':>9} "
        f"{'s/core':>9}  note"
    )
    for name in [p.strip() for p in args.profiles.split(",") if p.strip()]:
        row = bench_forward(get_profile(name), device, args.n_sets)
        report["forward"].append(row)
        print(
            f"{row['profile']:8} {row['arch']:14} {row['channels']:>4} {row['patch']:>4} "
            f"{row['gflop_per_set']:>9.2f} {row['set_s']:>9.4f} {row['core_s']:>9.4f}  "
            f"{row['core_note']}",
            flush=True,
        )
    if args.gpu_train and device.type != "cuda":
        print("--gpu-train: skipped (needs --device cuda; the paper profile is ~2 TFLOP per core)")
    elif args.gpu_train:
        paper = get_profile("paper")
        tr = bench_train(paper, device, steps=10 if device.type == "cuda" else 1)
        report["train"] = tr
        print(
            f"train ({paper.name}, batch {tr['batch']}): {tr['sets_per_s']:.1f} sets/s "
            f"({tr['step_s']:.3f} s/step)"
            + (f", peak {tr['peak_gib']:.1f} GiB" if "peak_gib" in tr else ""),
            flush=True,
        )
        e2e = bench_end_to_end(paper, device, args.n_sets, paper.top_k, args.e2e_batch)
        report["end_to_end"] = e2e
        if "skipped" in e2e:
            print(f"end to end: skipped ({e2e['skipped']})")
        else:
            print(
                f"end to end ({e2e['core_px']} px core, N={e2e['n_sets']}, batch "
                f"{e2e['batch']}): {e2e['e2e_s_per_core']:.3f} s/core (sampling alone "
                f"{e2e['sampling_only_s']:.3f} s) target <= {TARGET_E2E_S} s: "
                f"{e2e['verdict']}"
            )
    if args.json:
        print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
