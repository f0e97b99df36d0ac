"""Per-core ambiguity and injected consensus label errors of the synthetic data sets."""

from __future__ import annotations

import csv
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from her2ops.platform.protocol import Round, Vote, resolve_votes
from her2ops.scores import SCORE_LABELS, parse_vote
from her2ops.synthetic.dataset import generate_dataset
from her2ops.synthetic.votes import pairwise_agreement, simulate_votes

_AT = datetime(2024, 1, 1, tzinfo=UTC)


def _read(path: Path) -> list[dict[str, str]]:
    with path.open() as fh:
        return list(csv.DictReader(fh))


def test_ambiguous_cores_split_the_pathologists() -> None:
    n = 1500
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 4, n)
    neighbour = [int(t + 1) if t < 3 else 2 for t in truth]
    cores = [f"c{i}" for i in range(n)]
    clear = simulate_votes(cores, truth, [None] * n, np.random.default_rng(1))
    ambiguous = simulate_votes(
        cores,
        truth,
        [None] * n,
        np.random.default_rng(1),
        ambiguous_with=neighbour,
        ambiguity=[1.0] * n,
    )
    assert pairwise_agreement(ambiguous) < pairwise_agreement(clear) - 0.15
    # ambiguity 0 reproduces the clear votes exactly
    same = simulate_votes(
        cores,
        truth,
        [None] * n,
        np.random.default_rng(1),
        ambiguous_with=neighbour,
        ambiguity=[0.0] * n,
    )
    assert [r.votes for r in same] == [r.votes for r in clear]


def test_borderline_cores_move_their_stain_toward_the_neighbour(tmp_path: Path) -> None:
    kw = {"patients": 20, "cores": 30, "size": 64, "seed": 4}
    generate_dataset(tmp_path / "clear", **kw)  # type: ignore[arg-type]
    generate_dataset(tmp_path / "amb", ambiguity=1.0, **kw)  # type: ignore[arg-type]
    clear = {r["core"]: r for r in _read(tmp_path / "clear" / "truth.csv")}
    amb = _read(tmp_path / "amb" / "truth.csv")
    borderline = [r for r in amb if r["ambiguity"] == "borderline"]
    assert borderline, "ambiguity 1.0 must make some borderline cores"
    for row in borderline:
        up = SCORE_LABELS.index(row["ambiguous_with"]) > SCORE_LABELS.index(row["true_score"])
        before = float(clear[row["core"]]["mean_membrane_od"])
        after = float(row["mean_membrane_od"])
        assert (after > before) if up else (after < before), row
    hetero = [r for r in amb if r["ambiguity"] == "heterogeneous"]
    assert all(r["heterogeneous_class"] == r["ambiguous_with"] for r in hetero)
    assert all(r["ambiguity"] == "" for r in amb if r["artefact"])


def test_label_errors_are_injected_recorded_and_follow_from_the_votes(tmp_path: Path) -> None:
    out = tmp_path / "ds"
    summary = generate_dataset(out, patients=30, cores=60, size=64, seed=2, label_errors=0.25)
    truth = _read(out / "truth.csv")
    labelled = [r for r in truth if r["consensus_status"] in ("agreed", "adjudicated")]
    errors = [r for r in truth if r["label_error"] == "1"]
    assert summary.label_errors == len(errors) == round(0.25 * len(labelled))
    votes: dict[str, list[Vote]] = defaultdict(list)
    for i, v in enumerate(_read(out / "votes.csv")):
        votes[v["core"]].append(
            Vote(v["pathologist"], parse_vote(v["score"]), Round(v["round"]), _AT, order=i)
        )
    for row in errors:
        true = SCORE_LABELS.index(row["true_score"])
        wrong = SCORE_LABELS.index(row["consensus_score"])
        assert abs(true - wrong) == 1 and row["consensus_status"] == "agreed"
        res = resolve_votes(votes[row["core"]])
        assert res.score is not None and int(res.score) == wrong


def test_bad_rates_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="label_errors"):
        generate_dataset(tmp_path / "x", patients=2, cores=2, size=64, seed=0, label_errors=1.5)
