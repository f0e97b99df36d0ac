"""Benchmark the N/k study on the paper's grid: 523 cores x 300 cached outputs, N in 1..200 at
k = 5, k in 1..20, 30, 50, 100 at N = 200, 10,000 draws per point. Target: at most 10 s.

For scale it also times a brute-force loop (random N-subsets per core, ``kcs_decision`` on each)
for a few draws at N = 20, k = 5 and extrapolates it to the whole grid.

Usage: ``PYTHONPATH=src python benchmarks/bench_study.py [--cores 523] [--outputs 300]
[--draws 10000] [--brute-draws 20]``
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from her2ops.models.inference import kcs_decision
from her2ops.models.study import parse_int_list, run_study

TARGET_S = 10.0


def synthetic_outputs(cores: int, outputs: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Softmax outputs that are right ~70% of the time per set, with class-dependent noise."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 4, cores)
    logits = rng.normal(0.0, 1.0, (cores, outputs, 4))
    logits[np.arange(cores), :, labels] += rng.uniform(0.5, 2.5, cores)[:, None]
    probs = np.exp(logits)
    return (probs / probs.sum(axis=2, keepdims=True)).astype(np.float32), labels


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cores", type=int, default=523)
    ap.add_argument("--outputs", type=int, default=300)
    ap.add_argument("--draws", type=int, default=10_000)
    ap.add_argument("--brute-draws", type=int, default=20)
    args = ap.parse_args()
    probs, labels = synthetic_outputs(args.cores, args.outputs)
    n_values, k_values = parse_int_list("1..200"), parse_int_list("1..20,30,50,100")
    runs = []
    for _ in range(3):
        t0 = time.perf_counter()
        res = run_study(probs, labels, n_values=n_values, k_values=k_values, draws=args.draws)
        runs.append(time.perf_counter() - t0)
    best = min(runs)
    points = len(res.vs_n) + len(res.vs_k)
    at20 = next(p for p in res.vs_n if p.n == 20)
    print(
        f"grid: {args.cores} cores x {args.outputs} outputs, {points} points, "
        f"{args.draws} draws each"
    )
    print(
        f"exact study: {best:.2f} s (runs: {', '.join(f'{r:.2f}' for r in runs)}); "
        f"N=20,k=5 accuracy min/median/max {at20.min:.4f}/{at20.median:.4f}/{at20.max:.4f}"
    )
    rng = np.random.default_rng(1)
    t0 = time.perf_counter()
    for _ in range(args.brute_draws):
        for c in range(args.cores):
            subset = np.sort(rng.choice(args.outputs, 20, replace=False))
            kcs_decision(probs[c, subset], 5)
    per_draw = (time.perf_counter() - t0) / args.brute_draws
    brute = per_draw * args.draws * points
    print(
        f"brute force: {per_draw * 1e3:.1f} ms per draw -> ~{brute / 3600:.1f} h for the grid "
        f"({brute / best:,.0f}x slower)"
    )
    print(f"target <= {TARGET_S:.0f} s: {'PASS' if best <= TARGET_S else 'FAIL'}")


if __name__ == "__main__":
    main()
