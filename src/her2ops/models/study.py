"""The N/k study (the paper's Figs. 4 and 5), computed exactly instead of by a loop over draws.

Input: ``probs`` (cores x M x 4), the softmax outputs of M cached sets per core, and ``labels``.
A *draw* at (N, k) picks, for every core independently, a uniformly random N-subset of its M
outputs and applies the protocol (KCS = the k most confident of the subset, final = max class);
the draw's accuracy is the fraction of cores scored right. The paper ran 10,000 draws per point.

Exact method. Sort a core's M outputs by confidence, descending, ties to the earlier output (the
stable rule :func:`her2ops.models.inference.kcs_decision` uses, so a subset's order is the
sorted order restricted to it). Let ``b_p = 1`` when the output at sorted position ``p`` (0-based)
predicts a class <= c, and ``G_p`` the number of such outputs before ``p``. The final is <= c iff
the subset's k most confident all predict <= c. Conditioning on the position ``p`` of the subset's
k-th most confident element (probability C(p, k-1) C(M-1-p, N-k) / C(M, N)), the other k-1 are a
uniform (k-1)-subset of the p positions before it, all "good" with probability
C(G_p, k-1) / C(p, k-1), so

    P(final <= c) = sum_p b_p * [C(G_p, k-1) / C(p, k-1)] * [C(p, k-1) C(M-1-p, N-k) / C(M, N)].

Both brackets lie in [0, 1] (computed in log space), and for a fixed k the sum over p is one
matrix product over all N. Cores are independent within a draw, so a draw's number of correct
cores is Poisson-binomial with the per-core P(final = label): its exact distribution is built by
dynamic programming and ``draws`` accuracies are sampled from it (the same distribution as the
brute-force simulation, at no per-draw cost); the report gives their min, median and max and the
exact mean. At the confusion points, ``draws`` draws are simulated per core from the exact
per-core distributions of the final score, and the confusion matrices of the min/median/max draw
are reported along with the expected matrix (sum over cores of P(final = c) in the core's label
row); the curve's statistics at those points are those simulated draws'. Points with k > N or
N > M are skipped and listed.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy.special import gammaln

from her2ops.errors import InvalidRequest
from her2ops.models.inference import confidence_order
from her2ops.scores import NUM_CLASSES

_RANGE = re.compile(r"^(\d+)\s*\.\.\s*(\d+)$")


def parse_int_list(text: str) -> list[int]:
    """``"1..20,30,50,100"`` -> sorted unique positive integers (ranges are inclusive)."""
    out: set[int] = set()
    for token in (t.strip() for t in str(text).split(",")):
        if not token:
            continue
        m = _RANGE.match(token)
        if m:
            lo, hi = int(m.group(1)), int(m.group(2))
            if lo > hi:
                raise InvalidRequest(f"empty range {token!r}")
            out.update(range(lo, hi + 1))
        elif token.isdigit():
            out.add(int(token))
        else:
            raise InvalidRequest(
                f"bad list item {token!r}: expected an integer or a range like 1..20"
            )
    if not out or min(out) < 1:
        raise InvalidRequest(f"{text!r}: expected positive integers")
    return sorted(out)


class ExactKCS:
    """Exact distribution of the protocol's final score under random N-subsets, per core."""

    def __init__(self, probs: np.ndarray, confidence: str = "margin") -> None:
        probs = np.asarray(probs, dtype=np.float64)
        if probs.ndim != 3 or probs.shape[2] != NUM_CLASSES or probs.shape[1] < 1:
            raise InvalidRequest(f"probs must be (cores, M, {NUM_CLASSES}), got {probs.shape}")
        self.cores, self.m = probs.shape[:2]
        order = confidence_order(probs, confidence)  # (cores, M), stable
        cls = np.take_along_axis(probs.argmax(axis=2), order, axis=1)
        # good[:, c, p]: sorted output p predicts a class <= c (c = 0..2; <= 3 always holds)
        self.good = cls[:, None, :] <= np.arange(NUM_CLASSES - 1)[None, :, None]
        self.before: np.ndarray = np.cumsum(self.good, axis=2) - self.good  # G_p
        self.logfact = gammaln(np.arange(self.m + 2, dtype=np.float64) + 1.0)

    def _log_comb(self, a: np.ndarray, b: int | np.ndarray) -> np.ndarray:
        a = np.asarray(a)
        b = np.broadcast_to(np.asarray(b), a.shape)
        ok = (b >= 0) & (b <= a)
        aa, bb = np.where(ok, a, 0), np.where(ok, b, 0)
        lf = self.logfact
        return np.where(ok, lf[aa] - lf[bb] - lf[aa - bb], -np.inf)

    def _kth_given_good(self, k: int) -> np.ndarray:
        """b_p C(G_p, k-1) / C(p, k-1), shape (cores, 3, M)."""
        pos = np.arange(self.m)
        with np.errstate(invalid="ignore"):  # -inf - -inf where both are impossible
            log_r = self._log_comb(self.before, k - 1) - self._log_comb(pos, k - 1)[None, None, :]
        r = np.exp(np.where(np.isfinite(log_r), log_r, -np.inf))
        return np.where(self.good, r, 0.0)

    def _kth_position(self, n_values: Sequence[int], k: int) -> np.ndarray:
        """P(the subset's k-th most confident is at position p), shape (M, len(n_values))."""
        pos = np.arange(self.m)[:, None]
        n = np.asarray(n_values)[None, :]
        log_q = (
            self._log_comb(np.broadcast_to(pos, (self.m, n.shape[1])), k - 1)
            + self._log_comb(self.m - 1 - pos + 0 * n, n - k)
            - self._log_comb(np.full_like(n, self.m), n)
        )
        return np.exp(log_q)

    def final_probs(self, n_values: Sequence[int], k: int) -> np.ndarray:
        """P(final = c) for each N in ``n_values`` at this k: (len(n_values), cores, 4)."""
        n_values = list(n_values)
        if any(not k <= n <= self.m for n in n_values):
            raise InvalidRequest(f"need k <= N <= M={self.m}; got k={k}, N={n_values}")
        a = self._kth_given_good(k).reshape(-1, self.m)
        q = self._kth_position(n_values, k)
        le = (a @ q).reshape(self.cores, NUM_CLASSES - 1, len(n_values))
        le = np.clip(np.moveaxis(le, 2, 0), 0.0, 1.0)
        le = np.maximum.accumulate(le, axis=2)  # rounding must not break monotonicity
        cdf = np.concatenate([le, np.ones((*le.shape[:2], 1))], axis=2)
        return np.diff(cdf, axis=2, prepend=0.0)


def poisson_binomial_pmf(p: np.ndarray) -> np.ndarray:
    """Exact pmf of the number of successes for each row of independent probabilities ``p``
    (points, cores) -> (points, cores + 1)."""
    p = np.atleast_2d(np.asarray(p, dtype=np.float64))
    pts, cores = p.shape
    pmf = np.zeros((pts, cores + 1))
    pmf[:, 0] = 1.0
    for j in range(cores):
        pj = p[:, j : j + 1]
        pmf[:, 1 : j + 2] = pmf[:, 1 : j + 2] * (1.0 - pj) + pmf[:, : j + 1] * pj
        pmf[:, 0] *= 1.0 - pj[:, 0]
    return pmf


@dataclass(frozen=True)
class StudyPoint:
    """Accuracy at one (N, k): exact mean and min/median/max over ``draws`` draws."""

    n: int
    k: int
    mean: float
    min: float
    median: float
    max: float


@dataclass(frozen=True)
class ConfusionPoint:
    """Confusion matrices at one (N, k): expected, and the min/median/max accuracy draws'."""

    n: int
    k: int
    expected: list[list[float]]
    draws: dict[str, dict[str, Any]]


@dataclass
class StudyResult:
    """What :func:`run_study` returns; ``to_dict()`` is JSON-able, ``plot(path)`` writes a PNG."""

    cores: int
    outputs_per_core: int
    draws: int
    seed: int
    confidence: str
    k_at: int
    n_at: int
    vs_n: list[StudyPoint]
    vs_k: list[StudyPoint]
    confusion: list[ConfusionPoint]
    skipped: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "cores": self.cores,
            "outputs_per_core": self.outputs_per_core,
            "draws": self.draws,
            "seed": self.seed,
            "confidence": self.confidence,
            "k_at": self.k_at,
            "n_at": self.n_at,
            "vs_n": [vars(p) for p in self.vs_n],
            "vs_k": [vars(p) for p in self.vs_k],
            "confusion": [vars(c) for c in self.confusion],
            "skipped": self.skipped,
            "seconds": self.seconds,
        }

    def plot(self, path: Path) -> Path:
        from her2ops.models.study_plot import plot_study

        return plot_study(self, Path(path))


def _curve_stats(
    p_correct: np.ndarray, draws: int, rng: np.random.Generator
) -> list[tuple[float, float, float, float]]:
    """(mean, min, median, max) accuracy per row of per-core success probabilities."""
    cores = p_correct.shape[1]
    cdf = np.cumsum(poisson_binomial_pmf(p_correct), axis=1)
    out = []
    for row, c in zip(p_correct, cdf, strict=True):
        counts = np.searchsorted(c, rng.random(draws) * c[-1], side="right")
        acc = np.minimum(counts, cores) / cores
        out.append((float(row.mean()), float(acc.min()), float(np.median(acc)), float(acc.max())))
    return out


def _simulate_point(
    final_p: np.ndarray, labels: np.ndarray, draws: int, rng: np.random.Generator
) -> tuple[dict[str, dict[str, Any]], tuple[float, float, float]]:
    """Draw every core's final score ``draws`` times; confusion matrices of the extreme draws."""
    cum = np.cumsum(final_p, axis=1)[:, :-1]  # (cores, 3)
    finals = np.zeros((draws, len(labels)), dtype=np.int64)
    u = rng.random((draws, len(labels)))
    for c in range(NUM_CLASSES - 1):
        finals += u >= cum[None, :, c]
    acc = (finals == labels[None, :]).mean(axis=1)
    order = np.argsort(acc, kind="stable")
    picks = {"min": order[0], "median": order[(draws - 1) // 2], "max": order[-1]}
    out = {}
    for name, d in picks.items():
        cm = np.zeros((NUM_CLASSES, NUM_CLASSES), dtype=np.int64)
        np.add.at(cm, (labels, finals[d]), 1)
        out[name] = {"accuracy": float(acc[d]), "matrix": cm.tolist()}
    return out, (float(acc.min()), float(np.median(acc)), float(acc.max()))


def run_study(
    probs: np.ndarray,
    labels: np.ndarray,
    *,
    n_values: Sequence[int],
    k_values: Sequence[int],
    draws: int = 10_000,
    seed: int = 0,
    k_at: int = 5,
    n_at: int = 200,
    confidence: str = "margin",
    cm_points: Sequence[tuple[int, int]] | None = None,
) -> StudyResult:
    """Accuracy vs N at ``k = k_at`` and vs k at ``N = n_at`` (min/median/max over ``draws``),
    with confusion matrices at ``cm_points`` (default: (20, k_at) and (n_at, k_at))."""
    started = time.perf_counter()
    labels = np.asarray(labels, dtype=np.int64)
    exact = ExactKCS(probs, confidence)
    if labels.shape != (exact.cores,) or labels.min() < 0 or labels.max() >= NUM_CLASSES:
        raise InvalidRequest(f"labels must be {exact.cores} values in 0..{NUM_CLASSES - 1}")
    if draws < 1:
        raise InvalidRequest("draws must be at least 1")
    m, rng = exact.m, np.random.default_rng(seed)
    skipped: list[dict[str, Any]] = []

    def valid(n: int, k: int) -> bool:
        if k > n or n > m:
            why = "k > N" if k > n else f"N > M={m} outputs per core"
            skipped.append({"n": n, "k": k, "reason": why})
            return False
        return True

    def correct(fp: np.ndarray) -> np.ndarray:  # (points, cores, 4) -> (points, cores)
        return np.take_along_axis(fp, labels[None, :, None], axis=2)[..., 0]

    ns = [n for n in sorted(set(n_values)) if valid(n, k_at)]
    vs_n: list[StudyPoint] = []
    if ns:
        fp = exact.final_probs(ns, k_at)
        for n, s in zip(ns, _curve_stats(correct(fp), draws, rng), strict=True):
            vs_n.append(StudyPoint(n, k_at, *s))
    ks = [k for k in sorted(set(k_values)) if valid(n_at, k)]
    vs_k: list[StudyPoint] = []
    if ks:
        fp = np.concatenate([exact.final_probs([n_at], k) for k in ks])
        for k, s in zip(ks, _curve_stats(correct(fp), draws, rng), strict=True):
            vs_k.append(StudyPoint(n_at, k, *s))
    points = list(cm_points) if cm_points is not None else [(20, k_at), (n_at, k_at)]
    confusion: list[ConfusionPoint] = []
    for n, k in dict.fromkeys(points):
        if not valid(n, k):
            continue
        final_p = exact.final_probs([n], k)[0]
        expected = np.zeros((NUM_CLASSES, NUM_CLASSES))
        np.add.at(expected, labels, final_p)
        sims, (lo, med, hi) = _simulate_point(final_p, labels, draws, rng)
        confusion.append(ConfusionPoint(n, k, expected.round(6).tolist(), sims))
        # keep the curves consistent with the matrices shown for the same point
        for curve in (vs_n, vs_k):
            for i, pt in enumerate(curve):
                if (pt.n, pt.k) == (n, k):
                    curve[i] = StudyPoint(n, k, pt.mean, lo, med, hi)
    return StudyResult(
        cores=exact.cores,
        outputs_per_core=m,
        draws=draws,
        seed=seed,
        confidence=confidence,
        k_at=k_at,
        n_at=n_at,
        vs_n=vs_n,
        vs_k=vs_k,
        confusion=confusion,
        skipped=skipped,
        seconds=time.perf_counter() - started,
    )
