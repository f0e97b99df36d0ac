"""Inter-rater agreement and curation counts (pure functions, numpy only; no database).

Votes are plain mappings ``{core: {rater: category}}`` where a category is a
:class:`~her2ops.scores.HER2Score` (or a plain int 0..3) and ``None`` means ND (nondiagnostic).
The database layer builds these mappings (typically from the *initial* round) and calls
:func:`summarize`, which the ``her2ops stats`` command prints with :func:`format_stats_table` or
emits as JSON.

Decisions (the issue is silent on them):

* Fleiss' kappa needs the same number of raters on every subject. :func:`fleiss_from_votes` uses
  the subjects rated by the *modal* number of raters (ties: the larger number) and reports how
  many subjects it used and skipped. ND is a category of its own by default (a pathologist
  calling a core nondiagnostic is a nominal judgement other raters can agree with);
  ``exclude_nd=True`` drops ND votes first.
* Weighted Cohen's kappa needs an ordinal scale, so :func:`pairwise_cohen` drops cores on which
  either rater voted ND when ``weights`` is set; unweighted, ND is a category of its own. The
  weights are computed on the full HER2 scale 0..3 (``labels=(0, 1, 2, 3)``), so a 0-vs-3
  disagreement weighs 9 in quadratic weighting even when no rater ever used 1+ or 2+.
* :func:`cohen_kappa` reproduces ``sklearn.metrics.cohen_kappa_score`` exactly, including its
  ``nan`` where kappa is undefined (zero denominator) and its ``ValueError`` on empty input.
* Undefined statistics are ``nan`` in the dataclasses and ``None`` in :func:`summarize`'s
  JSON-able dict (JSON has no NaN).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import combinations
from typing import Any, Literal, TypeVar

import numpy as np

from her2ops.platform.protocol import LabelStatus
from her2ops.scores import ND, SCORE_LABELS

Category = int | None
"""A vote's category: a HER2 score 0..3 (``HER2Score`` is an int) or ``None`` for ND."""
K = TypeVar("K", bound=Hashable)
"""A core key (id or code); generic because ``Mapping`` is invariant in its key type."""
Votes = Mapping[K, Mapping[str, Category]]
"""``{core: {rater: category}}``: one (effective) vote per rater and core."""
Weights = Literal["linear", "quadratic"] | None

SCORES: tuple[int, ...] = (0, 1, 2, 3)
DEFAULT_CATEGORIES: tuple[Category, ...] = (0, 1, 2, 3, None)


def _label(category: Category) -> str:
    return ND if category is None else SCORE_LABELS[int(category)]


def _check_category(category: object, allowed: Sequence[Category]) -> None:
    if category not in allowed:
        shown = ", ".join(_label(c) if c is None or c in SCORES else repr(c) for c in allowed)
        raise ValueError(f"unknown vote category {category!r}: expected one of {shown}")


# --------------------------------------------------------------------------- Fleiss


@dataclass(frozen=True)
class FleissResult:
    """Fleiss' kappa and the subjects it was computed on."""

    kappa: float
    n_subjects: int
    n_raters: int
    n_skipped: int = 0


def fleiss_kappa(table: np.ndarray | Sequence[Sequence[float]]) -> float:
    """Fleiss' kappa of a (subjects x categories) count table, as ``statsmodels``' ``fleiss_kappa``.

    Every row must sum to the same number of raters (>= 2). Returns ``nan`` when every rating
    falls in one category (expected agreement 1: kappa is 0/0).
    """
    arr = np.asarray(table, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError("fleiss_kappa needs a non-empty 2-D (subjects x categories) table")
    if (arr < 0).any():
        raise ValueError("fleiss_kappa: counts must be non-negative")
    per_subject = arr.sum(axis=1)
    n_rat = float(per_subject.max())
    if not np.all(per_subject == n_rat):
        raise ValueError("fleiss_kappa needs the same number of raters on every subject")
    if n_rat < 2:
        raise ValueError("fleiss_kappa needs at least 2 raters per subject")
    n_total = arr.sum()
    p_cat = arr.sum(axis=0) / n_total
    p_subject = ((arr * arr).sum(axis=1) - n_rat) / (n_rat * (n_rat - 1.0))
    p_mean = p_subject.mean()
    p_expected = float((p_cat * p_cat).sum())
    if p_expected == 1.0:
        return math.nan
    return float((p_mean - p_expected) / (1.0 - p_expected))


def fleiss_from_votes(
    votes: Votes[K],
    categories: Sequence[Category] = DEFAULT_CATEGORIES,
    *,
    exclude_nd: bool = False,
) -> FleissResult:
    """Fleiss' kappa over ``{core: {rater: category}}``.

    Fleiss' kappa assumes every subject has the same number of raters, so only cores rated by
    the modal number of raters (among cores with at least 2; ties go to the larger number) are
    used; ``n_skipped`` counts the other cores that had any vote. ND (``None``) is a category of
    its own unless ``exclude_nd``, which drops ND votes before counting raters.
    """
    cats = [c for c in categories if not (exclude_nd and c is None)]
    if not cats:
        raise ValueError("fleiss_from_votes needs at least one category")
    column = {c: i for i, c in enumerate(cats)}
    rows: list[list[Category]] = []
    n_voted = 0
    for by_rater in votes.values():
        if not by_rater:
            continue
        n_voted += 1
        values = list(by_rater.values())
        for v in values:
            _check_category(v, categories)
        rows.append([v for v in values if not (exclude_nd and v is None)])
    sizes = Counter(len(r) for r in rows if len(r) >= 2)
    if not sizes:
        return FleissResult(math.nan, 0, 0, n_voted)
    n_raters = max(sizes, key=lambda m: (sizes[m], m))
    used = [r for r in rows if len(r) == n_raters]
    table = np.zeros((len(used), len(cats)), dtype=np.int64)
    for i, row in enumerate(used):
        for v in row:
            table[i, column[v]] += 1
    return FleissResult(fleiss_kappa(table), len(used), n_raters, n_voted - len(used))


# --------------------------------------------------------------------------- Cohen


def cohen_kappa(
    a: Sequence[Hashable],
    b: Sequence[Hashable],
    *,
    weights: Weights = None,
    labels: Sequence[Hashable] | None = None,
) -> float:
    """Cohen's kappa between two raters, as ``sklearn.metrics.cohen_kappa_score``.

    ``labels`` fixes the categories and their order (weights use the label *positions*, so pass
    ``labels=(0, 1, 2, 3)`` to weigh on the HER2 scale); pairs with a value outside ``labels``
    are dropped. Without ``labels`` the sorted union of observed values is used. Returns ``nan``
    where kappa is undefined (no usable pair, or zero expected disagreement, e.g. both raters
    used a single category); raises ``ValueError`` on empty or unequal-length input, as sklearn.
    """
    if weights not in (None, "linear", "quadratic"):
        raise ValueError(f"weights must be None, 'linear' or 'quadratic', not {weights!r}")
    if len(a) != len(b):
        raise ValueError(f"cohen_kappa: inputs differ in length ({len(a)} vs {len(b)})")
    if len(a) == 0:
        raise ValueError("cohen_kappa: empty input")
    if labels is None:
        labels = sorted(set(a) | set(b))  # type: ignore[type-var]
    elif len(labels) == 0:
        raise ValueError("cohen_kappa: labels must not be empty")
    index = {lab: i for i, lab in enumerate(labels)}
    if not any(x in index for x in a):
        raise ValueError("cohen_kappa: at least one label in `labels` must be present in `a`")
    k = len(labels)
    confusion = np.zeros((k, k), dtype=np.float64)
    for x, y in zip(a, b, strict=True):
        i, j = index.get(x), index.get(y)
        if i is not None and j is not None:
            confusion[i, j] += 1.0

    n = confusion.sum()
    if n == 0:
        return math.nan
    expected = np.outer(confusion.sum(axis=1), confusion.sum(axis=0)) / n
    grid = np.broadcast_to(np.arange(k, dtype=np.float64), (k, k))
    if weights is None:
        w = 1.0 - np.eye(k)
    elif weights == "linear":
        w = np.abs(grid - grid.T)
    else:
        w = (grid - grid.T) ** 2
    denominator = float((w * expected).sum())
    if denominator == 0.0:
        return math.nan
    return float(1.0 - (w * confusion).sum() / denominator)


@dataclass(frozen=True)
class PairKappa:
    """Cohen's kappa of one pair of raters over the ``n`` cores both rated."""

    rater_a: str
    rater_b: str
    kappa: float
    n: int


def raters_of(votes: Votes[Any]) -> list[str]:
    """Every rater who voted on any core, sorted."""
    return sorted({r for by_rater in votes.values() for r in by_rater})


def pairwise_cohen(
    votes: Votes[K],
    raters: Iterable[str] | None = None,
    *,
    weights: Weights = "quadratic",
) -> list[PairKappa]:
    """Cohen's kappa for every pair of ``raters`` (default: all, sorted) over shared cores.

    Weighted (the default, quadratic) kappa needs an ordinal scale: cores where either rater
    voted ND are dropped and the weights run over 0..3. Unweighted, ND is a fifth category.
    ``kappa`` is ``nan`` when the pair shares no usable core or kappa is undefined.
    """
    names = raters_of(votes) if raters is None else list(raters)
    labels: tuple[Category, ...] = SCORES if weights is not None else DEFAULT_CATEGORIES
    for by_rater in votes.values():
        for v in by_rater.values():
            _check_category(v, DEFAULT_CATEGORIES)
    out: list[PairKappa] = []
    for ra, rb in combinations(names, 2):
        xs: list[Category] = []
        ys: list[Category] = []
        for by_rater in votes.values():
            if ra not in by_rater or rb not in by_rater:
                continue
            x, y = by_rater[ra], by_rater[rb]
            if weights is not None and (x is None or y is None):
                continue
            xs.append(x)
            ys.append(y)
        kappa = cohen_kappa(xs, ys, weights=weights, labels=labels) if xs else math.nan
        out.append(PairKappa(ra, rb, kappa, len(xs)))
    return out


# --------------------------------------------------------------------------- consensus


@dataclass(frozen=True)
class AgreementRow:
    """One rater against the consensus: ``agree`` of ``n`` labelled cores they voted on."""

    n: int
    agree: int
    rate: float
    within_one_rate: float


def agreement_with_consensus(
    votes: Votes[K], consensus: Mapping[K, int]
) -> dict[str, AgreementRow]:
    """Each rater's agreement with the consensus score, over labelled cores they voted on.

    ``consensus`` maps cores with a training label (agreed or adjudicated) to their score;
    cores missing from it are ignored. An ND vote on a labelled core counts as a disagreement
    and is never "within one". Rates are ``nan`` for a rater with no labelled core.
    """
    n: Counter[str] = Counter()
    agree: Counter[str] = Counter()
    near: Counter[str] = Counter()
    for core, by_rater in votes.items():
        for rater in by_rater:
            n[rater] += 0  # every rater gets a row, even without labelled cores
        if core not in consensus:
            continue
        truth = int(consensus[core])
        for rater, vote in by_rater.items():
            n[rater] += 1
            if vote is None:
                continue
            agree[rater] += int(vote) == truth
            near[rater] += abs(int(vote) - truth) <= 1
    return {
        rater: AgreementRow(
            n=n[rater],
            agree=agree[rater],
            rate=agree[rater] / n[rater] if n[rater] else math.nan,
            within_one_rate=near[rater] / n[rater] if n[rater] else math.nan,
        )
        for rater in sorted(n)
    }


# --------------------------------------------------------------------------- summary


def _json_float(x: float) -> float | None:
    return None if math.isnan(x) else float(x)


def summarize(
    votes: Votes[K],
    consensus: Mapping[K, int],
    status_counts: Mapping[str, int],
    *,
    weights: Weights = "quadratic",
) -> dict[str, Any]:
    """Everything ``her2ops stats`` reports, as a JSON-able dict.

    ``votes`` are the initial-round votes ``{core: {rater: category}}``, ``consensus`` the score
    of each labelled core, ``status_counts`` the number of cores per consensus status (missing
    statuses are reported as 0). Undefined statistics are ``None``.
    """
    raters = raters_of(votes)
    fleiss = fleiss_from_votes(votes)
    vote_counts = Counter(v for by_rater in votes.values() for v in by_rater.values())
    score_counts = Counter(int(s) for s in consensus.values())
    statuses = {str(s): int(status_counts.get(str(s), 0)) for s in LabelStatus}
    statuses.update({str(k): int(v) for k, v in status_counts.items()})
    return {
        "n_cores_voted": sum(1 for by_rater in votes.values() if by_rater),
        "n_votes": sum(vote_counts.values()),
        "raters": raters,
        "vote_counts": {_label(c): vote_counts.get(c, 0) for c in DEFAULT_CATEGORIES},
        "fleiss": {
            "kappa": _json_float(fleiss.kappa),
            "n_subjects": fleiss.n_subjects,
            "n_raters": fleiss.n_raters,
            "n_skipped": fleiss.n_skipped,
            "categories": [_label(c) for c in DEFAULT_CATEGORIES],
        },
        "pairwise_cohen": {
            "weights": weights,
            "nd_excluded": weights is not None,
            "pairs": [
                {
                    "rater_a": p.rater_a,
                    "rater_b": p.rater_b,
                    "kappa": _json_float(p.kappa),
                    "n": p.n,
                }
                for p in pairwise_cohen(votes, raters, weights=weights)
            ],
        },
        "agreement_with_consensus": {
            rater: {
                "n": row.n,
                "agree": row.agree,
                "rate": _json_float(row.rate),
                "within_one_rate": _json_float(row.within_one_rate),
            }
            for rater, row in agreement_with_consensus(votes, consensus).items()
        },
        "status_counts": statuses,
        "score_counts": {SCORE_LABELS[s]: score_counts.get(s, 0) for s in SCORES},
        "n_labelled": len(consensus),
    }


def _fmt(x: float | None, digits: int = 3) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=True)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    for row in rows:
        cells = [
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
    return lines


def format_stats_table(summary: Mapping[str, Any]) -> str:
    """Render :func:`summarize`'s dict as a plain-text report for the terminal."""
    fl = summary["fleiss"]
    pc = summary["pairwise_cohen"]
    lines = [
        f"Cores with votes: {summary['n_cores_voted']}   votes: {summary['n_votes']}   "
        f"raters: {len(summary['raters'])}   labelled cores: {summary['n_labelled']}",
        "",
        f"Fleiss' kappa (initial votes, ND as a category): {_fmt(fl['kappa'])}  "
        f"({fl['n_subjects']} cores with {fl['n_raters']} raters; {fl['n_skipped']} skipped)",
        "",
    ]
    weights = pc["weights"] or "unweighted"
    nd_note = ", ND excluded" if pc["nd_excluded"] else ", ND as a category"
    lines.append(f"Pairwise Cohen's kappa ({weights}{nd_note})")
    if pc["pairs"]:
        lines += _table(
            ["rater A", "rater B", "kappa", "cores"],
            [[p["rater_a"], p["rater_b"], _fmt(p["kappa"]), str(p["n"])] for p in pc["pairs"]],
        )
    else:
        lines.append("(fewer than two raters)")
    lines += ["", "Agreement with consensus"]
    agreement = summary["agreement_with_consensus"]
    if agreement:
        lines += _table(
            ["rater", "cores", "agree", "rate", "within 1"],
            [
                [r, str(a["n"]), str(a["agree"]), _fmt(a["rate"]), _fmt(a["within_one_rate"])]
                for r, a in agreement.items()
            ],
        )
    else:
        lines.append("(no votes)")
    lines.append("")
    lines += _table(["status", "cores"], [[k, str(v)] for k, v in summary["status_counts"].items()])
    lines.append("")
    lines += _table(
        ["consensus score", "cores"], [[k, str(v)] for k, v in summary["score_counts"].items()]
    )
    lines.append("")
    lines += _table(["vote", "count"], [[k, str(v)] for k, v in summary["vote_counts"].items()])
    return "\n".join(lines)
