"""Does the active-learning loop help? Label-error detection and learning curves on synthetic
cores with known truth (issue 10, item 8).

1. **Label-error detection.** A synthetic data set with ambiguous cores and injected
   adjacent-class consensus errors (``--label-errors``, default 15 %). Out-of-sample predictions
   come from patient-level K-fold cross-validation (each fold: two models, different seeds,
   trained on the other folds' consensus labels). Each flag, the combined priority, cleanlab and
   random selection rank the labelled cores; at a review budget of 5/10/20 % of them we count the
   true errors found (consensus != truth): precision, recall and the ratio to random.
2. **Learning curves.** A fixed patient-level test partition (never queried). From a small
   labelled seed set, each round labels a batch chosen by each strategy (random, low confidence,
   KCS disagreement, committee, combined priority) with the truth as the oracle, retrains, and
   records accuracy and quadratic kappa on the test partition; ``--seeds`` repetitions. Prints the
   area under each curve and the labels needed to reach 95 % of the full-data accuracy, relative
   to random, and writes a PNG of the curves.

The model is the ``test`` profile's tiny DenseNet on pyramid sampling sets drawn from the image
store (a bank of sets per core is drawn once); training is a fixed number of AdamW steps. Runs in
a few minutes on 2 CPU cores. Usage:
    python benchmarks/bench_active_learning.py [--patients 120] [--cores 240] [--seeds 3]
        [--rounds 4] [--batch 24] [--steps 100] [--png active_learning.png] [--json]
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import platform
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from sklearn.metrics import cohen_kappa_score

from her2ops.imaging.pss import sample_sets
from her2ops.imaging.store import CoreStore
from her2ops.models import flags as F
from her2ops.models.inference import kcs_decision
from her2ops.models.network import build_network
from her2ops.profiles import get_profile
from her2ops.scores import SCORE_LABELS
from her2ops.synthetic.dataset import generate_dataset

PROFILE = get_profile("test")
BUDGETS = (0.05, 0.10, 0.20)
DETECTORS = (
    "random",
    "kcs_disagreement",
    "low_confidence",
    "committee_disagreement",
    "label_suspect (rule)",
    "cleanlab",
    "priority",
    "priority (cleanlab)",
    "priority w=1/.6/.4/.3",
    "priority w=1/0/0/0",
)
#: other weightings (label_suspect / committee / kcs / low confidence) the default is chosen from
WEIGHT_CANDIDATES: dict[str, dict[str, float]] = {
    "priority w=1/.6/.4/.3": {
        "label_suspect": 1.0,
        "committee_disagreement": 0.6,
        "kcs_disagreement": 0.4,
        "low_confidence": 0.3,
    },
    "priority w=1/0/0/0": {"label_suspect": 1.0},
}
STRATEGIES = ("random", "low_confidence", "kcs_disagreement", "committee", "combined")
BANK_SETS = 8  # sets drawn per core: training draws from them, scoring uses the first N


@dataclass
class Bank:
    sets: np.ndarray  # (cores, BANK_SETS, C, H, W) uint8
    truth: np.ndarray  # (cores,)
    label: np.ndarray  # consensus score, -1 where the core carries no label
    injected: np.ndarray  # bool: an injected consensus error
    patient: np.ndarray  # patient index per core


def make_bank(root: Path, args: argparse.Namespace) -> Bank:
    out = root / "ds"
    generate_dataset(
        out,
        patients=args.patients,
        cores=args.cores,
        size=args.size,
        seed=args.data_seed,
        ambiguity=args.ambiguity,
        label_errors=args.label_errors,
    )
    store = CoreStore(root / "store")
    with (out / "truth.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    sets, truth, label, injected, patient = [], [], [], [], []
    patients: dict[str, int] = {}
    for row in rows:
        rgb = np.asarray(Image.open(out / "cores" / f"{row['core']}.png").convert("RGB"))
        sha = hashlib.sha256(rgb.tobytes()).hexdigest()
        store.put_array(rgb, sha256=sha)
        with store.open(sha, core=row["core"]) as img:
            sets.append(
                sample_sets(img, PROFILE.pss, key=row["core"], seed=0, indices=range(BANK_SETS))
            )
        truth.append(SCORE_LABELS.index(row["true_score"]))
        labelled = row["consensus_status"] in ("agreed", "adjudicated")
        label.append(SCORE_LABELS.index(row["consensus_score"]) if labelled else -1)
        injected.append(row["label_error"] == "1")
        patient.append(patients.setdefault(row["patient"], len(patients)))
    return Bank(
        np.stack(sets), np.array(truth), np.array(label), np.array(injected), np.array(patient)
    )


def train(bank: Bank, idx: np.ndarray, y: np.ndarray, *, steps: int, seed: int) -> torch.nn.Module:
    """A fresh tiny DenseNet, ``steps`` AdamW steps on random sets of the cores ``idx``."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    net = build_network(PROFILE)
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=1e-2)
    counts = np.bincount(y, minlength=4).astype(float)
    weight = torch.tensor(counts.sum() / np.maximum(counts, 1) / 4, dtype=torch.float32)
    net.train()
    for _ in range(steps):
        pick = rng.integers(0, len(idx), 16)
        x = torch.from_numpy(bank.sets[idx[pick], rng.integers(0, BANK_SETS, 16)])
        x = torch.rot90(x, int(rng.integers(4)), dims=(2, 3))
        if rng.random() < 0.5:
            x = torch.flip(x, dims=(3,))
        loss = torch.nn.functional.cross_entropy(net(x), torch.from_numpy(y[pick]), weight=weight)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net.eval()


@torch.inference_mode()
def predict(net: torch.nn.Module, bank: Bank, idx: np.ndarray) -> np.ndarray:
    """Softmax of the first N sets of each core: (len(idx), N, 4)."""
    n = PROFILE.n_sets
    x = torch.from_numpy(bank.sets[idx, :n].reshape(-1, *bank.sets.shape[2:]))
    out = [torch.softmax(net(x[i : i + 256]), dim=1) for i in range(0, len(x), 256)]
    return torch.cat(out).numpy().reshape(len(idx), n, 4).astype(np.float64)


def decide(set_probs: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[Any]]:
    """(final scores, KCS-averaged probs, decisions) under the inference protocol."""
    ds = [kcs_decision(p, PROFILE.top_k) for p in set_probs]
    return np.array([d.final for d in ds]), np.stack([d.kcs_mean_probs for d in ds]), ds


def uncertainty(set_probs: np.ndarray, other: np.ndarray | None) -> dict[str, np.ndarray]:
    """Per-core flag scores from one model's set outputs (and a second model for committee)."""
    _, kcs, ds = decide(set_probs)
    out = {
        "kcs_disagreement": np.array(
            [
                F.kcs_disagreement(p, d.kcs_indices, d.final).score
                for p, d in zip(set_probs, ds, strict=True)
            ]
        ),
        "low_confidence": np.array(
            [
                F.low_confidence(
                    d.kcs_mean_probs, d.final, set_probs=p, kcs_indices=d.kcs_indices
                ).score
                for p, d in zip(set_probs, ds, strict=True)
            ]
        ),
    }
    if other is not None:
        _, kcs2, _ = decide(other)
        out["committee_disagreement"] = np.array(
            [F.committee_disagreement([a, b]).score for a, b in zip(kcs, kcs2, strict=True)]
        )
    return out


def rank(scores: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Indices by decreasing score; ties in random order."""
    return np.lexsort((rng.random(len(scores)), -scores))


# --- 1. label-error detection ---------------------------------------------------------------


def detection(bank: Bank, args: argparse.Namespace) -> dict[str, Any]:
    pool = np.flatnonzero(bank.label >= 0)
    y = bank.label[pool]
    error = y != bank.truth[pool]
    folds = bank.patient[pool] % args.folds
    probs_a = np.zeros((len(pool), PROFILE.n_sets, 4))
    probs_b = np.zeros_like(probs_a)
    for f in range(args.folds):
        tr, te = pool[folds != f], np.flatnonzero(folds == f)
        for k, target in enumerate((probs_a, probs_b)):
            net = train(bank, tr, bank.label[tr], steps=args.steps, seed=100 * f + k)
            target[te] = predict(net, bank, pool[te])
    scores = uncertainty(probs_a, probs_b)
    _, kcs_a, _ = decide(probs_a)
    _, kcs_b, _ = decide(probs_b)
    mean = (kcs_a + kcs_b) / 2
    scores["label_suspect (rule)"] = F.confident_and_different(mean, y)
    scores["cleanlab"] = F.cleanlab_suspects(mean, y)
    flags = {
        "kcs_disagreement": scores["kcs_disagreement"],
        "low_confidence": scores["low_confidence"],
        "committee_disagreement": scores["committee_disagreement"],
    }
    scores["priority"] = F.priorities({**flags, "label_suspect": scores["label_suspect (rule)"]})
    scores["priority (cleanlab)"] = F.priorities({**flags, "label_suspect": scores["cleanlab"]})
    for name, w in WEIGHT_CANDIDATES.items():
        scores[name] = F.priorities({**flags, "label_suspect": scores["label_suspect (rule)"]}, w)
    rng = np.random.default_rng(0)
    rows = []
    for name in DETECTORS:
        row: dict[str, Any] = {"method": name}
        for b in BUDGETS:
            n = max(1, round(b * len(pool)))
            if name == "random":  # the expectation, not one lucky draw
                found = n * error.mean()
            else:
                found = float(error[rank(scores[name], rng)[:n]].sum())
            row[f"precision@{b:.0%}"] = found / n
            row[f"recall@{b:.0%}"] = found / max(error.sum(), 1)
            row[f"x_random@{b:.0%}"] = (found / n) / max(error.mean(), 1e-9)
        rows.append(row)
    return {
        "labelled": len(pool),
        "errors": int(error.sum()),
        "injected": int(bank.injected[pool].sum()),
        "oos_accuracy": float((mean.argmax(1) == bank.truth[pool]).mean()),
        "rows": rows,
    }


# --- 2. learning curves ---------------------------------------------------------------------


def evaluate(net: torch.nn.Module, bank: Bank, test: np.ndarray) -> tuple[float, float]:
    final, _, _ = decide(predict(net, bank, test))
    truth = bank.truth[test]
    return float((final == truth).mean()), float(
        cohen_kappa_score(truth, final, weights="quadratic", labels=[0, 1, 2, 3])
    )


def select(
    strategy: str, bank: Bank, nets: list[torch.nn.Module], cand: np.ndarray, n: int, rng: Any
) -> np.ndarray:
    if strategy == "random":
        return rng.choice(cand, size=n, replace=False)
    a = predict(nets[0], bank, cand)
    b = predict(nets[1], bank, cand) if len(nets) > 1 else None
    s = uncertainty(a, b)
    score = {
        "low_confidence": s["low_confidence"],
        "kcs_disagreement": s["kcs_disagreement"],
        "committee": s.get("committee_disagreement"),
        "combined": F.priorities(s) if b is not None else None,
    }[strategy]
    assert score is not None
    return cand[rank(score, rng)[:n]]


def learning_curves(bank: Bank, args: argparse.Namespace) -> dict[str, Any]:
    n_pat = int(bank.patient.max()) + 1
    curves: dict[str, list[list[tuple[int, float, float]]]] = {s: [] for s in STRATEGIES}
    full: list[tuple[float, float]] = []
    for seed in range(args.seeds):
        rng = np.random.default_rng(1000 + seed)
        test_pat = rng.choice(n_pat, size=max(1, n_pat // 5), replace=False)
        in_test = np.isin(bank.patient, test_pat)
        test, pool = np.flatnonzero(in_test), np.flatnonzero(~in_test)
        full.append(
            evaluate(train(bank, pool, bank.truth[pool], steps=args.steps, seed=seed), bank, test)
        )
        seed_set = rng.choice(pool, size=args.seed_set, replace=False)
        base = [
            train(bank, seed_set, bank.truth[seed_set], steps=args.steps, seed=seed * 10 + k)
            for k in range(2)
        ]
        start = evaluate(base[0], bank, test)
        for strategy in STRATEGIES:
            srng = np.random.default_rng(2000 + seed)
            labelled, nets = seed_set.copy(), list(base)
            curve = [(len(labelled), *start)]
            for r in range(args.rounds):
                cand = np.setdiff1d(pool, labelled)
                pick = select(strategy, bank, nets, cand, min(args.batch, len(cand)), srng)
                labelled = np.concatenate([labelled, pick])
                committee = strategy in ("committee", "combined")
                nets = [
                    train(
                        bank,
                        labelled,
                        bank.truth[labelled],
                        steps=args.steps,
                        seed=seed * 100 + r * 10 + k,
                    )
                    for k in range(2 if committee else 1)
                ]
                curve.append((len(labelled), *evaluate(nets[0], bank, test)))
            curves[strategy].append(curve)
        print(f"  learning curves: seed {seed + 1}/{args.seeds} done", file=sys.stderr, flush=True)
    full_acc = float(np.mean([a for a, _ in full]))
    summary = []
    rand_auc = rand_need = None
    for strategy in STRATEGIES:
        arr = np.array(curves[strategy])  # (seeds, points, 3)
        labels, acc, kappa = arr[0, :, 0], arr[:, :, 1].mean(0), arr[:, :, 2].mean(0)
        auc = float(np.trapezoid(acc, labels) / (labels[-1] - labels[0]))
        reached = np.flatnonzero(acc >= 0.95 * full_acc)
        need = int(labels[reached[0]]) if reached.size else None
        if strategy == "random":
            rand_auc, rand_need = auc, need
        summary.append(
            {
                "strategy": strategy,
                "labels": labels.astype(int).tolist(),
                "accuracy": acc.round(4).tolist(),
                "accuracy_sd": arr[:, :, 1].std(0).round(4).tolist(),
                "kappa": kappa.round(4).tolist(),
                "auc_accuracy": round(auc, 4),
                "auc_vs_random": round(auc / rand_auc, 3) if rand_auc else None,
                "labels_to_95pct_full": need,
                "labels_vs_random": round(need / rand_need, 3) if need and rand_need else None,
            }
        )
    return {"full_data_accuracy": round(full_acc, 4), "curves": summary}


def plot(curves: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for c in curves["curves"]:
        acc, sd = np.array(c["accuracy"]), np.array(c["accuracy_sd"])
        axes[0].plot(c["labels"], acc, marker="o", label=c["strategy"])
        axes[0].fill_between(c["labels"], acc - sd, acc + sd, alpha=0.12)
        axes[1].plot(c["labels"], c["kappa"], marker="o", label=c["strategy"])
    axes[0].axhline(curves["full_data_accuracy"], color="grey", ls="--", label="all pool labelled")
    axes[0].axhline(0.95 * curves["full_data_accuracy"], color="grey", ls=":", label="95 % of it")
    axes[0].set(xlabel="labelled cores", ylabel="test accuracy", title="accuracy (mean ± sd)")
    axes[1].set(xlabel="labelled cores", ylabel="quadratic kappa", title="quadratic kappa")
    axes[0].legend(fontsize=8)
    fig.suptitle("Active learning on synthetic cores (test profile; truth as the oracle)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--patients", type=int, default=120)
    ap.add_argument("--cores", type=int, default=240)
    ap.add_argument("--size", type=int, default=96)
    ap.add_argument("--ambiguity", type=float, default=0.3)
    ap.add_argument("--label-errors", type=float, default=0.15)
    ap.add_argument("--data-seed", type=int, default=7)
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=100, help="AdamW steps per training (batch 16)")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--seed-set", type=int, default=24)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--batch", type=int, default=24)
    ap.add_argument("--png", type=Path, default=Path("active_learning.png"))
    ap.add_argument("--skip-curves", action="store_true", help="only the detection table")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)  # two cores: more threads only fight each other

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        bank = make_bank(Path(tmp), args)
    t_data = time.perf_counter() - t0
    print(f"  data and set bank: {t_data:.0f} s", file=sys.stderr, flush=True)
    det = detection(bank, args)
    print("  detection done", file=sys.stderr, flush=True)
    t_det = time.perf_counter() - t0 - t_data
    curves = {"full_data_accuracy": float("nan"), "curves": []}
    png = None
    if not args.skip_curves:
        curves = learning_curves(bank, args)
        png = plot(curves, args.png)
    seconds = time.perf_counter() - t0
    result = {"detection": det, "learning": curves, "png": png and str(png), "seconds": seconds}
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs; {len(bank.truth)} synthetic cores "
        f"({args.size} px, ambiguity {args.ambiguity:.0%}); data {t_data:.0f} s, detection "
        f"{t_det:.0f} s, total {seconds:.0f} s"
    )
    print(
        f"\n1. label-error detection: {det['labelled']} labelled cores, {det['errors']} with a "
        f"wrong consensus ({det['injected']} injected); out-of-fold accuracy "
        f"{det['oos_accuracy']:.2f}"
    )
    head = "".join(f"{'P@' + f'{b:.0%}':>8}{'R@' + f'{b:.0%}':>8}{'xrand':>7}" for b in BUDGETS)
    print(f"{'method':<24}{head}")
    print(f"(priority: default weights {F.DEFAULT_WEIGHTS})")
    for r in det["rows"]:
        cells = "".join(
            f"{r[f'precision@{b:.0%}']:>8.2f}{r[f'recall@{b:.0%}']:>8.2f}"
            f"{r[f'x_random@{b:.0%}']:>7.1f}"
            for b in BUDGETS
        )
        print(f"{r['method']:<24}{cells}")
    prio = next(r for r in det["rows"] if r["method"] == "priority")
    print(
        f"default priority at a 10% budget: {prio['x_random@10%']:.1f}x random "
        f"(target >= 3x): {'PASS' if prio['x_random@10%'] >= 3 else 'FAIL'}"
    )
    if args.skip_curves:
        return 0
    print(
        f"\n2. learning curves ({args.seeds} seeds; full-data accuracy "
        f"{curves['full_data_accuracy']:.3f})"
    )
    head = f"{'strategy':<18}{'AUC acc':>9}{'vs rand':>9}{'labels->95%':>13}{'vs rand':>9}"
    print(head + "  accuracy by round")
    for c in curves["curves"]:
        need = c["labels_to_95pct_full"]
        print(
            f"{c['strategy']:<18}{c['auc_accuracy']:>9.3f}{c['auc_vs_random'] or 0:>9.2f}"
            f"{need if need else 'not reached':>13}"
            f"{(c['labels_vs_random'] or float('nan')):>9.2f}  "
            + " ".join(f"{a:.2f}" for a in c["accuracy"])
        )
    print(f"\nwrote {png}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
