"""The ensemble members' patient resample (pipelines.resample) and the dataset's repeated copies."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass

import numpy as np
import pytest

from her2ops.errors import InvalidRequest
from her2ops.pipelines.resample import (
    check_resample,
    draw_patients,
    kfold_folds,
    resample_training,
)


@dataclass(frozen=True)
class Item:
    core: str
    patient: str
    label: int


def cohort(n_patients: int = 30, seed: int = 0) -> list[Item]:
    """Patients with 1-3 cores each, labels 0-3 (every class present)."""
    rng = np.random.default_rng(seed)
    items = []
    for p in range(n_patients):
        for c in range(int(rng.integers(1, 4))):
            label = (p + c) % 4 if p < 8 else int(rng.integers(0, 4))
            items.append(Item(f"C{p:03d}-{c}", f"P{p:03d}", label))
    return items


ITEMS = cohort()
PATIENTS = sorted({i.patient for i in ITEMS})


def cores_of(patient: str) -> list[str]:
    return [i.core for i in ITEMS if i.patient == patient]


@pytest.mark.parametrize("mode", ["bootstrap", "kfold"])
def test_patient_level_and_deterministic(mode: str) -> None:
    plan = check_resample(mode, 2, 5, seed=7)
    sample = resample_training(ITEMS, plan)
    times = Counter(sample.patients)
    copies = Counter(it.core for it, _ in sample.cores)
    for patient in PATIENTS:  # every core of a patient, as often as the patient was drawn
        assert all(copies[c] == times[patient] for c in cores_of(patient)), patient
    for it, copy in sample.cores:
        assert 0 <= copy < times[it.patient]
    pairs = Counter((it.core, c) for it, c in sample.cores)  # each (core, copy) once
    assert set(pairs.values()) == {1} and len(pairs) == len(sample.cores)
    shuffled = list(ITEMS)
    random.Random(1).shuffle(shuffled)  # the draw depends on the patients, not their order
    again = resample_training(shuffled, check_resample(mode, 2, 5, seed=7))
    assert again.patients == sample.patients and again.patients_hash == sample.patients_hash
    other_seed = resample_training(ITEMS, check_resample(mode, 2, 5, seed=8))
    assert other_seed.patients != sample.patients


@pytest.mark.parametrize("mode", ["bootstrap", "kfold"])
def test_members_differ(mode: str) -> None:
    hashes = {
        resample_training(ITEMS, check_resample(mode, m, 5, seed=0)).patients_hash for m in range(5)
    }
    assert len(hashes) == 5


def test_bootstrap_draws_as_many_patients_as_there_are_per_stratum() -> None:
    def strata(patients: list[str]) -> Counter[int]:
        top = {p: max(i.label for i in ITEMS if i.patient == p) for p in set(patients)}
        return Counter(top[p] for p in patients)

    for member in range(10):
        drawn = draw_patients(ITEMS, check_resample("bootstrap", member, 10, seed=3))
        assert len(drawn) == len(PATIENTS) and set(drawn) <= set(PATIENTS)
        assert strata(drawn) == strata(PATIENTS)  # the class mix of the partition is kept
        assert len(set(drawn)) < len(PATIENTS)  # with replacement: some patients repeat


def test_kfold_folds_partition_the_patients() -> None:
    for k in (2, 3, 7):
        folds = kfold_folds(ITEMS, k, seed=5)
        assert sorted(p for f in folds for p in f) == PATIENTS  # disjoint, and all of them
        sizes = [len(f) for f in folds]
        assert max(sizes) - min(sizes) <= 1
        left_out = Counter()
        for m in range(k):
            kept = draw_patients(ITEMS, check_resample("kfold", m, k, seed=5))
            assert sorted(set(PATIENTS) - set(kept)) == folds[m] and len(set(kept)) == len(kept)
            left_out.update(folds[m])
        assert set(left_out.values()) == {1}  # each patient left out by exactly one member


def test_none_is_the_partition_itself() -> None:
    sample = resample_training(ITEMS, check_resample("none", 0, 1))
    assert sample.patients == PATIENTS and [it for it, _ in sample.cores] == ITEMS
    assert {c for _, c in sample.cores} == {0}
    rec = sample.record()
    assert (rec["mode"], rec["patients"], rec["distinct_patients"], rec["cores"]) == (
        "none",
        len(PATIENTS),
        len(PATIENTS),
        len(ITEMS),
    )


def test_bad_requests_are_refused_with_a_reason() -> None:
    with pytest.raises(InvalidRequest, match="unknown resample 'jackknife'"):
        check_resample("jackknife", 0, 2)
    with pytest.raises(InvalidRequest, match="member=3 is out of range for 3 member"):
        check_resample("bootstrap", 3, 3)
    with pytest.raises(InvalidRequest, match="member=-1 is out of range"):
        check_resample("kfold", -1, 3)
    with pytest.raises(InvalidRequest, match="kfold resample needs at least 2 members"):
        check_resample("kfold", 0, 1)
    with pytest.raises(InvalidRequest, match=r"needs at least 5 training patients; .* has 4"):
        resample_training(cohort(4), check_resample("kfold", 0, 5))
    # the only 3+ patient is left out by the member whose fold holds it
    rare = [Item("A", "PA", 0), Item("B", "PB", 1), Item("C", "PC", 2), Item("D", "PD", 3)]
    rare += [Item(f"X{i}", f"PX{i}", i % 3) for i in range(6)]
    fold = next(m for m, f in enumerate(kfold_folds(rare, 2, seed=0)) if "PD" in f)
    with pytest.raises(InvalidRequest, match=r"kfold member \d .*leaves class 3\+ with no "
                       r"training core in each of 100 attempt"):  # fmt: skip
        resample_training(rare, check_resample("kfold", fold, 2, seed=0))
    resample_training(rare, check_resample("kfold", 1 - fold, 2, seed=0))  # the other is fine


def test_repeated_copies_get_distinct_set_streams() -> None:
    from her2ops.models.data import LabelledCore, PSSDataset

    seeds: list[tuple[str, int, int]] = []

    def sample_fn(item: LabelledCore, seed: int, index: int) -> np.ndarray:
        seeds.append((item.core, item.copy, seed))
        return np.zeros((3, 8, 8), dtype=np.uint8)

    cores = [
        LabelledCore("C1", "h1", 2),
        LabelledCore("C1", "h1", 2, 1),
        LabelledCore("C2", "h2", 0),
    ]
    ds = PSSDataset(cores, sample_fn, train=True, seed=4)
    for epoch in range(3):
        ds.set_epoch(epoch)
        for i in range(len(ds)):
            ds[i]
    by_epoch = [seeds[e * 3 : e * 3 + 3] for e in range(3)]
    for rows in by_epoch:
        assert rows[0][2] != rows[1][2]  # copy 0 and copy 1 of C1 draw different sets
    assert len({r[2] for rows in by_epoch for r in rows[:2]}) == 6  # and new ones every epoch
    # copy 0 keeps the seed a run without repeats had (resampling "none" changes nothing)
    plain = PSSDataset([LabelledCore("C1", "h1", 2)], sample_fn, train=True, seed=4)
    plain.set_epoch(2)
    plain[0]
    assert seeds[-1][2] == by_epoch[2][0][2]


def test_a_draw_that_loses_a_class_is_drawn_again() -> None:
    """Class 1+ lives only in P3, beside a 3+ core: stratum 3+ is {P3, P4}, and an
    unconditioned draw of two from it misses P3 one time in four."""
    tiny = [Item("C0", "P0", 0), Item("C2", "P2", 2), Item("C5", "P5", 0)]
    tiny += [Item("C3a", "P3", 1), Item("C3b", "P3", 3), Item("C4", "P4", 3)]
    samples = [resample_training(tiny, check_resample("bootstrap", m, 20)) for m in range(20)]
    for sample in samples:
        assert {it.label for it, _ in sample.cores} == {0, 1, 2, 3}
        assert len(sample.patients) == 5
    assert max(s.attempts for s in samples) > 1  # some first draws lost a class
    again = resample_training(tiny, check_resample("bootstrap", 7, 20))
    assert (again.patients, again.attempts) == (samples[7].patients, samples[7].attempts)
    assert len({s.patients_hash for s in samples}) == 3 * 2  # every possible kept draw
