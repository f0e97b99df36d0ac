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
from her2ops.models.study import ExactKCS, parse_int_list, poisson_binomial_pmf, run_study


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
) -> np.ndarray:
    """finals[trial, core] by drawing N-subsets and running kcs_decision on them."""
    cores, m = probs.shape[:2]
    out = np.zeros((trials, cores), dtype=np.int64)
    for c in range(cores):
        for t in range(trials):
            subset = np.sort(rng.choice(m, n, replace=False))  # keep original order: same ties
            out[t, c] = kcs_decision(probs[c, subset], k, confidence).final
    return out


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
        finals = _brute_finals(probs, n, k, trials, rng, confidence)
        emp = np.stack([np.bincount(finals[:, c], minlength=4) / trials for c in range(3)])
        sd = np.sqrt(fp * (1 - fp) / trials) + 1e-9
        assert np.all(np.abs(emp - fp) <= 5 * sd + 1e-3), (n, k, fp, emp)


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


def test_points_with_k_above_n_or_n_above_m_are_skipped() -> None:
    probs, labels = _outputs(cores=3, m=6, seed=6)
    res = run_study(
        probs, labels, n_values=[1, 2, 3, 6, 7], k_values=[1, 3, 6], draws=50, k_at=2, n_at=3
    )
    assert [p.n for p in res.vs_n] == [2, 3, 6]
    assert [p.k for p in res.vs_k] == [1, 3]
    reasons = {(s["n"], s["k"]): s["reason"] for s in res.skipped}
    assert reasons[(1, 2)] == "k > N" and "N > M" in reasons[(7, 2)] and (3, 6) in reasons
    json.dumps(res.to_dict())


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
    assert [p["n"] for p in payload["vs_n"]] == list(range(5, 13))
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
