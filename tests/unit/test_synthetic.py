"""Synthetic IHC cores, simulated pathologist votes and the data set writer."""

from __future__ import annotations

import csv
import itertools
import math
from collections import Counter, defaultdict
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from her2ops.imaging.stains import RGB_FROM_HED, dab_od, hed_to_rgb, membrane_dab_od, rgb_to_hed
from her2ops.platform.protocol import LabelStatus, Round, Vote, resolve_votes
from her2ops.scores import ND, SCORE_LABELS, parse_vote
from her2ops.synthetic.dataset import CLASS_PRIOR, generate_dataset, plan_dataset, synth_core
from her2ops.synthetic.votes import (
    ADJUDICATOR,
    ARTEFACT_ND_RATE,
    PATHOLOGIST_CONFUSION,
    PATHOLOGISTS,
    VOTE_LABELS,
    pairwise_agreement,
    simulate_votes,
    status_counts,
)

_AT = datetime(2024, 1, 1)


def _core(score: int, seed: int, **kw: object) -> tuple[np.ndarray, dict]:
    kw.setdefault("heterogeneity", 0.0)
    kw.setdefault("minor_artefacts", False)
    return synth_core(score, size=256, rng=np.random.default_rng(seed), return_masks=True, **kw)  # type: ignore[arg-type]


# --- stains --------------------------------------------------------------------------------------


def test_beer_lambert_round_trip_recovers_stain_concentrations() -> None:
    rng = np.random.default_rng(0)
    hed = rng.uniform(0.0, 0.8, (64, 64, 3)).astype(np.float32)
    back = rgb_to_hed(hed_to_rgb(hed))
    # uint8 quantisation only (half a grey level, amplified by the deconvolution)
    assert np.abs(back - hed).max() < 0.05


def test_dab_matches_skimage_colour_deconvolution() -> None:
    from skimage.color import rgb2hed

    rgb = _core(3, 1)[0]
    ours = np.maximum(dab_od(rgb), 0)
    theirs = rgb2hed(rgb)[..., 2] * -np.log(1e-6)  # skimage scales by ln(1e6)
    assert np.allclose(ours, theirs, atol=0.01)


def test_pure_dab_renders_brown() -> None:
    hed = np.zeros((1, 1, 3), dtype=np.float32)
    hed[..., 2] = 1.5
    r, g, b = hed_to_rgb(hed)[0, 0].astype(int)
    assert r > g > b  # brown: red transmits most
    assert np.allclose(hed_to_rgb(hed)[0, 0], 255 * np.exp(-1.5 * RGB_FROM_HED[2]), atol=1)


# --- cores ---------------------------------------------------------------------------------------


def test_membrane_dab_od_rises_with_class() -> None:
    per_class = []
    for score in range(4):
        values = []
        for seed in range(3):
            img, truth = _core(score, 100 * score + seed)
            measured = membrane_dab_od(img, truth["membrane_mask"])
            assert measured == pytest.approx(truth["mean_membrane_od"])
            values.append(measured)
        per_class.append(values)
    # every core of a class above every core of the class below: classes are separable
    for lower, upper in itertools.pairwise(per_class):
        assert min(upper) > max(lower), per_class


def test_positive_fraction_follows_asco_cap() -> None:
    fractions = {s: [_core(s, 10 + i)[1]["positive_fraction"] for i in range(3)] for s in range(4)}
    assert max(fractions[0]) <= 0.10
    for s in (1, 2, 3):
        assert min(fractions[s]) > 0.10


def test_membranes_darker_than_cytoplasm_in_positive_cores() -> None:
    img, truth = _core(2, 5)
    dab = dab_od(img)
    tissue_not_membrane = truth["tissue_mask"] & ~truth["membrane_mask"]
    assert dab[truth["membrane_mask"]].mean() > 2 * dab[tissue_not_membrane].mean()


def test_core_is_round_tissue_on_white_glass() -> None:
    img, truth = _core(1, 3)
    assert img.shape == (256, 256, 3) and img.dtype == np.uint8
    assert 0.3 < truth["tissue_fraction"] < 0.75
    corners = np.concatenate([img[:8, :8], img[:8, -8:], img[-8:, :8], img[-8:, -8:]])
    assert corners.mean() > 240
    assert truth["tissue_mask"][128 - 20 : 128 + 20, 128 - 20 : 128 + 20].mean() > 0.5


def test_same_seed_same_core_other_seed_other_core() -> None:
    a = synth_core(2, size=128, rng=np.random.default_rng(7))[0]
    b = synth_core(2, size=128, rng=np.random.default_rng(7))[0]
    c = synth_core(2, size=128, rng=np.random.default_rng(8))[0]
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_heterogeneous_core_keeps_its_dominant_class() -> None:
    _, truth = _core(3, 21, heterogeneity=0.3)
    assert truth["heterogeneous_class"] == 2
    pure = [_core(2, 30 + i)[1]["mean_membrane_od"] for i in range(2)]
    # still a 3+ core: membranes darker than pure 2+ cores
    assert truth["mean_membrane_od"] > max(pure)


def test_artefact_cores() -> None:
    normal = _core(2, 40)[1]
    _, pale = _core(2, 40, artefact="pale")
    assert pale["mean_membrane_od"] < 0.5 * normal["mean_membrane_od"]
    assert pale["tissue_fraction"] < normal["tissue_fraction"]
    debris_img, _ = _core(0, 41, artefact="debris")
    # dark particles: far more near-black pixels than in a clean core
    clean_img, _ = _core(0, 41)
    assert (debris_img.max(axis=-1) < 80).sum() > 10 * max(1, (clean_img.max(axis=-1) < 80).sum())
    with pytest.raises(ValueError):
        synth_core(2, size=64, rng=np.random.default_rng(0), artefact="smudge")
    with pytest.raises(ValueError):
        synth_core(4, size=64, rng=np.random.default_rng(0))


def test_large_cores_are_rendered_small_and_upsampled() -> None:
    img, truth = synth_core(3, size=300, rng=np.random.default_rng(0), max_render=128)
    assert img.shape == (300, 300, 3)
    assert truth["render_size"] == 128
    # the upsampled core still carries its staining
    assert dab_od(img)[img.min(axis=-1) < 200].mean() > 0.3


# --- votes ---------------------------------------------------------------------------------------


def test_confusion_matrices_are_plausible() -> None:
    for m in PATHOLOGIST_CONFUSION.values():
        assert m.shape == (4, 5)
        assert np.allclose(m.sum(axis=1), 1.0)
        for t in range(4):
            far = sum(m[t, v] for v in range(4) if abs(v - t) > 1)
            near = sum(m[t, v] for v in range(4) if abs(v - t) == 1)
            assert m[t, t] > 0.7 and near > 3 * far
        # more confusion between 0 and 1+ and between 2+ and 3+ than between 1+ and 2+
        assert m[0, 1] + m[1, 0] > m[1, 2] + m[2, 1]
        assert m[2, 3] + m[3, 2] > m[1, 2] + m[2, 1]


def _simulate(n_per_class: int, seed: int, artefact: str | None = None):  # type: ignore[no-untyped-def]
    truth = [t for t in range(4) for _ in range(n_per_class)]
    cores = [f"C{i}" for i in range(len(truth))]
    return truth, simulate_votes(cores, truth, [artefact] * len(truth), np.random.default_rng(seed))


def test_votes_disagree_at_the_intended_rates() -> None:
    n = 1500
    truth, results = _simulate(n, seed=3)
    counts: dict[str, np.ndarray] = {p: np.zeros((4, 5)) for p in PATHOLOGISTS}
    for t, r in zip(truth, results, strict=True):
        for v in r.votes:
            if v.round == Round.INITIAL.value:
                counts[v.pathologist][t, VOTE_LABELS.index(v.score)] += 1
    for name, m in PATHOLOGIST_CONFUSION.items():
        emp = counts[name] / n
        sigma = np.sqrt(m * (1 - m) / n)
        # binomial tolerance: 4.5 sigma per cell (40 cells per pathologist), plus rounding slack
        assert np.all(np.abs(emp - m) <= 4.5 * sigma + 1e-3), (name, emp.round(3), m)


def test_pairwise_agreement_is_realistic() -> None:
    rng = np.random.default_rng(4)
    truth = rng.choice(4, size=3000, p=CLASS_PRIOR).tolist()
    results = simulate_votes([f"C{i}" for i in range(3000)], truth, [None] * 3000, rng)
    assert 0.70 <= pairwise_agreement(results) <= 0.85


def test_artefact_cores_get_nd_votes_and_are_excluded() -> None:
    n = 400
    _, results = _simulate(n, seed=5, artefact="fold")
    nd = Counter(v.pathologist for r in results for v in r.votes if v.score == ND)
    for name, rate in ARTEFACT_ND_RATE.items():
        share = nd[name] / (4 * n)
        tol = 4.5 * math.sqrt(rate * (1 - rate) / (4 * n)) + 0.01  # + ND from the matrix row
        assert abs(share - rate) <= tol
    assert status_counts(results)["excluded"] / (4 * n) > 0.95


def test_adjudication_exactly_where_the_protocol_needs_it() -> None:
    _, results = _simulate(500, seed=6)
    seen: Counter[LabelStatus] = Counter()
    for r in results:
        initial = [v for v in r.votes if v.round == Round.INITIAL.value]
        adjudication = [v for v in r.votes if v.round == Round.ADJUDICATION.value]
        assert len(initial) == 5
        votes = [
            Vote(v.pathologist, parse_vote(v.score), Round(v.round), _AT, i)
            for i, v in enumerate(initial)
        ]
        needs = resolve_votes(votes).status is LabelStatus.NEEDS_ADJUDICATION
        assert bool(adjudication) == needs
        if adjudication:
            assert [v.pathologist for v in adjudication] == [ADJUDICATOR]
        seen[r.resolution.status] += 1
    assert seen[LabelStatus.AGREED] > 0 and seen[LabelStatus.ADJUDICATED] > 0
    assert seen[LabelStatus.NEEDS_ADJUDICATION] == 0


# --- data set ------------------------------------------------------------------------------------


def test_plan_follows_class_prior_and_patient_rules() -> None:
    plans = plan_dataset(patients=2000, cores=4000, rng=np.random.default_rng(0))
    assert len(plans) == 4000
    per_patient = Counter(p.patient for p in plans)
    assert set(per_patient.values()) <= {1, 2, 3}
    sites = defaultdict(set)
    for p in plans:
        sites[p.patient].add(p.site)
    assert all(len(s) == 1 for s in sites.values())
    share = np.bincount([p.score for p in plans], minlength=4) / len(plans)
    assert np.abs(share - np.array(CLASS_PRIOR)).max() < 0.05
    arts = sum(p.artefact is not None for p in plans)
    assert arts == round(0.05 * 4000)
    assert len({(p.slide, p.row, p.col) for p in plans}) == 4000
    with pytest.raises(ValueError):
        plan_dataset(patients=3, cores=10, rng=np.random.default_rng(0))


def _read(path: Path) -> list[dict[str, str]]:
    with path.open() as fh:
        return list(csv.DictReader(fh))


def test_generate_dataset_writes_consistent_files(tmp_path: Path) -> None:
    out = tmp_path / "ds"
    summary = generate_dataset(out, patients=8, cores=16, size=96, seed=11, contact_sheet=True)
    manifest = _read(out / "manifest.csv")
    truth = _read(out / "truth.csv")
    votes = _read(out / "votes.csv")
    assert list(manifest[0]) == ["patient", "core", "image", "slide", "row", "col", "site"]
    assert list(votes[0]) == ["core", "pathologist", "score", "round", "comment"]
    assert len(manifest) == len(truth) == summary.cores == 16
    for row in manifest:
        img = Image.open(out / row["image"])
        assert img.size == (96, 96)
        assert row["patient"].startswith("P") and row["core"].startswith("C")
        assert row["site"] in ("site-A", "site-B")
    assert {r["true_score"] for r in truth} <= set(SCORE_LABELS)
    by_core: dict[str, list[dict[str, str]]] = defaultdict(list)
    for v in votes:
        parse_vote(v["score"])
        by_core[v["core"]].append(v)
    assert set(by_core) == {r["core"] for r in manifest}
    for rows in by_core.values():
        initial = [v["pathologist"] for v in rows if v["round"] == "initial"]
        assert initial == list(PATHOLOGISTS)
    assert (out / "contact_sheet.png").is_file()
    assert sum(summary.consensus.values()) == 16


def test_generate_dataset_is_deterministic(tmp_path: Path) -> None:
    kw = {"patients": 3, "cores": 5, "size": 64}
    generate_dataset(tmp_path / "a", seed=1, **kw)  # type: ignore[arg-type]
    generate_dataset(tmp_path / "b", seed=1, **kw)  # type: ignore[arg-type]
    generate_dataset(tmp_path / "c", seed=2, **kw)  # type: ignore[arg-type]
    for name in ("manifest.csv", "votes.csv", "truth.csv", "cores/C00001.png"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert (tmp_path / "a" / "cores/C00001.png").read_bytes() != (
        tmp_path / "c" / "cores/C00001.png"
    ).read_bytes()
