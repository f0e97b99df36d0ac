"""A small world for review-queue tests: users, cores with votes and labels, a split, a model
version and its predictions, written straight into the tables (no images, no torch)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from her2ops.platform.consensus import apply_consensus
from her2ops.platform.db import session_scope
from her2ops.platform.schema import (
    Core,
    ModelVersion,
    Patient,
    Prediction,
    Split,
    SplitAssignment,
    User,
    Vote,
)
from tests.factories import seed_users

#: core -> (patient index, initial votes of p1..p3, the model's per-set classes, confidence)
CORES: dict[str, tuple[int, tuple[str, str, str], list[int], float]] = {
    "K0-0": (0, ("1+", "1+", "1+"), [1, 1, 1, 1, 1, 1], 0.9),  # train: sure, agrees
    "K0-1": (0, ("1+", "1+", "1+"), [3, 3, 3, 3, 3, 3], 0.9),  # train: contradicts (in-sample)
    "K1-0": (1, ("2+", "2+", "1+"), [2, 1, 3, 2, 1, 0], 0.6),  # train: sets disagree
    "K1-1": (1, ("0", "0", "0"), [0, 0, 0, 0, 0, 0], 0.55),  # train: unsure
    "K2-0": (2, ("1+", "1+", "1+"), [3, 3, 3, 3, 3, 3], 0.9),  # test: contradicts the label
    "K2-1": (2, ("2+", "2+", "2+"), [2, 2, 2, 2, 2, 2], 0.95),  # test: sure, agrees
    "K3-0": (3, ("3+", "3+", "3+"), [3, 3, 2, 3, 3, 3], 0.8),  # test
    "K3-1": (3, ("ND", "ND", "ND"), [1, 2, 1, 2, 1, 2], 0.5),  # excluded: never queued
}
TEST_PATIENTS = {2, 3}


@dataclass
class World:
    pathologists: list[str]
    model_version_id: int
    core_ids: dict[str, int]


def set_probs(classes: list[int], conf: float) -> list[list[float]]:
    out = []
    for c in classes:
        row = [(1 - conf) / 3] * 4
        row[c] = conf
        out.append(row)
    return out


def build_world() -> World:
    from her2ops.models.inference import kcs_decision

    pathologists = seed_users(3)
    core_ids: dict[str, int] = {}
    with session_scope() as s:
        users = {u.username: u.id for u in s.query(User)}
        patients = []
        for p in range(4):
            row = Patient(code=f"KP{p}", site="site-A")
            s.add(row)
            patients.append(row)
        s.flush()
        for i, (code, (p, votes, _, _)) in enumerate(CORES.items()):
            core = Core(
                code=code,
                patient_id=patients[p].id,
                source_path="-",
                sha256=f"{i:064d}",
                width=64,
                height=64,
            )
            s.add(core)
            s.flush()
            core_ids[code] = core.id
            for who, score in zip(pathologists, votes, strict=True):
                s.add(Vote(core_id=core.id, user_id=users[who], score=score, round="initial"))
            core.needs_consensus = True
        split = Split(name="main", seed=0, ratios={"train": 0.5, "test": 0.5})
        s.add(split)
        s.flush()
        for p, row in enumerate(patients):
            part = "test" if p in TEST_PATIENTS else "train"
            s.add(SplitAssignment(split_id=split.id, patient_id=row.id, partition=part))
        mv = ModelVersion(
            name="her2-pss",
            version=1,
            run_id="run-1",
            profile="test",
            split_id=split.id,
            label_snapshot_hash="0" * 64,
            code_version="test",
            aliases=["champion"],
        )
        s.add(mv)
        s.flush()
        for code, (_, _, classes, conf) in CORES.items():
            probs = np.array(set_probs(classes, conf))
            d = kcs_decision(probs, 3)
            s.add(
                Prediction(
                    core_id=core_ids[code],
                    model_version_id=mv.id,
                    n_sets=len(classes),
                    top_k=3,
                    seed=0,
                    confidence="margin",
                    final_score=d.final,
                    kcs_probs=d.kcs_mean_probs.tolist(),
                    set_probs=probs.tolist(),
                    kcs_indices=[int(i) for i in d.kcs_indices],
                )
            )
        mv_id = mv.id
    with session_scope() as s:
        apply_consensus(s, actor="lm")
    return World(pathologists, mv_id, core_ids)
