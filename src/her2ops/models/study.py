"""The N/k study (the paper's Figs. 4 and 5), computed exactly instead of by a loop over draws.

Input: ``probs`` (cores x M x 4), the softmax outputs of M cached sets per core, and ``labels``.
A *draw* at (N, k) picks, for every core independently, N of its M outputs and applies the
protocol (KCS = the k most confident of the N, final = max class); the draw's accuracy is the
fraction of cores scored right. The paper ran 10,000 draws per point.

**Sampling.** The paper does not say whether the N outputs are drawn with or without
replacement. The default here is *without* (a uniformly random N-subset of the M outputs, so
N <= M); ``replace=True`` draws N outputs independently and uniformly (with replacement; any N),
which is what N fresh i.i.d. sets of a core would give if the M outputs were the whole
population. Both are exact; every result states which one it used (``sampling``).

**N < k.** With fewer sets than k the KCS is all N sets (k' = min(k, N)), so Fig. 4's points
N = 1..4 at k = 5 exist; each point records its ``kcs`` = k'.

Exact method without replacement. Sort a core's M outputs by confidence, descending, ties to the
earlier output (the stable rule :func:`her2ops.models.inference.kcs_decision` uses, so a
subset's order is the sorted order restricted to it). Let ``b_p = 1`` when the output at sorted
position ``p`` (0-based) predicts a class <= c, and ``G_p`` the number of such outputs before
``p``. The final is <= c iff the subset's k most confident all predict <= c. Conditioning on the
position ``p`` of the subset's k-th most confident element (probability C(p, k-1) C(M-1-p, N-k)
/ C(M, N)), the other k-1 are a uniform (k-1)-subset of the p positions before it, all "good"
with probability C(G_p, k-1) / C(p, k-1), so

    P(final <= c) = sum_p b_p * [C(G_p, k-1) / C(p, k-1)] * [C(p, k-1) C(M-1-p, N-k) / C(M, N)].

Both brackets lie in [0, 1] (computed in log space), and for a fixed k the sum over p is one
matrix product over all N.

Exact method with replacement. The N draws are i.i.d. positions. The k most confident draws all
predict <= c iff the k-th smallest drawn position ``p`` is good and no draw falls on a bad
position before ``p``. With A the draws on good positions before p and B those on p, that is
{A <= k-1, A + B >= k, no bad draw before p}, whose probability is

    T_p^N [Bin(k-1; N, G_p / (M T_p)) - Bin(k-1; N, (G_p + 1) / (M T_p))],  T_p = (G_p + M - p) / M,

where Bin is the binomial CDF; summing over good p gives P(final <= c).

Draws. Cores are independent within a draw, so a draw's number of correct cores is
Poisson-binomial with the per-core P(final = label): its exact distribution is built by dynamic
programming and ``draws`` accuracies are sampled from it (the same distribution as the
brute-force simulation, at no per-draw cost); the report gives their min, median and max and the
exact mean. The *median* is the lower median: the draw ranked ``(draws - 1) // 2`` (0-based) by
accuracy, an actual draw (never the average of two). At the confusion points, ``draws`` draws
are simulated per core from the exact per-core distributions of the final score; the curve's
statistics at those points are those simulated draws', so the curve's median and the median
confusion matrix are the same draw. Each confusion point also holds the expected matrix, the
per-class sensitivity/specificity and adjacent accuracies of the median draw and their means over
the draws, and the exact distribution of the number of correct cores (for percentiles).
Points with N > M (without replacement) are skipped and listed.
"""

from __future__ import annotations

import re
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy.special import bdtr, gammaln

from her2ops.errors import InvalidRequest
from her2ops.models.evaluation import (
    ADJACENT_READINGS,
    matrix_metrics,
    matrix_summary,
    summary_from_arrays,
)
from her2ops.models.inference import CONFIDENCES, confidence_order
from her2ops.scores import NUM_CLASSES

WITHOUT_REPLACEMENT = "without replacement"
WITH_REPLACEMENT = "with replacement"


def sampling_name(replace: bool) -> str:
    return WITH_REPLACEMENT if replace else WITHOUT_REPLACEMENT


def sampling_assumption(replace: bool, m: int) -> str:
    """One line stating how a draw picks its N outputs (printed with every study)."""
    if replace:
        return (
            f"sampling: each draw takes N of the M={m} cached outputs per core WITH replacement "
            "(i.i.d.; the paper does not say which)"
        )
    return (
        f"sampling: each draw takes N of the M={m} cached outputs per core WITHOUT replacement "
        "(a random N-subset, N <= M; the paper does not say which)"
    )


_RANGE = re.compile(r"^(\d+)\s*\.\.\s*(\d+)$")


#: The largest N or k a study accepts (the paper used M = 300 cached outputs per core).
MAX_LIST_VALUE = 10_000


def parse_int_list(text: str, *, max_value: int = MAX_LIST_VALUE) -> list[int]:
    """``"1..20,30,50,100"`` -> sorted unique positive integers (ranges are inclusive), each at
    most ``max_value`` (checked before a range is expanded)."""
    out: set[int] = set()
    for token in (t.strip() for t in str(text).split(",")):
        if not token:
            continue
        m = _RANGE.match(token)
        if m:
            lo, hi = int(m.group(1)), int(m.group(2))
            if lo > hi:
                raise InvalidRequest(f"empty range {token!r}")
            if hi > max_value:
                raise InvalidRequest(f"{token!r}: values above {max_value:,} are refused")
            out.update(range(lo, hi + 1))
        elif token.isdigit():
            if int(token) > max_value:
                raise InvalidRequest(f"{token!r}: values above {max_value:,} are refused")
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

    def _le_replace(self, n: int, k: int) -> np.ndarray:
        """P(final <= c) with N i.i.d. draws, (cores, 3): the sum over good positions p of
        P(the k-th smallest drawn position is p, no draw on a bad position before it)."""
        m = self.m
        # the term depends on (G_p, p) only: tabulate it on the grid G <= p < M, then gather
        g = np.arange(m, dtype=np.float64)[:, None]
        pos = np.arange(m, dtype=np.float64)[None, :]
        room = g + m - pos  # good positions before p, p itself and everything after p
        valid = g <= pos
        room = np.where(valid, room, 1.0)
        with np.errstate(divide="ignore", invalid="ignore"):
            lo = bdtr(k - 1, n, np.clip(g / room, 0.0, 1.0))
            hi = bdtr(k - 1, n, np.clip((g + 1) / room, 0.0, 1.0))
            table = np.where(valid, np.exp(n * np.log(room / m)) * (lo - hi), 0.0)
        terms = table.ravel()[self.before * m + np.arange(m)]
        return np.where(self.good, terms, 0.0).sum(axis=2)

    def final_probs(self, n_values: Sequence[int], k: int, *, replace: bool = False) -> np.ndarray:
        """P(final = c) for each N in ``n_values`` at this k: (len(n_values), cores, 4).

        The KCS has ``min(k, N)`` sets. Without replacement N must be at most M."""
        n_values = [int(n) for n in n_values]
        if k < 1 or any(n < 1 for n in n_values):
            raise InvalidRequest(f"need k >= 1 and N >= 1; got k={k}, N={n_values}")
        if not replace and any(n > self.m for n in n_values):
            raise InvalidRequest(f"without replacement N must be <= M={self.m}; got N={n_values}")
        le = np.zeros((len(n_values), self.cores, NUM_CLASSES - 1))
        groups: dict[int, list[int]] = {}
        for i, n in enumerate(n_values):
            groups.setdefault(min(k, n), []).append(i)
        for kk, idx in groups.items():
            if replace:
                for i in idx:
                    le[i] = self._le_replace(n_values[i], kk)
                continue
            a = self._kth_given_good(kk).reshape(-1, self.m)
            q = self._kth_position([n_values[i] for i in idx], kk)
            part = (a @ q).reshape(self.cores, NUM_CLASSES - 1, len(idx))
            le[idx] = np.moveaxis(part, 2, 0)
        le = np.clip(le, 0.0, 1.0)
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
    """Accuracy at one (N, k): exact mean and min/median/max over ``draws`` draws; ``kcs`` is
    the KCS size used, min(k, N)."""

    n: int
    k: int
    mean: float
    min: float
    median: float
    max: float
    kcs: int = 0


@dataclass(frozen=True)
class ConfusionPoint:
    """Confusion matrices at one (N, k): expected, and the min/median/max accuracy draws'
    (each with its sensitivity/specificity/adjacent accuracies under ``metrics``);
    ``mean_metrics`` are those metrics averaged over the draws; ``count_pmf`` the exact
    distribution of the number of correct cores (left out of ``to_dict``)."""

    n: int
    k: int
    expected: list[list[float]]
    draws: dict[str, dict[str, Any]]
    mean_metrics: dict[str, Any] = field(default_factory=dict)
    count_pmf: list[float] = field(default_factory=list, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "n": self.n,
            "k": self.k,
            "expected": self.expected,
            "draws": self.draws,
            "mean_metrics": self.mean_metrics,
        }

    def percentile(self, accuracy: float, cores: int) -> float:
        """Mid-rank percentile (0-100) of ``accuracy`` in this point's exact distribution:
        100 * (P(acc < a) + P(acc = a) / 2)."""
        pmf = np.asarray(self.count_pmf)
        correct = accuracy * cores
        counts = np.arange(len(pmf))
        below = float(pmf[counts < correct - 1e-9].sum())
        equal = float(pmf[np.abs(counts - correct) <= 1e-9].sum())
        return 100.0 * (below + equal / 2)


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
    sampling: str = WITHOUT_REPLACEMENT

    @property
    def assumption(self) -> str:
        return sampling_assumption(self.sampling == WITH_REPLACEMENT, self.outputs_per_core)

    def point(self, n: int, k: int) -> ConfusionPoint | None:
        """The confusion point at (N, k), if the study computed one."""
        return next((c for c in self.confusion if (c.n, c.k) == (n, k)), None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "cores": self.cores,
            "outputs_per_core": self.outputs_per_core,
            "draws": self.draws,
            "seed": self.seed,
            "confidence": self.confidence,
            "sampling": self.sampling,
            "assumption": self.assumption,
            "median_rule": "lower median: the draw ranked (draws - 1) // 2 by accuracy",
            "k_at": self.k_at,
            "n_at": self.n_at,
            "vs_n": [vars(p) for p in self.vs_n],
            "vs_k": [vars(p) for p in self.vs_k],
            "confusion": [c.to_dict() for c in self.confusion],
            "skipped": self.skipped,
            "seconds": self.seconds,
        }

    def plot(self, path: Path) -> Path:
        from her2ops.models.study_plot import plot_study

        return plot_study(self, Path(path))


def _lower_median_index(draws: int) -> int:
    return (draws - 1) // 2


def _curve_stats(
    p_correct: np.ndarray, draws: int, rng: np.random.Generator
) -> list[tuple[float, float, float, float]]:
    """(mean, min, median, max) accuracy per row of per-core success probabilities; the median
    is the lower median of the draws (an actual draw)."""
    cores = p_correct.shape[1]
    cdf = np.cumsum(poisson_binomial_pmf(p_correct), axis=1)
    out = []
    for row, c in zip(p_correct, cdf, strict=True):
        counts = np.searchsorted(c, rng.random(draws) * c[-1], side="right")
        acc = np.sort(np.minimum(counts, cores) / cores)
        out.append(
            (
                float(row.mean()),
                float(acc[0]),
                float(acc[_lower_median_index(draws)]),
                float(acc[-1]),
            )
        )
    return out


def _simulate_point(
    final_p: np.ndarray, labels: np.ndarray, draws: int, rng: np.random.Generator
) -> tuple[dict[str, dict[str, Any]], dict[str, Any], tuple[float, float, float]]:
    """Draw every core's final score ``draws`` times: the min/median/max draws' confusion
    matrices and metrics, the metrics' means over draws, and (min, median, max) accuracy."""
    cum = np.cumsum(final_p, axis=1)[:, :-1]  # (cores, 3)
    cores = len(labels)
    finals = np.zeros((draws, cores), dtype=np.int64)
    u = rng.random((draws, cores))
    for c in range(NUM_CLASSES - 1):
        finals += u >= cum[None, :, c]
    cells = NUM_CLASSES * NUM_CLASSES
    flat = (np.arange(draws)[:, None] * cells + labels[None, :] * NUM_CLASSES + finals).ravel()
    matrices = np.bincount(flat, minlength=draws * cells).reshape(draws, NUM_CLASSES, NUM_CLASSES)
    acc = np.trace(matrices, axis1=1, axis2=2) / cores
    order = np.argsort(acc, kind="stable")
    picks = {"min": order[0], "median": order[_lower_median_index(draws)], "max": order[-1]}
    out = {}
    for name, d in picks.items():
        out[name] = {
            "accuracy": float(acc[d]),
            "matrix": matrices[d].tolist(),
            "metrics": matrix_summary(matrices[d]),
        }
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns stay NaN -> None
        mean = {k: np.nanmean(v, axis=0) for k, v in matrix_metrics(matrices).items()}
    stats = (float(acc[order[0]]), float(acc[picks["median"]]), float(acc[order[-1]]))
    return out, summary_from_arrays(mean), stats


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
    replace: bool = False,
) -> StudyResult:
    """Accuracy vs N at ``k = k_at`` and vs k at ``N = n_at`` (min/median/max over ``draws``),
    with confusion matrices at ``cm_points`` (default: (20, k_at) and (n_at, k_at)).
    ``replace`` draws the N outputs with replacement (see the module docstring)."""
    started = time.perf_counter()
    labels = np.asarray(labels)
    exact = ExactKCS(probs, confidence)
    if (
        labels.shape != (exact.cores,)
        or not np.issubdtype(labels.dtype, np.integer)
        or labels.min() < 0
        or labels.max() >= NUM_CLASSES
    ):
        raise InvalidRequest(f"labels must be {exact.cores} integers in 0..{NUM_CLASSES - 1}")
    labels = labels.astype(np.int64)
    if draws < 1:
        raise InvalidRequest("draws must be at least 1")
    m, rng = exact.m, np.random.default_rng(seed)
    skipped: list[dict[str, Any]] = []

    def valid(n: int, k: int) -> bool:
        if not replace and n > m:
            skipped.append({"n": n, "k": k, "reason": f"N > M={m} outputs per core"})
            return False
        return True

    def correct(fp: np.ndarray) -> np.ndarray:  # (points, cores, 4) -> (points, cores)
        return np.take_along_axis(fp, labels[None, :, None], axis=2)[..., 0]

    ns = [n for n in sorted(set(n_values)) if valid(n, k_at)]
    vs_n: list[StudyPoint] = []
    if ns:
        fp = exact.final_probs(ns, k_at, replace=replace)
        for n, st in zip(ns, _curve_stats(correct(fp), draws, rng), strict=True):
            vs_n.append(StudyPoint(n, k_at, *st, kcs=min(k_at, n)))
    ks = [k for k in sorted(set(k_values)) if valid(n_at, k)]
    vs_k: list[StudyPoint] = []
    if ks:
        fp = np.concatenate([exact.final_probs([n_at], k, replace=replace) for k in ks])
        for k, st in zip(ks, _curve_stats(correct(fp), draws, rng), strict=True):
            vs_k.append(StudyPoint(n_at, k, *st, kcs=min(k, n_at)))
    points = list(cm_points) if cm_points is not None else [(20, k_at), (n_at, k_at)]
    confusion: list[ConfusionPoint] = []
    for n, k in dict.fromkeys(points):
        if not valid(n, k):
            continue
        final_p = exact.final_probs([n], k, replace=replace)[0]
        expected = np.zeros((NUM_CLASSES, NUM_CLASSES))
        np.add.at(expected, labels, final_p)
        sims, mean_metrics, (lo, med, hi) = _simulate_point(final_p, labels, draws, rng)
        pmf = poisson_binomial_pmf(correct(final_p[None]))[0]
        confusion.append(
            ConfusionPoint(n, k, expected.round(6).tolist(), sims, mean_metrics, pmf.tolist())
        )
        # the curves show the very draws whose matrices are shown for the same point
        for curve in (vs_n, vs_k):
            for i, pt in enumerate(curve):
                if (pt.n, pt.k) == (n, k):
                    curve[i] = StudyPoint(n, k, pt.mean, lo, med, hi, kcs=pt.kcs)
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
        sampling=sampling_name(replace),
    )


def point_accuracy(
    probs: np.ndarray,
    labels: np.ndarray,
    *,
    n: int,
    k: int,
    confidence: str,
    draws: int,
    seed: int = 0,
    replace: bool = False,
) -> dict[str, float]:
    """Exact mean and min/median/max over ``draws`` draws of the accuracy at one (N, k)."""
    labels = np.asarray(labels, dtype=np.int64)
    exact = ExactKCS(probs, confidence)
    fp = exact.final_probs([n], k, replace=replace)
    p_correct = np.take_along_axis(fp, labels[None, :, None], axis=2)[..., 0]
    mean, lo, med, hi = _curve_stats(p_correct, draws, np.random.default_rng(seed))[0]
    return {"mean": mean, "min": lo, "median": med, "max": hi}


def compare_confidences(
    probs: np.ndarray,
    labels: np.ndarray,
    *,
    n: int = 20,
    k: int = 5,
    draws: int = 10_000,
    seed: int = 0,
    replace: bool = False,
    measures: Sequence[str] = CONFIDENCES,
) -> list[dict[str, Any]]:
    """The study's accuracy at (N, k) under each confidence measure: one row per measure with
    ``median`` (lower median of ``draws`` draws), ``mean`` (exact), ``min`` and ``max``."""
    m = np.asarray(probs).shape[1]
    if not replace and n > m:
        n = m
    return [
        {
            "confidence": name,
            "n": n,
            "k": k,
            **point_accuracy(
                probs, labels, n=n, k=k, confidence=name, draws=draws, seed=seed, replace=replace
            ),
        }
        for name in measures
    ]


def study_headline(
    result: StudyResult,
    *,
    single_accuracy: float | None = None,
    single_seed: int | None = None,
    n: int = 20,
    k: int = 5,
) -> dict[str, Any] | None:
    """The paper's headline from a study: accuracy at (N, k) as the median (and mean, min, max)
    over the draws, with sensitivity/specificity/adjacent accuracies at the median draw and as
    means over the draws; the single scored draw (``single_accuracy``, e.g. ``evaluate``'s
    seed-0 scoring) is placed in that distribution by its percentile. ``None`` when the study
    has no confusion point at (N, k)."""
    point = result.point(n, k)
    if point is None:
        return None
    curve = next((p for p in (*result.vs_n, *result.vs_k) if (p.n, p.k) == (n, k)), None)
    median = point.draws["median"]
    exact_mean = float(np.trace(np.asarray(point.expected)) / result.cores)
    out: dict[str, Any] = {
        "n": n,
        "k": k,
        "draws": result.draws,
        "confidence": result.confidence,
        "sampling": result.sampling,
        "assumption": result.assumption,
        "accuracy": {
            "median": median["accuracy"],
            "mean": curve.mean if curve is not None else exact_mean,
            "min": point.draws["min"]["accuracy"],
            "max": point.draws["max"]["accuracy"],
        },
        "at_median_draw": median["metrics"],
        "mean_over_draws": point.mean_metrics,
        "single_draw": None,
    }
    if single_accuracy is not None:
        out["single_draw"] = {
            "accuracy": float(single_accuracy),
            "seed": single_seed,
            "percentile": point.percentile(float(single_accuracy), result.cores),
        }
    return out


def evaluation_study(
    probs: np.ndarray,
    labels: np.ndarray,
    *,
    n: int,
    k: int,
    n_values: Sequence[int],
    k_values: Sequence[int],
    n_at: int,
    k_at: int,
    draws: int,
    confidence: str,
    replace: bool = False,
    single_accuracy: float | None = None,
    single_seed: int | None = None,
) -> tuple[StudyResult, dict[str, Any]]:
    """The study ``evaluate --study`` runs: the N/k curves with confusion points at (n, k) and
    (n_at, k_at), the paper's headline at (n, k) (:func:`study_headline`) and the accuracy at
    (n, k) under every confidence measure (:func:`compare_confidences`). Returns the result and
    its JSON-able summary (``to_dict()`` plus ``headline`` and ``confidence_table``)."""
    res = run_study(
        probs,
        labels,
        n_values=n_values,
        k_values=k_values,
        draws=draws,
        k_at=k_at,
        n_at=n_at,
        confidence=confidence,
        cm_points=[(n, k), (n_at, k_at)],
        replace=replace,
    )
    summary = res.to_dict()
    summary["headline"] = study_headline(
        res, single_accuracy=single_accuracy, single_seed=single_seed, n=n, k=k
    )
    summary["confidence_table"] = compare_confidences(
        probs, labels, n=n, k=k, draws=draws, replace=replace
    )
    return res, summary


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{v:.2%}"


def study_report_lines(summary: dict[str, Any]) -> list[str]:
    """Plain-text lines for the headline and the confidence table of :func:`evaluation_study`'s
    summary (what ``evaluate --study`` prints)."""
    lines = [f"  {summary['assumption']}"]
    head = summary.get("headline")
    if head is None:
        lines.append("  headline: the study has no point at the evaluated (N, k)")
    else:
        acc = head["accuracy"]
        lines.append(
            f"  headline (paper's protocol): accuracy at N={head['n']}, k={head['k']} over "
            f"{head['draws']} draws: median {_pct(acc['median'])}, mean {_pct(acc['mean'])} "
            f"(min {_pct(acc['min'])}, max {_pct(acc['max'])})"
        )
        single = head.get("single_draw")
        if single is not None:
            lines.append(
                f"  the single scored draw (seed {single['seed']}): {_pct(single['accuracy'])}, "
                f"percentile {single['percentile']:.1f} of the study's draws"
            )
        med, mean = head["at_median_draw"], head["mean_over_draws"]
        lines.append(f"  {'':34}{'median draw':>12}{'mean of draws':>15}")
        for what in ("sensitivity", "specificity"):
            for cls in med[what]:
                lines.append(
                    f"  {what + ' ' + cls:<34}{_pct(med[what][cls]):>12}{_pct(mean[what][cls]):>15}"
                )
        for reading, label in ADJACENT_READINGS.items():
            for pair in med["adjacent"]:
                lines.append(
                    f"  {label + ' ' + pair:<34}{_pct(med['adjacent'][pair][reading]):>12}"
                    f"{_pct(mean['adjacent'][pair][reading]):>15}"
                )
    table = summary.get("confidence_table") or []
    if table:
        lines.append(
            f"  accuracy at N={table[0]['n']}, k={table[0]['k']} by confidence measure "
            f"(median of draws; '{summary['confidence']}' is in use):"
        )
        for row in table:
            lines.append(
                f"    {row['confidence']:<8} median {_pct(row['median'])}  mean "
                f"{_pct(row['mean'])}  (min {_pct(row['min'])}, max {_pct(row['max'])})"
            )
    return lines


def headline_metrics(headline: dict[str, Any] | None, prefix: str = "") -> dict[str, float]:
    """Scalar metrics of a :func:`study_headline` for a tracking server (names made of
    letters, digits and underscores)."""
    if headline is None:
        return {}
    out = {f"{prefix}study_{k}_accuracy": float(v) for k, v in headline["accuracy"].items()}
    single = headline.get("single_draw")
    if single is not None:
        out[f"{prefix}study_single_draw_percentile"] = float(single["percentile"])
    return out
