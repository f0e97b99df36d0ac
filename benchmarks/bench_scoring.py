"""End-to-end scoring throughput: store -> PSS sampling -> forward -> KCS -> database, per core.

Runs the real scoring use case (``her2ops.pipelines.score.score_cores``) on synthetic cores in a
temporary SQLite database and MLflow store, with a registered model whose weights are random
(throughput does not depend on what the weights learned). Every configuration scores the same
cores under a different seed, so none of them reuses another's predictions. Printed side by
side: seconds per core and cores/s with 0 (sampling in the scoring process, a thread ahead), 1
and 2 sampling processes (a DataLoader drawing the next batches while the network runs).

CPU default: the ``demo`` profile on 512 px cores. ``--device cuda --profile paper --size 10000``
is the paper's setting (target on one H100: <= 0.5 s per 10,000 px core at N = 20, sampling
included).

Usage: ``python benchmarks/bench_scoring.py [--cores 24] [--size 512] [--profile demo]
[--workers 0,1,2] [--device cpu] [--json]``
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any


def _setup(root: Path, *, cores: int, size: int, profile_name: str) -> None:
    """Users, synthetic cores ingested (scoring needs no labels), a split, and a registered
    model with random weights."""
    from her2ops.config import get_settings
    from her2ops.models.network import build_network, save_weights
    from her2ops.pipelines import curation, splits
    from her2ops.pipelines.runtime import get_runtime
    from her2ops.platform.registry import set_alias
    from her2ops.platform.schema import ModelVersion
    from her2ops.platform.splits import get_split
    from her2ops.profiles import get_profile
    from her2ops.synthetic.dataset import generate_dataset
    from her2ops.tracking import code_version

    os.environ["HER2OPS_DATA_DIR"] = str(root / "data")
    get_settings.cache_clear()
    syn = root / "syn"
    generate_dataset(syn, patients=max(1, cores // 2), cores=cores, size=size, seed=5)
    curation.add_user(actor=None, username="admin", role="admin")
    curation.add_user(actor="admin", username="lab", role="lab_manager")
    curation.add_user(actor="admin", username="eng", role="engineer")
    curation.ingest(actor="lab", manifest=syn / "manifest.csv")
    splits.create_split(actor="lab", name="bench", seed=0, ratios="0.0,0.0,1.0")

    rt = get_runtime()
    profile = get_profile(profile_name)
    net = build_network(profile)
    weights = save_weights(net, root / "best.pt", profile)
    run_id = rt.tracking.create_run("bench-scoring")
    version = rt.tracking.register_model(run_id, weights, profile=profile.name)
    with rt.session() as s:
        mv = ModelVersion(
            name=rt.settings.registered_model_name,
            version=version,
            run_id=run_id,
            profile=profile.name,
            split_id=get_split(s, "bench").id,
            label_snapshot_hash="bench",
            code_version=code_version(),
            aliases=[],
            metrics={},
        )
        s.add(mv)
        s.flush()
        set_alias(s, mv, "champion")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cores", type=int, default=24)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--profile", default="demo")
    ap.add_argument("--workers", default="0,1,2")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1, help="torch threads for the network")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    import torch

    from her2ops.pipelines.score import score_cores

    torch.set_num_threads(args.threads)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        _setup(Path(tmp), cores=args.cores, size=args.size, profile_name=args.profile)
        setup_s = time.perf_counter() - t0
        # warm-up (weights load, first forward) outside the timings
        score_cores(
            actor="eng",
            model_ref="champion",
            split="bench",
            partition="test",
            seed=999,
            device=args.device,
            loader_workers=0,
            n_sets=2,
            top_k=1,
        )
        for i, w in enumerate(int(x) for x in args.workers.split(",")):
            t = time.perf_counter()
            rep = score_cores(
                actor="eng",
                model_ref="champion",
                split="bench",
                partition="test",
                seed=i,
                device=args.device,
                loader_workers=w,
            )
            wall = time.perf_counter() - t
            rows.append(
                {
                    "sampling_processes": w,
                    "cores": rep.scored,
                    "n_sets": rep.n_sets,
                    "top_k": rep.top_k,
                    "seconds": round(wall, 3),
                    "seconds_per_core": round(wall / max(rep.scored, 1), 4),
                    "cores_per_s": round(rep.scored / wall, 3),
                }
            )
    base = rows[0]["cores_per_s"]
    for r in rows:
        r["speedup_vs_first"] = round(r["cores_per_s"] / base, 2) if base else None
    result = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, device {args.device}",
        "profile": args.profile,
        "core_px": args.size,
        "torch_threads": args.threads,
        "setup_seconds": round(setup_s, 1),
        "rows": rows,
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(
        f"scoring end to end ({result['machine']}; profile {args.profile}, {args.size} px cores, "
        f"N={rows[0]['n_sets']}, k={rows[0]['top_k']}, torch threads {args.threads})"
    )
    print(f"{'sampling processes':>18} {'cores':>6} {'s/core':>8} {'cores/s':>8} {'vs first':>9}")
    for r in rows:
        print(
            f"{r['sampling_processes']:>18} {r['cores']:>6} {r['seconds_per_core']:>8.3f} "
            f"{r['cores_per_s']:>8.2f} {r['speedup_vs_first']:>8.2f}x"
        )
    if args.device == "cuda" and args.profile == "paper":
        worst = max(r["seconds_per_core"] for r in rows)
        print(f"target <= 0.5 s per core on one H100: worst {worst:.3f} s")


if __name__ == "__main__":
    main()
