"""Agreement statistics against scikit-learn and statsmodels, degenerate cases, the summary."""

from __future__ import annotations

import json
import math
import warnings
from typing import Any

import numpy as np
import pytest
from sklearn.metrics import cohen_kappa_score
from statsmodels.stats.inter_rater import aggregate_raters
from statsmodels.stats.inter_rater import fleiss_kappa as sm_fleiss_kappa

from her2ops.platform.protocol import LabelStatus
from her2ops.platform.stats import (
    AgreementRow,
    FleissResult,
    agreement_with_consensus,
    cohen_kappa,
    fleiss_from_votes,
    fleiss_kappa,
    format_stats_table,
    pairwise_cohen,
    summarize,
)
from her2ops.scores import HER2Score

WEIGHTS = (None, "linear", "quadratic")


def sk_kappa(a: Any, b: Any, **kw: Any) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn warns where kappa is undefined
        return float(cohen_kappa_score(a, b, **kw))


def sm_kappa(table: np.ndarray) -> float:
    with np.errstate(all="ignore"):  # statsmodels divides 0/0 when kappa is undefined
        return float(sm_fleiss_kappa(table))


def same(x: float, y: float) -> bool:
    return (math.isnan(x) and math.isnan(y)) or math.isclose(x, y, rel_tol=1e-12, abs_tol=1e-12)


def noisy_ratings(
    rng: np.random.Generator, n_subjects: int, n_raters: int, n_cat: int
) -> np.ndarray:
    """Raters who mostly agree with a hidden truth, off by one now and then (kappa well above 0)."""
    truth = rng.integers(0, n_cat, size=n_subjects)
    noise = rng.choice([-1, 0, 0, 0, 1], size=(n_subjects, n_raters))
    return np.clip(truth[:, None] + noise, 0, n_cat - 1)


# --------------------------------------------------------------------------- Cohen


@pytest.mark.parametrize("weights", WEIGHTS)
def test_cohen_matches_sklearn_on_random_data(weights: Any) -> None:
    rng = np.random.default_rng(20240048)
    for trial in range(60):
        n = int(rng.integers(2, 120))
        p = rng.dirichlet(np.ones(4))
        a = rng.choice(4, size=n, p=p)
        # half the trials correlated, half independent
        b = (
            np.where(rng.random(n) < 0.6, a, rng.choice(4, size=n))
            if trial % 2
            else rng.choice(4, n)
        )
        ours = cohen_kappa(a.tolist(), b.tolist(), weights=weights)
        assert same(ours, sk_kappa(a, b, weights=weights)), (trial, weights)
        ours_l = cohen_kappa(a.tolist(), b.tolist(), weights=weights, labels=[0, 1, 2, 3])
        assert same(ours_l, sk_kappa(a, b, weights=weights, labels=[0, 1, 2, 3])), (trial, weights)


@pytest.mark.parametrize("weights", WEIGHTS)
def test_cohen_matches_sklearn_with_partial_and_reordered_labels(weights: Any) -> None:
    rng = np.random.default_rng(7)
    for labels in ([0, 1, 2], [3, 1, 0, 2], [1, 3]):
        for _ in range(15):
            a = rng.integers(0, 4, size=40)
            b = np.where(rng.random(40) < 0.5, a, rng.integers(0, 4, size=40))
            ours = cohen_kappa(a.tolist(), b.tolist(), weights=weights, labels=labels)
            assert same(ours, sk_kappa(a, b, weights=weights, labels=labels)), labels


def test_cohen_string_labels_match_sklearn() -> None:
    a = ["0", "1+", "1+", "2+", "3+", "ND", "0", "2+"]
    b = ["0", "1+", "2+", "2+", "3+", "0", "ND", "3+"]
    assert same(cohen_kappa(a, b), sk_kappa(a, b))


def test_cohen_her2score_values_work() -> None:
    a = [HER2Score.ZERO, HER2Score.THREE, HER2Score.TWO, HER2Score.ONE]
    b = [HER2Score.ZERO, HER2Score.TWO, HER2Score.TWO, HER2Score.ONE]
    ints_a, ints_b = [int(x) for x in a], [int(x) for x in b]
    for w in WEIGHTS:
        assert same(
            cohen_kappa(a, b, weights=w, labels=(0, 1, 2, 3)),  # type: ignore[arg-type]
            sk_kappa(ints_a, ints_b, weights=w, labels=[0, 1, 2, 3]),
        )


@pytest.mark.parametrize("weights", WEIGHTS)
def test_cohen_degenerate_cases_match_sklearn(weights: Any) -> None:
    # perfect agreement over several categories
    a = [0, 1, 2, 3, 3, 1]
    assert cohen_kappa(a, a, weights=weights) == pytest.approx(1.0)
    assert same(cohen_kappa(a, a, weights=weights), sk_kappa(a, a, weights=weights))
    # both raters always give the same single category: expected disagreement 0 -> nan
    assert math.isnan(cohen_kappa([2, 2, 2], [2, 2, 2], weights=weights))
    assert math.isnan(sk_kappa([2, 2, 2], [2, 2, 2], weights=weights))
    with_labels = {"weights": weights, "labels": [0, 1, 2, 3]}
    assert math.isnan(cohen_kappa([2, 2], [2, 2], **with_labels))
    assert math.isnan(sk_kappa([2, 2], [2, 2], **with_labels))
    # no pair has both values in labels -> nan
    assert math.isnan(cohen_kappa([1, 5], [5, 1], weights=weights, labels=[0, 1]))
    assert math.isnan(sk_kappa([1, 5], [5, 1], weights=weights, labels=[0, 1]))
    # complete disagreement between two categories
    assert same(
        cohen_kappa([0, 3], [3, 0], weights=weights), sk_kappa([0, 3], [3, 0], weights=weights)
    )


def test_cohen_errors_like_sklearn() -> None:
    cases: list[tuple[list[int], list[int], dict[str, Any]]] = [
        ([], [], {}),
        ([1, 2], [1], {}),
        ([5, 5], [1, 1], {"labels": [0, 1]}),
    ]
    for a, b, kw in cases:
        with pytest.raises(ValueError):
            cohen_kappa(a, b, **kw)
        with pytest.raises(ValueError):
            sk_kappa(a, b, **kw)
    with pytest.raises(ValueError, match="weights"):
        cohen_kappa([0, 1], [0, 1], weights="cubic")  # type: ignore[arg-type]


def test_cohen_weights_use_label_positions() -> None:
    # Without labels, 0 and 3 are adjacent (positions 0 and 1); on the HER2 scale they are 3 apart.
    a, b = [0, 3, 0, 3, 0], [0, 3, 3, 0, 0]
    free = cohen_kappa(a, b, weights="quadratic")
    scale = cohen_kappa(a, b, weights="quadratic", labels=[0, 1, 2, 3])
    assert same(free, sk_kappa(a, b, weights="quadratic"))
    assert same(scale, sk_kappa(a, b, weights="quadratic", labels=[0, 1, 2, 3]))


# --------------------------------------------------------------------------- Fleiss


def test_fleiss_table_matches_statsmodels() -> None:
    rng = np.random.default_rng(3)
    for _ in range(60):
        n_sub = int(rng.integers(1, 60))
        n_rat = int(rng.integers(2, 7))
        n_cat = int(rng.integers(2, 6))
        ratings = noisy_ratings(rng, n_sub, n_rat, n_cat)
        table, _ = aggregate_raters(ratings, n_cat=n_cat)
        assert same(fleiss_kappa(table), sm_kappa(table))


def test_fleiss_degenerate_and_invalid_tables() -> None:
    single = np.array([[3, 0], [3, 0], [3, 0]])
    assert math.isnan(fleiss_kappa(single))
    assert math.isnan(sm_kappa(single))
    with pytest.raises(ValueError, match="same number of raters"):
        fleiss_kappa([[2, 1], [1, 1]])
    with pytest.raises(ValueError, match="at least 2 raters"):
        fleiss_kappa([[1, 0], [0, 1]])
    with pytest.raises(ValueError, match="non-negative"):
        fleiss_kappa([[3, -1], [1, 1]])
    with pytest.raises(ValueError, match="2-D"):
        fleiss_kappa(np.zeros((0, 4)))


def votes_from_matrix(ratings: np.ndarray, nd_code: int | None = None) -> dict[str, dict[str, Any]]:
    return {
        f"C{i:03d}": {
            f"r{j}": (None if nd_code is not None and int(v) == nd_code else int(v))
            for j, v in enumerate(row)
        }
        for i, row in enumerate(ratings)
    }


def test_fleiss_from_votes_matches_statsmodels_with_nd_as_category() -> None:
    rng = np.random.default_rng(11)
    for _ in range(20):
        ratings = noisy_ratings(rng, int(rng.integers(5, 60)), 5, 5)  # code 4 plays ND
        votes = votes_from_matrix(ratings, nd_code=4)
        res = fleiss_from_votes(votes)
        table, _ = aggregate_raters(ratings, n_cat=5)
        assert isinstance(res, FleissResult)
        assert (res.n_subjects, res.n_raters, res.n_skipped) == (len(ratings), 5, 0)
        assert same(res.kappa, sm_kappa(table))


def test_fleiss_from_votes_uses_modal_number_of_raters() -> None:
    rng = np.random.default_rng(12)
    full = noisy_ratings(rng, 40, 4, 4)
    votes = votes_from_matrix(full)
    # 9 cores lost a rater and 6 got a fifth: neither is the modal count, so both are skipped
    short = noisy_ratings(rng, 9, 3, 4)
    for i, row in enumerate(short):
        votes[f"S{i}"] = {f"r{j}": int(v) for j, v in enumerate(row)}
    extra = noisy_ratings(rng, 6, 5, 4)
    for i, row in enumerate(extra):
        votes[f"X{i}"] = {f"r{j}": int(v) for j, v in enumerate(row)}
    votes["one"] = {"r0": 2}  # a single vote can never enter Fleiss
    votes["empty"] = {}  # no vote at all: not counted as skipped
    res = fleiss_from_votes(votes)
    assert (res.n_subjects, res.n_raters, res.n_skipped) == (40, 4, 16)
    assert same(res.kappa, sm_kappa(aggregate_raters(full, n_cat=5)[0]))
    # a tie between two counts goes to the larger number of raters
    tie = votes_from_matrix(noisy_ratings(rng, 5, 2, 4))
    tie.update(
        {f"T{i}": v for i, v in enumerate(votes_from_matrix(noisy_ratings(rng, 5, 3, 4)).values())}
    )
    assert fleiss_from_votes(tie).n_raters == 3


def test_fleiss_from_votes_exclude_nd() -> None:
    rng = np.random.default_rng(13)
    ratings = noisy_ratings(rng, 30, 4, 4)
    votes = votes_from_matrix(ratings)
    nd_rows = noisy_ratings(rng, 6, 3, 4)
    for i, row in enumerate(nd_rows):  # 3 scores and one ND: 3 raters once ND is dropped
        votes[f"N{i}"] = {**{f"r{j}": int(v) for j, v in enumerate(row)}, "r3": None}
    with_nd = fleiss_from_votes(votes)
    assert (with_nd.n_subjects, with_nd.n_raters) == (36, 4)
    all_rows = np.vstack([ratings, np.column_stack([nd_rows, np.full(6, 4)])])
    assert same(with_nd.kappa, sm_kappa(aggregate_raters(all_rows, n_cat=5)[0]))
    without = fleiss_from_votes(votes, exclude_nd=True)
    assert (without.n_subjects, without.n_raters, without.n_skipped) == (30, 4, 6)
    assert same(without.kappa, sm_kappa(aggregate_raters(ratings, n_cat=4)[0]))


def test_fleiss_from_votes_edge_cases() -> None:
    empty = fleiss_from_votes({})
    assert math.isnan(empty.kappa) and empty.n_subjects == 0
    lonely = fleiss_from_votes({"a": {"r1": 1}, "b": {"r2": 2}})
    assert math.isnan(lonely.kappa) and (lonely.n_subjects, lonely.n_skipped) == (0, 2)
    unanimous = fleiss_from_votes({c: {"r1": 3, "r2": 3} for c in "abc"})
    assert math.isnan(unanimous.kappa) and unanimous.n_subjects == 3
    with pytest.raises(ValueError, match="unknown vote category"):
        fleiss_from_votes({"a": {"r1": 7, "r2": 1}})


# --------------------------------------------------------------------------- pairwise


def random_votes(rng: np.random.Generator, n_cores: int, raters: list[str]) -> dict[str, dict]:
    votes: dict[str, dict] = {}
    for i in range(n_cores):
        truth = int(rng.integers(0, 4))
        by_rater: dict[str, int | None] = {}
        for r in raters:
            if rng.random() < 0.2:
                continue  # this rater did not see the core
            if rng.random() < 0.07:
                by_rater[r] = None
            else:
                by_rater[r] = int(np.clip(truth + rng.choice([-1, 0, 0, 1]), 0, 3))
        votes[f"C{i}"] = by_rater
    return votes


@pytest.mark.parametrize("weights", WEIGHTS)
def test_pairwise_cohen_matches_sklearn(weights: Any) -> None:
    rng = np.random.default_rng(5)
    raters = ["ann", "bob", "cem", "dee"]
    votes = random_votes(rng, 150, raters)
    pairs = pairwise_cohen(votes, weights=weights)
    assert [(p.rater_a, p.rater_b) for p in pairs] == [
        (a, b) for i, a in enumerate(raters) for b in raters[i + 1 :]
    ]
    for p in pairs:
        shared = [v for v in votes.values() if p.rater_a in v and p.rater_b in v]
        if weights is not None:  # ND is dropped for weighted kappa
            shared = [v for v in shared if v[p.rater_a] is not None and v[p.rater_b] is not None]
            labels = [0, 1, 2, 3]
            xs = [v[p.rater_a] for v in shared]
            ys = [v[p.rater_b] for v in shared]
        else:  # ND as a fifth category, coded 4 for sklearn
            labels = [0, 1, 2, 3, 4]
            xs = [4 if v[p.rater_a] is None else v[p.rater_a] for v in shared]
            ys = [4 if v[p.rater_b] is None else v[p.rater_b] for v in shared]
        assert p.n == len(shared) > 0
        assert same(p.kappa, sk_kappa(xs, ys, weights=weights, labels=labels))


def test_pairwise_cohen_no_shared_cores_and_rater_subset() -> None:
    votes: dict[str, dict[str, int | None]] = {
        "a": {"x": 1, "y": 2},
        "b": {"z": 3, "x": 3},
        "c": {"y": None, "z": 2},
    }
    pairs = {(p.rater_a, p.rater_b): p for p in pairwise_cohen(votes, ["x", "y", "z"])}
    # x-y share core a; y-z share only core c where y voted ND (dropped when weighted)
    assert pairs[("y", "z")].n == 0 and math.isnan(pairs[("y", "z")].kappa)
    assert pairs[("x", "y")].n == 1
    assert len(pairwise_cohen(votes, ["x"])) == 0
    assert [(p.rater_a, p.rater_b) for p in pairwise_cohen(votes, ["z", "x"])] == [("z", "x")]


# --------------------------------------------------------------------------- consensus


def test_agreement_with_consensus_hand_built() -> None:
    votes: dict[str, dict[str, int | None]] = {
        "c1": {"ann": 0, "bob": 1, "cem": 0},
        "c2": {"ann": 2, "bob": 2, "cem": None},
        "c3": {"ann": 3, "bob": 1},
        "c4": {"ann": 1, "bob": 1, "cem": 1},  # not in consensus (e.g. excluded): ignored
        "c5": {"dan": 2},  # dan voted only on an unlabelled core
    }
    consensus = {"c1": 0, "c2": 2, "c3": 3}
    rows = agreement_with_consensus(votes, consensus)
    assert list(rows) == ["ann", "bob", "cem", "dan"]
    # ann: 3 labelled cores, all agree
    assert rows["ann"] == AgreementRow(n=3, agree=3, rate=1.0, within_one_rate=1.0)
    # bob: c1 off by one, c2 agrees, c3 off by two
    assert rows["bob"] == AgreementRow(n=3, agree=1, rate=1 / 3, within_one_rate=2 / 3)
    # cem: c1 agrees, ND on c2 counts as a disagreement and is not within one
    assert rows["cem"] == AgreementRow(n=2, agree=1, rate=0.5, within_one_rate=0.5)
    assert rows["dan"].n == 0 and math.isnan(rows["dan"].rate)
    assert math.isnan(rows["dan"].within_one_rate)


# --------------------------------------------------------------------------- summary


def test_summarize_is_json_and_consistent() -> None:
    rng = np.random.default_rng(8)
    votes = random_votes(rng, 80, ["ann", "bob", "cem"])
    consensus = {
        c: max(v for v in by.values() if v is not None)
        for c, by in list(votes.items())[:50]
        if any(v is not None for v in by.values())
    }
    statuses = {"agreed": 45, "needs_adjudication": 7, "custom": 1}
    summary = summarize(votes, consensus, statuses)
    text = json.dumps(summary, allow_nan=False)  # no NaN may leak into JSON
    assert json.loads(text) == summary

    fl = fleiss_from_votes(votes)
    assert summary["fleiss"]["n_subjects"] == fl.n_subjects
    assert same(summary["fleiss"]["kappa"], fl.kappa)
    pairs = pairwise_cohen(votes)
    assert [p["n"] for p in summary["pairwise_cohen"]["pairs"]] == [p.n for p in pairs]
    assert summary["pairwise_cohen"]["nd_excluded"] is True
    assert summary["n_votes"] == sum(len(v) for v in votes.values())
    assert sum(summary["vote_counts"].values()) == summary["n_votes"]
    assert summary["vote_counts"]["ND"] == sum(
        1 for by in votes.values() for v in by.values() if v is None
    )
    assert summary["score_counts"] == {
        lab: sum(1 for s in consensus.values() if s == k)
        for k, lab in enumerate(("0", "1+", "2+", "3+"))
    }
    for status in LabelStatus:
        assert summary["status_counts"][str(status)] == statuses.get(str(status), 0)
    assert summary["status_counts"]["custom"] == 1
    rows = agreement_with_consensus(votes, consensus)
    assert {r: a["agree"] for r, a in summary["agreement_with_consensus"].items()} == {
        r: row.agree for r, row in rows.items()
    }

    table = format_stats_table(summary)
    for rater in ("ann", "bob", "cem"):
        assert rater in table
    assert f"{fl.kappa:.3f}" in table
    assert "needs_adjudication" in table


def test_summarize_empty_has_no_nan() -> None:
    summary = summarize({}, {}, {})
    json.dumps(summary, allow_nan=False)
    assert summary["fleiss"]["kappa"] is None
    assert summary["pairwise_cohen"]["pairs"] == []
    text = format_stats_table(summary)
    assert "Fleiss" in text and "fewer than two raters" in text
