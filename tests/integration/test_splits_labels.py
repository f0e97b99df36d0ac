"""Splits, label export and statistics against the database (both dialects)."""

from __future__ import annotations

import math

import pytest
from sqlalchemy import select

from her2ops.platform.db import session_scope
from her2ops.platform.errors import AccessDenied, Conflict
from her2ops.platform.labels import export_rows, label_snapshot
from her2ops.platform.schema import AuditEvent, Core, Patient, Split, SplitAssignment
from her2ops.platform.splits import create_split, extend_split, freeze_split, show_split
from tests.factories import insert_labelled_cores, seed_users

RATIOS = {"train": 0.7, "val": 0.1, "test": 0.2}


def _partitions_by_patient(split: str) -> dict[str, set[str]]:
    """Partitions each patient's cores are in, read back through the cores table."""
    with session_scope() as s:
        rows = s.execute(
            select(Patient.code, SplitAssignment.partition)
            .join(Core, Core.patient_id == Patient.id)
            .join(SplitAssignment, SplitAssignment.patient_id == Core.patient_id)
            .join(Split, Split.id == SplitAssignment.split_id)
            .where(Split.name == split)
        ).all()
    out: dict[str, set[str]] = {}
    for code, part in rows:
        out.setdefault(code, set()).add(part)
    return out


def test_split_create_is_deterministic_and_patient_level(db_url: str) -> None:
    seed_users()
    insert_labelled_cores(80)
    with session_scope() as s:
        create_split(s, actor="lm", name="a", seed=7, ratios=RATIOS)
        create_split(s, actor="lm", name="b", seed=7, ratios=RATIOS)
        create_split(s, actor="lm", name="c", seed=8, ratios=RATIOS)
    with session_scope() as s:

        def parts(name: str) -> dict[str, str]:
            return {
                r.core: r.partition for r in map(_Row.of, export_rows(s, actor="lm", split=name))
            }

        a, b, c = parts("a"), parts("b"), parts("c")
        assert a == b and a != c
        info = show_split(s, "a")
    assert info["patients"] == 80
    assert info["by_patient"]["max_deviation_pp"] < 10
    sizes = {k: v["n"] for k, v in info["by_patient"]["partitions"].items()}
    assert sizes == {"train": 56, "val": 8, "test": 16}
    # every core of a patient is in the patient's one partition
    for patient, partitions in _partitions_by_patient("a").items():
        assert len(partitions) == 1, patient


class _Row:
    def __init__(self, core: str, partition: str):
        self.core, self.partition = core, partition

    @classmethod
    def of(cls, row: dict[str, object]) -> _Row:
        return cls(str(row["core"]), str(row["partition"]))


def test_frozen_split_refuses_recreate_but_extends(db_url: str) -> None:
    seed_users()
    insert_labelled_cores(30)
    with session_scope() as s:
        create_split(s, actor="lm", name="main", seed=1, ratios=RATIOS)
    with pytest.raises(Conflict, match="--replace"), session_scope() as s:
        create_split(s, actor="lm", name="main", seed=2, ratios=RATIOS)
    with session_scope() as s:
        create_split(s, actor="lm", name="main", seed=2, ratios=RATIOS, replace=True)
        freeze_split(s, name="main", reason="model her2-pss v1")
    before = {r["core"]: r["partition"] for r in _export("main")}
    with pytest.raises(Conflict, match="frozen"), session_scope() as s:
        create_split(s, actor="lm", name="main", seed=3, ratios=RATIOS, replace=True)
    with pytest.raises(AccessDenied), session_scope() as s:
        extend_split(s, actor="p1", name="main")
    # new patients arrive; extend assigns only them
    with session_scope() as s:
        for p in range(5):
            patient = Patient(code=f"NEW{p}")
            s.add(patient)
            s.flush()
            s.add(
                Core(
                    code=f"NEWC{p}",
                    patient_id=patient.id,
                    source_path="-",
                    sha256=f"{'f' * 60}{p:04d}",
                    width=1,
                    height=1,
                )
            )
    with session_scope() as s:
        added = extend_split(s, actor="lm", name="main")
    assert sorted(added) == [f"NEW{p}" for p in range(5)]
    after = {r["core"]: r["partition"] for r in _export("main")}
    assert all(after[c] == p for c, p in before.items())
    assert all(after[f"NEWC{p}"] in RATIOS for p in range(5))
    with session_scope() as s:
        assert extend_split(s, actor="lm", name="main") == {}


def _export(split: str) -> list[dict[str, object]]:
    with session_scope() as s:
        return export_rows(s, actor="lm", split=split)


def test_label_snapshot_hash_tracks_labels(db_url: str) -> None:
    seed_users()
    insert_labelled_cores(20)
    with session_scope() as s:
        create_split(s, actor="lm", name="x", seed=1, ratios=RATIOS)
        items, h1 = label_snapshot(s, "x")
        _, h2 = label_snapshot(s, "x")
    assert len(items) == 40 and h1 == h2
    assert {i.partition for i in items} == {"train", "val", "test"}


def test_balanced_test_split_and_class_counts(db_url: str) -> None:
    seed_users()
    insert_labelled_cores(120, seed=3)
    with session_scope() as s:
        create_split(s, actor="lm", name="bal", seed=5, ratios=RATIOS, balanced_test=True)
        create_split(s, actor="lm", name="plain", seed=5, ratios=RATIOS)
    with session_scope() as s:
        bal, plain = show_split(s, "bal"), show_split(s, "plain")
        rows = export_rows(s, actor="lm", split="bal")
    # class counts per partition, checked against the exported labels
    for part, counts in bal["class_counts"].items():
        exported = [r["score"] for r in rows if r["partition"] == part]
        assert counts == {c: exported.count(c) for c in ("0", "1+", "2+", "3+")}
    test = bal["class_counts"]["test"]
    assert max(test.values()) - min(test.values()) <= 2  # balanced
    assert sum(bal["class_counts"]["test"].values()) >= 0.8 * 0.2 * 240
    plain_test = plain["class_counts"]["test"]
    assert max(plain_test.values()) - min(plain_test.values()) > 2  # the proportional rule is not
    for partitions in _partitions_by_patient("bal").values():
        assert len(partitions) == 1  # still by patient


def _test_targets(rows: list[dict[str, object]], test_ratio: float) -> dict[str, int]:
    """The balanced-test rule's per-class targets, from the exported labels of every patient:
    test_ratio of the labelled cores, a quarter per class, at most half of a class."""
    classes = ("0", "1+", "2+", "3+")
    total = {c: sum(1 for r in rows if r["score"] == c) for c in classes}
    quota = test_ratio * sum(total.values()) / len(classes)
    return {c: math.floor(min(quota, total[c] / 2)) for c in classes}


def test_extend_keeps_a_balanced_test_partition_balanced(db_url: str) -> None:
    """Through the use case: a --balanced-test split, frozen, extended by half as many new
    patients again, keeps its test partition class-balanced by core (each class at the creation
    rule's target for the grown cohort, or at most 2 cores short); nobody moves; the summary
    says so."""
    from her2ops.pipelines import splits as splits_uc

    seed_users()
    insert_labelled_cores(120, seed=3)
    splits_uc.create_split(actor="lm", name="bal", seed=5, ratios="0.7,0.1,0.2", balanced_test=True)
    splits_uc.create_split(actor="lm", name="plain", seed=5, ratios="0.7,0.1,0.2")
    with session_scope() as s:
        freeze_split(s, name="bal", reason="model her2-pss v1")
    before = {r["core"]: r["partition"] for r in _export("bal")}
    insert_labelled_cores(60, seed=4, first=120)

    info = splits_uc.extend_split(actor="lm", name="bal")

    rows = _export("bal")
    after = {str(r["core"]): r["partition"] for r in rows}
    assert all(after[c] == p for c, p in before.items())  # nobody moved
    assert len(after) == len(before) + 120  # every new core is in the split
    test = {
        c: sum(1 for r in rows if r["partition"] == "test" and r["score"] == c)
        for c in ("0", "1+", "2+", "3+")
    }
    for cls, target in _test_targets(rows, 0.2).items():
        assert target - 2 <= test[cls] <= target, (cls, test, target)
    # the summary is show_split after extending: the test partition's cores per class
    assert info["class_counts"]["test"] == test
    assert info["balanced_test"] is True and info["frozen"] is True
    assert info["added"] == 60 == sum(info["added_by_partition"].values())
    with session_scope() as s:
        assert show_split(s, "bal") == {
            k: v for k, v in info.items() if k not in ("added", "added_by_partition")
        }
        event = s.scalars(
            select(AuditEvent).where(
                AuditEvent.action == "splits.extend", AuditEvent.entity_key == "bal"
            )
        ).one()
        assert event.details == {"added": 60, "balanced_test": True}
    # a split created without --balanced-test is still extended proportionally; a replaced
    # split follows its latest creation, either way
    plain = splits_uc.extend_split(actor="lm", name="plain")
    assert plain["balanced_test"] is False and plain["added"] == 60
    for balanced in (True, False):
        splits_uc.create_split(
            actor="lm", name="plain", seed=5, balanced_test=balanced, replace=True, yes=True
        )
        assert splits_uc.show_split(actor="lm", name="plain")["balanced_test"] is balanced
    assert splits_uc.extend_split(actor="lm", name="bal")["added"] == 0
