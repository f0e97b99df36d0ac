"""The N/k study: the exact method against a brute-force simulation of the protocol."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import her2ops.cli.model  # noqa: F401  (registers the study command)
from her2ops.cli._app import app
from her2ops.models.inference import kcs_decision
from her2ops.models.study import (
    ExactKCS,
    compare_confidences,
    parse_int_list,
    poisson_binomial_pmf,
    run_study,
    study_headline,
)


def _outputs(cores: int, m: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Set outputs on a coarse grid (multiples of 1/8) so that confidences tie often."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 4, cores)
    probs = np.zeros((cores, m, 4))
    for c in range(cores):
        for i in range(m):
            parts = rng.multinomial(8, rng.dirichlet(np.ones(4) + 3 * np.eye(4)[labels[c]]))
            probs[c, i] = parts / 8.0
    return probs, labels


def _brute_finals(
    probs: np.ndarray,
    n: int,
    k: int,
    trials: int,
    rng: np.random.Generator,
    confidence: str = "margin",
    replace: bool = False,
) -> np.ndarray:
    """finals[trial, core] by drawing N outputs (a subset, or i.i.d. with ``replace``) and
    running kcs_decision on them with KCS size min(k, N)."""
    cores, m = probs.shape[:2]
    out = np.zeros((trials, cores), dtype=np.int64)
    for c in range(cores):
        for t in range(trials):
            # sorted: the drawn outputs keep their original order, so ties break the same way
            subset = np.sort(rng.choice(m, n, replace=replace))
            out[t, c] = kcs_decision(probs[c, subset], min(k, n), confidence).final
    return out


def _assert_matches(fp: np.ndarray, finals: np.ndarray, what: object) -> None:
    trials, cores = finals.shape
    emp = np.stack([np.bincount(finals[:, c], minlength=4) / trials for c in range(cores)])
    sd = np.sqrt(fp * (1 - fp) / trials) + 1e-9
    assert np.all(np.abs(emp - fp) <= 5 * sd + 1e-3), (what, fp, emp)


def test_parse_int_list() -> None:
    assert parse_int_list("1..5,30,50, 100") == [1, 2, 3, 4, 5, 30, 50, 100]
    assert parse_int_list("3,1..2,3") == [1, 2, 3]
    for bad in ("", "a", "5..1", "0,1", "1-3"):
        with pytest.raises(ValueError):
            parse_int_list(bad)


@pytest.mark.parametrize("confidence", ["margin", "max"])
def test_exact_final_distribution_matches_brute_force(confidence: str) -> None:
    probs, _ = _outputs(cores=3, m=9, seed=1)
    exact = ExactKCS(probs, confidence)
    rng = np.random.default_rng(2)
    trials = 2500
    for n, k in [(1, 1), (4, 2), (6, 3), (9, 3), (5, 5)]:
        fp = exact.final_probs([n], k)[0]
        assert fp.shape == (3, 4)
        np.testing.assert_allclose(fp.sum(axis=1), 1.0)
        _assert_matches(fp, _brute_finals(probs, n, k, trials, rng, confidence), (n, k))


@pytest.mark.parametrize("confidence", ["margin", "range"])
def test_exact_with_replacement_matches_brute_force(confidence: str) -> None:
    probs, _ = _outputs(cores=3, m=7, seed=11)
    exact = ExactKCS(probs, confidence)
    rng = np.random.default_rng(12)
    trials = 2500
    # N > M is possible with replacement; N < k uses KCS = all N draws
    for n, k in [(1, 1), (3, 2), (7, 3), (12, 4), (2, 5), (4, 5)]:
        fp = exact.final_probs([n], k, replace=True)[0]
        np.testing.assert_allclose(fp.sum(axis=1), 1.0)
        _assert_matches(fp, _brute_finals(probs, n, k, trials, rng, confidence, True), (n, k))


def test_n_below_k_uses_all_n_sets_exactly() -> None:
    """N < k: the final is the max class of the N drawn sets (k' = N), checked two ways."""
    probs, _ = _outputs(cores=3, m=8, seed=13)
    exact = ExactKCS(probs)
    fp = exact.final_probs([1, 2, 3, 4], 5)
    for i, n in enumerate([1, 2, 3, 4]):
        np.testing.assert_allclose(fp[i], exact.final_probs([n], n)[0], atol=1e-12)
    # N = 1: the final is one uniformly drawn output's class (hand count)
    cls = probs.argmax(axis=2)
    hand = np.stack([np.bincount(cls[c], minlength=4) / 8 for c in range(3)])
    np.testing.assert_allclose(fp[0], hand, atol=1e-12)
    # N = 2: max class over the 28 pairs, enumerated
    pairs = [(i, j) for i in range(8) for j in range(i + 1, 8)]
    hand2 = np.zeros((3, 4))
    for c in range(3):
        for i, j in pairs:
            hand2[c, max(cls[c, i], cls[c, j])] += 1 / len(pairs)
    np.testing.assert_allclose(fp[1], hand2, atol=1e-12)
    _assert_matches(fp[3], _brute_finals(probs, 4, 5, 2000, np.random.default_rng(14)), "N<k")


def test_with_replacement_by_hand() -> None:
    """M = 2 outputs, N = 2 i.i.d. draws, k = 1: the final is the class of the more confident
    output if it is drawn at all (probability 3/4), else the other's."""
    probs = np.array([[[0.1, 0.1, 0.7, 0.1], [0.4, 0.3, 0.2, 0.1]]])  # margins .6 and .1
    fp = ExactKCS(probs).final_probs([2], 1, replace=True)[0, 0]
    np.testing.assert_allclose(fp, [0.25, 0.0, 0.75, 0.0], atol=1e-12)
    # k = 2 = N: max class of both draws: class 2 unless both draws are output 1 (1/4)
    fp = ExactKCS(probs).final_probs([2], 2, replace=True)[0, 0]
    np.testing.assert_allclose(fp, [0.25, 0.0, 0.75, 0.0], atol=1e-12)
    # without replacement N = 2 takes both outputs: always class 2
    fp = ExactKCS(probs).final_probs([2], 1)[0, 0]
    np.testing.assert_allclose(fp, [0.0, 0.0, 1.0, 0.0], atol=1e-12)


def test_all_outputs_is_deterministic() -> None:
    probs, _ = _outputs(cores=4, m=7, seed=3)
    fp = ExactKCS(probs).final_probs([7], 3)[0]
    for c in range(4):
        expected = kcs_decision(probs[c], 3).final
        np.testing.assert_allclose(fp[c], np.eye(4)[expected], atol=1e-12)


def test_poisson_binomial_pmf_matches_enumeration() -> None:
    p = np.array([0.2, 0.5, 0.9])
    pmf = poisson_binomial_pmf(p)[0]
    ref = np.zeros(4)
    for bits in range(8):
        hits = [(bits >> i) & 1 for i in range(3)]
        ref[sum(hits)] += np.prod([pi if h else 1 - pi for pi, h in zip(p, hits, strict=True)])
    np.testing.assert_allclose(pmf, ref)


def test_study_distribution_agrees_with_simulated_draws() -> None:
    probs, labels = _outputs(cores=6, m=10, seed=4)
    draws = 1500
    res = run_study(
        probs,
        labels,
        n_values=[3, 8],
        k_values=[2],
        draws=draws,
        seed=0,
        k_at=2,
        n_at=8,
        cm_points=[(8, 2)],
    )
    rng = np.random.default_rng(5)
    for pt in res.vs_n:
        finals = _brute_finals(probs, pt.n, 2, draws, rng)
        acc = (finals == labels[None, :]).mean(axis=1)
        assert abs(acc.mean() - pt.mean) < 5 * acc.std() / np.sqrt(draws) + 1e-3
        # median of 1500 draws of a 6-core accuracy: within one core of the brute-force median
        assert abs(np.median(acc) - pt.median) <= 1 / 6 + 1e-9
        assert pt.min <= pt.median <= pt.max
        assert abs(acc.min() - pt.min) <= 1 / 6 + 1e-9 and abs(acc.max() - pt.max) <= 1 / 6 + 1e-9
    cm = res.confusion[0]
    expected = np.array(cm.expected)
    np.testing.assert_allclose(expected.sum(axis=1), np.bincount(labels, minlength=4))
    assert np.isclose(np.trace(expected) / len(labels), res.vs_n[1].mean)
    for name in ("min", "median", "max"):
        m = np.array(cm.draws[name]["matrix"])
        assert m.sum() == 6 and np.trace(m) / 6 == pytest.approx(cm.draws[name]["accuracy"])
    assert cm.draws["min"]["accuracy"] == res.vs_n[1].min  # curve and matrices agree


def test_points_with_n_below_k_exist_and_n_above_m_are_skipped() -> None:
    probs, labels = _outputs(cores=3, m=6, seed=6)
    res = run_study(
        probs, labels, n_values=[1, 2, 3, 6, 7], k_values=[1, 3, 6], draws=50, k_at=2, n_at=3
    )
    assert [p.n for p in res.vs_n] == [1, 2, 3, 6]
    assert [p.kcs for p in res.vs_n] == [1, 2, 2, 2]
    assert [(p.k, p.kcs) for p in res.vs_k] == [(1, 1), (3, 3), (6, 3)]
    reasons = {(s["n"], s["k"]): s["reason"] for s in res.skipped}
    # (20, 2) is the default confusion point, also beyond M
    assert set(reasons) == {(7, 2), (20, 2)} and all("N > M" in r for r in reasons.values())
    assert res.sampling == "without replacement" and "WITHOUT replacement" in res.assumption
    json.dumps(res.to_dict())
    # with replacement N > M is a valid point
    rep = run_study(
        probs, labels, n_values=[7], k_values=[1], draws=50, k_at=2, n_at=7, replace=True
    )
    assert [p.n for p in rep.vs_n] == [7] and not rep.skipped
    assert rep.sampling == "with replacement" and "WITH replacement" in rep.assumption


@pytest.mark.parametrize("draws", [1000, 1001])
def test_curve_median_and_median_matrix_are_the_same_draw(draws: int) -> None:
    probs, labels = _outputs(cores=7, m=10, seed=21)
    res = run_study(
        probs,
        labels,
        n_values=[4, 8],
        k_values=[2],
        draws=draws,
        k_at=2,
        n_at=8,
        cm_points=[(4, 2)],
    )
    pt, cm = res.vs_n[0], res.confusion[0]
    med = cm.draws["median"]
    assert pt.median == med["accuracy"] == np.trace(np.array(med["matrix"])) / 7
    assert pt.min == cm.draws["min"]["accuracy"] and pt.max == cm.draws["max"]["accuracy"]
    # the median of every curve point is a possible accuracy (k/7), never a mean of two draws
    for p in res.vs_n + res.vs_k:
        assert np.isclose(p.median * 7, round(p.median * 7))


def test_headline_metrics_at_median_draw_and_mean_over_draws() -> None:
    probs, labels = _outputs(cores=8, m=10, seed=31)
    draws = 3000
    res = run_study(
        probs, labels, n_values=[5], k_values=[2], draws=draws, k_at=2, n_at=5, cm_points=[(5, 2)]
    )
    head = study_headline(res, single_accuracy=res.vs_n[0].median, single_seed=0, n=5, k=2)
    assert head is not None
    cm = res.confusion[0]
    med = np.array(cm.draws["median"]["matrix"])
    acc = head["accuracy"]
    assert acc["median"] == np.trace(med) / 8 and acc["min"] <= acc["median"] <= acc["max"]
    assert acc["mean"] == pytest.approx(np.trace(np.array(cm.expected)) / 8, abs=1e-6)
    # at the median draw: sensitivity and specificity of class c by hand from its matrix
    for c, name in enumerate(("0", "1+", "2+", "3+")):
        row, col = med[c].sum(), med[:, c].sum()
        sens = head["at_median_draw"]["sensitivity"][name]
        assert sens == (pytest.approx(med[c, c] / row) if row else None)
        spec = head["at_median_draw"]["specificity"][name]
        neg = 8 - row
        assert spec == (pytest.approx((neg - (col - med[c, c])) / neg) if neg else None)
    # mean over draws of the sensitivity = expected TP / support (the support is fixed)
    expected = np.array(cm.expected)
    for c, name in enumerate(("0", "1+", "2+", "3+")):
        if expected[c].sum() > 0:
            got = head["mean_over_draws"]["sensitivity"][name]
            se = 0.5 / np.sqrt(draws)
            assert got == pytest.approx(expected[c, c] / expected[c].sum(), abs=5 * se)
    # the percentile of the median draw is near 50; of an impossible 0 % it is 0
    assert 20 <= head["single_draw"]["percentile"] <= 80
    assert study_headline(res, single_accuracy=0.0, n=5, k=2)["single_draw"]["percentile"] == (
        pytest.approx(100 * 0.5 * cm.count_pmf[0])
    )
    assert study_headline(res, n=20, k=5) is None
    json.dumps(head)


def test_percentile_by_hand() -> None:
    """Two cores right with probability 1/2 each: 0, 1, 2 correct with 1/4, 1/2, 1/4."""
    from her2ops.models.study import ConfusionPoint

    cp = ConfusionPoint(1, 1, [], {}, {}, [0.25, 0.5, 0.25])
    assert cp.percentile(0.0, 2) == pytest.approx(12.5)
    assert cp.percentile(0.5, 2) == pytest.approx(50.0)
    assert cp.percentile(1.0, 2) == pytest.approx(87.5)


def test_compare_confidences_rows() -> None:
    probs, labels = _outputs(cores=6, m=12, seed=41)
    rows = compare_confidences(probs, labels, n=6, k=2, draws=500)
    assert [r["confidence"] for r in rows] == ["margin", "max", "range", "std", "entropy"]
    for r in rows:
        ref = run_study(
            probs,
            labels,
            n_values=[6],
            k_values=[],
            draws=10,
            k_at=2,
            n_at=6,
            confidence=r["confidence"],
            cm_points=[],
        )
        assert r["mean"] == pytest.approx(ref.vs_n[0].mean)
        assert r["min"] <= r["median"] <= r["max"]


def test_cli_study(tmp_path: Path) -> None:
    probs, labels = _outputs(cores=5, m=12, seed=7)
    npz = tmp_path / "out.npz"
    np.savez(npz, probs=probs, labels=labels)
    runner = CliRunner()
    png = tmp_path / "study.png"
    r = runner.invoke(
        app,
        [
            "study",
            str(npz),
            "--n",
            "1..12",
            "--k",
            "1..4,10",
            "--n-at",
            "12",
            "--draws",
            "200",
            "--json",
            "--png",
            str(png),
        ],
    )
    assert r.exit_code == 0, r.output
    payload = json.loads(r.stdout)
    assert [p["n"] for p in payload["vs_n"]] == list(range(1, 13))
    assert [p["k"] for p in payload["vs_k"]] == [1, 2, 3, 4, 10]
    assert png.read_bytes()[:4] == b"\x89PNG"
    r = runner.invoke(
        app, ["study", str(npz), "--n", "5,6", "--k", "2", "--n-at", "12", "--draws", "50"]
    )
    assert r.exit_code == 0, r.output
    assert "accuracy vs N" in r.stdout and "confusion" in r.stdout
    r = runner.invoke(app, ["study", str(npz), "--n", "x..3"])
    assert r.exit_code == 1 and "bad list item" in r.output and "Traceback" not in r.output
    bad = tmp_path / "bad.npz"
    np.savez(bad, probs=probs)
    r = runner.invoke(app, ["study", str(bad)])
    assert r.exit_code == 1 and "'labels'" in r.output


def test_evaluation_study_summary_and_report_lines() -> None:
    from her2ops.models.study import evaluation_study, headline_metrics, study_report_lines

    probs, labels = _outputs(cores=6, m=12, seed=51)
    res, summary = evaluation_study(
        probs,
        labels,
        n=6,
        k=2,
        n_values=[1, 6, 12],
        k_values=[1, 2],
        n_at=12,
        k_at=2,
        draws=300,
        confidence="margin",
        single_accuracy=0.5,
        single_seed=0,
    )
    assert summary["headline"]["accuracy"]["median"] == res.point(6, 2).draws["median"]["accuracy"]  # type: ignore[union-attr]
    json.dumps(summary)
    text = "\n".join(study_report_lines(summary))
    assert "WITHOUT replacement" in text and "median" in text and "percentile" in text
    for name in ("margin", "max", "range", "std", "entropy"):
        assert f"    {name} " in text
    assert "adjacent pairwise accuracy 0/1+" in text and "specificity 3+" in text
    metrics = headline_metrics(summary["headline"], "test_")
    assert set(metrics) == {
        "test_study_median_accuracy",
        "test_study_mean_accuracy",
        "test_study_min_accuracy",
        "test_study_max_accuracy",
        "test_study_single_draw_percentile",
    }


def test_cli_study_with_replacement_states_the_assumption(tmp_path: Path) -> None:
    probs, labels = _outputs(cores=4, m=5, seed=61)
    npz = tmp_path / "out.npz"
    np.savez(npz, probs=probs, labels=labels)
    runner = CliRunner()
    args = ["study", str(npz), "--n", "1..8", "--k", "1..3", "--n-at", "8", "--draws", "50"]
    r = runner.invoke(app, [*args, "--with-replacement"])
    assert r.exit_code == 0, r.output
    assert "WITH replacement" in r.stdout and "skipped" not in r.stdout
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    assert "WITHOUT replacement" in r.stdout and "skipped" in r.stdout  # N = 6..8 > M = 5
